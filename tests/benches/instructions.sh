#!/usr/bin/env bash
# Instructions per operation of each row of benches/profile.rs, under callgrind: every row runs
# N and 2N operations, and the difference divided by N is one operation without the process's
# setup and teardown. A count, not a time: the same on a busy machine as on an idle one.
# Allocations per operation the same way, from memcheck's heap summary (every malloc, calloc,
# realloc and new; the bench itself is unchanged, no counting allocator in the profiled binary).
#
# Usage: [BIN=path] tests/benches/instructions.sh [N] [row...]
#        (rows: direct floor bus es query hit publish; N: 10000)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-10000}
shift || true
ROWS=${*:-direct floor bus es query hit publish}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
# BIN=path runs a binary built before (a baseline's, say) instead of building this checkout's.
BIN=${BIN:-$(cargo bench -p cqrs-tests --bench profile --no-run --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*profile[^"]*\)".*/\1/p' | tail -1)}
[ -x "$BIN" ] || { echo "could not build benches/profile.rs" >&2; exit 1; }
count() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$BIN" "$1" "$2" 2>&1 \
        | sed -n 's/.*Collected : *\([0-9]*\).*/\1/p'
}
allocs() {
    valgrind --tool=memcheck --leak-check=no "$BIN" "$1" "$2" 2>&1 \
        | sed -n 's/.*total heap usage: *\([0-9,]*\) allocs.*/\1/p' | tr -d ,
}
printf '%-8s %12s %12s\n' row 'instr/op' 'allocs/op'
for row in $ROWS; do
    a=$(count "$row" "$N")
    b=$(count "$row" $((2 * N)))
    x=$(allocs "$row" "$N")
    y=$(allocs "$row" $((2 * N)))
    printf '%-8s %12d %12s\n' "$row" $(((b - a) / N)) "$(awk "BEGIN { printf \"%.2f\", ($y - $x) / $N }")"
done
