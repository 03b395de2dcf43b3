#!/usr/bin/env bash
# What one handler adds to an optimized build, in LLVM IR lines: `cargo llvm-lines --release` of
# the crate `measure.sh` generates (command handlers with #[retry] and #[timeout], found by
# discovery), once with A and once with B handlers; the difference divided by B - A is one
# handler's lines, without what every crate pays once.
#
# Usage: tests/compile-time/llvm-lines.sh [A] [B]      (defaults 20 and 40; needs cargo-llvm-lines:
#        cargo install cargo-llvm-lines)
set -euo pipefail
A=${1:-20}
B=${2:-40}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
command -v cargo-llvm-lines >/dev/null || { echo "needs cargo-llvm-lines (cargo install cargo-llvm-lines)" >&2; exit 1; }
BASE=${WORK:-$(mktemp -d)}
total() {
    local n=$1 work="$BASE/n$1"
    WORK="$work" GENERATE_ONLY=1 "$ROOT/tests/compile-time/measure.sh" "$n" >/dev/null
    (cd "$work/macros" && CARGO_TARGET_DIR="$BASE/target" cargo llvm-lines --release 2>/dev/null) \
        | sed -n 's/^ *\([0-9]*\) .*(TOTAL).*/\1/p'
}
a=$(total "$A")
b=$(total "$B")
printf 'handlers %d: %d lines; %d: %d lines; per handler: %d\n' "$A" "$a" "$B" "$b" $(((b - a) / (B - A)))
