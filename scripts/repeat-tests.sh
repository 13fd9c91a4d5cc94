#!/usr/bin/env bash
# Runs the hardest guarantees N times in a row (default 10) and stops at the first failure:
# the global log under concurrent writers (in memory, SQLite, and 16 writers on PostgreSQL when it
# is reachable) and the SIGKILL crash test.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-10}
cargo test -q -p herald-sql -p herald-conformance --no-run
for i in $(seq "$n"); do
  echo "== run $i/$n"
  cargo test -q -p herald-conformance --test memory a_live_reader_sees_the_whole_global_log 2>&1 | grep -E "test result"
  cargo test -q -p herald-sql --test conformance a_live_reader_sees_the_whole_global_log 2>&1 | grep -E "test result"
  cargo test -q -p herald-sql --test postgres_conformance sixteen_concurrent_writers 2>&1 | grep -E "SKIPPED|test result"
  cargo test -q -p herald-sql --test crash -- --nocapture 2>&1 | grep -E "sent [0-9]+|test result"
done
echo "all $n runs passed"
