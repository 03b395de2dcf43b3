#!/usr/bin/env bash
# The crash campaign: N times, on SQLite and on PostgreSQL, start the shop, load it with orders,
# kill -9 it at a random moment, and start it again. At the end, check what a customer was
# promised: every order answered 201 is readable, stock plus units sold equals the initial
# stock, every placed order is in the projection, and the projection holds nothing the event
# store does not (nothing delivered for rolled-back work).
#
# Usage: tests/crash/run.sh [N] [sqlite|postgres|both]      (N: 20; PostgreSQL from
# CQRS_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/test, in a schema of its own)
#
# Not part of .ci/run: it takes minutes and kills processes on purpose.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-20}
WHICH=${2:-both}
cargo build -q -p cqrs-examples --bin shop
exec python3 tests/crash/campaign.py "$N" "$WHICH" target/debug/shop
