#!/usr/bin/env bash
# What the macros cost at compile time.
#
# Generates two crates with N command handlers (default 500), each with two decorators
# (#[retry] and #[timeout]) and its own derived command, and times building each:
#   macros/  handlers declared with the attributes, found by Bus::builder()
#   manual/  the same handlers registered by hand: .command_handler(h).decorate::<H>([..])
# Messages are derived in both, so the difference is what the handler and decorator
# attributes cost. Dependencies are built first; each crate is then rebuilt from a touch,
# three times, non-incrementally, and the median is reported.
#
# Usage: tests/compile-time/measure.sh [N]        (WORK=dir to keep the generated crates;
#                                                 GENERATE_ONLY=1 to stop once they are written)
set -euo pipefail

N=${1:-500}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${WORK:-$(mktemp -d)}
export CARGO_TARGET_DIR="$WORK/target"
export CARGO_INCREMENTAL=0

generate() {
    local kind=$1 dir="$WORK/$1"
    mkdir -p "$dir/src"
    cat > "$dir/Cargo.toml" <<TOML
[package]
name = "compile-time-$kind"
version = "0.0.0"
edition = "2024"
publish = false

[dependencies]
cqrs-core = { path = "$ROOT/cqrs-core" }
serde = { version = "1", features = ["derive"] }

[workspace]
TOML
    {
        echo "#![allow(dead_code)]"
        echo "use cqrs_core::prelude::*;"
        [ "$kind" = manual ] && echo "use cqrs_core::{Decorator, RetryLayer};"
        [ "$kind" = manual ] && echo "use std::time::Duration;"
        for i in $(seq 0 $((N - 1))); do
            cat <<RUST
#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = u64)]
pub struct Cmd$i { pub n: u64 }
RUST
            if [ "$kind" = macros ]; then
                cat <<RUST
#[command_handler(Cmd$i)]
#[retry(max_attempts = 3, delay = "10ms")]
#[timeout("2s")]
RUST
            fi
            cat <<RUST
pub struct Handler$i;
impl CommandHandler<Cmd$i> for Handler$i {
    async fn handle(&self, cmd: Cmd$i, _cx: &mut CommandContext) -> Result<u64, Error> {
        Ok(cmd.n + $i)
    }
}
RUST
        done
        if [ "$kind" = macros ]; then
            echo "pub fn bus() -> Bus { Bus::builder().build().unwrap() }"
        else
            echo "fn decorators() -> [Decorator; 2] {"
            echo "    [Decorator::Retry(RetryLayer::new(3).delay(Duration::from_millis(10))), Decorator::Timeout(Duration::from_secs(2))]"
            echo "}"
            echo "pub fn bus() -> Bus {"
            echo "    let b = Bus::builder().discover(false);"
            for i in $(seq 0 $((N - 1))); do
                echo "    let b = b.command_handler(Handler$i).decorate::<Handler$i>(decorators());"
            done
            echo "    b.build().unwrap()"
            echo "}"
        fi
    } > "$dir/src/lib.rs"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

time_build() {
    local dir="$WORK/$1" cmd=$2
    (cd "$dir" && cargo $cmd --quiet >/dev/null 2>&1) # dependencies, once
    for _ in 1 2 3; do
        touch "$dir/src/lib.rs"
        local start end
        start=$(date +%s.%N)
        (cd "$dir" && cargo $cmd --quiet)
        end=$(date +%s.%N)
        awk "BEGIN { print $end - $start }"
    done | median
}

generate macros
generate manual
echo "crates in $WORK ($N handlers, 2 decorators each)"
[ -n "${GENERATE_ONLY:-}" ] && exit 0
printf '%-8s %12s %12s %8s\n' step macros manual ratio
for cmd in check build; do
    m=$(time_build macros "$cmd")
    h=$(time_build manual "$cmd")
    printf '%-8s %11.2fs %11.2fs %7.2fx\n' "$cmd" "$m" "$h" "$(awk "BEGIN { print $m / $h }")"
done
