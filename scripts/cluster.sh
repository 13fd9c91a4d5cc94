#!/usr/bin/env bash
# MallBots as services on this machine, in the background: one `mallbots serve --modules M`
# process per module (each in its own PostgreSQL schema `mallbots_<module>`), all on NATS
# JetStream, behind nginx on http://127.0.0.1:8080.
#   bash scripts/cluster.sh up [--replicas notifications=2 …]   builds, starts, waits until ready
#   bash scripts/cluster.sh down                                 stops it cleanly
#   bash scripts/cluster.sh status                               shows its processes
# Uses the local PostgreSQL (127.0.0.1:5432) and NATS (127.0.0.1:4222) and Debian's nginx
# (scripts/ensure-services.sh installs and starts them). Logs: .cluster/*.log.
# MALLBOTS_ADMIN_TOKEN sets the admin token (default: one generated into .cluster/admin-token).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=.cluster
PID=$DIR/cluster.pid

running() { [[ -f $PID ]] && kill -0 "$(cat "$PID")" 2>/dev/null; }

case "${1:-}" in
  up)
    shift
    if running; then echo "already running (pid $(cat "$PID")); scripts/cluster.sh down stops it"; exit 0; fi
    mkdir -p "$DIR"
    if [[ -z "${MALLBOTS_ADMIN_TOKEN:-}" ]]; then
      [[ -s $DIR/admin-token ]] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/admin-token"
      MALLBOTS_ADMIN_TOKEN=$(cat "$DIR/admin-token")
    fi
    export MALLBOTS_ADMIN_TOKEN
    cargo build -q --release -p mallbots
    nohup target/release/mallbots cluster --dir "$DIR" "$@" >"$DIR/cluster.out" 2>&1 &
    echo $! >"$PID"
    for _ in $(seq 600); do
      if grep -q "MallBots cluster on" "$DIR/cluster.out" 2>/dev/null; then
        cat "$DIR/cluster.out"
        echo "Admin token: $MALLBOTS_ADMIN_TOKEN   (stop with: bash scripts/cluster.sh down)"
        exit 0
      fi
      if ! running; then echo "FAILED to start:" >&2; cat "$DIR/cluster.out" >&2; exit 1; fi
      sleep 0.1
    done
    echo "FAILED: not ready within a minute (see $DIR/cluster.out)" >&2; exit 1
    ;;
  down)
    if ! running; then echo "not running"; rm -f "$PID"; exit 0; fi
    kill -TERM "$(cat "$PID")"
    for _ in $(seq 600); do running || { rm -f "$PID"; tail -n1 "$DIR/cluster.out"; exit 0; }; sleep 0.1; done
    echo "still running after a minute (pid $(cat "$PID"))" >&2; exit 1
    ;;
  status)
    if running; then sed -n '2,/MallBots cluster on/p' "$DIR/cluster.out"; else echo "not running"; fi
    ;;
  *)
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2
    ;;
esac
