#!/usr/bin/env bash
# Makes sure the local servers the test suite talks to are installed and running:
# PostgreSQL (5432), Redis (6379), RabbitMQ (5672), NATS with JetStream (4222), Mosquitto (1883),
# tansu, a Kafka-protocol broker (9092, in-memory storage).
# Installs a missing one with apt-get (as root; tansu with `cargo install`, which takes ~9 minutes),
# starts one that is down, waits until it answers.
# Exits non-zero, naming the server, if one cannot be brought up: a missing server must never turn
# into a green test run.
set -uo pipefail

log() { printf '[services] %s\n' "$*"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # name seconds check-command...
  local name=$1 secs=$2; shift 2
  for ((i = 0; i < secs * 2; i++)); do
    if "$@" >/dev/null 2>&1; then log "$name is up"; return 0; fi
    sleep 0.5
  done
  log "ERROR: $name did not come up within ${secs}s"; return 1
}

apt_updated=0
ensure_package() { # command package
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" != 0 ]; then log "ERROR: $1 is missing and we are not root to install $2"; return 1; fi
  if [ $apt_updated = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get update -qq; apt_updated=1; fi
  log "installing $2"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

failed=()

# Tools the MallBots acceptance script uses.
ensure_package curl curl || failed+=(curl)
ensure_package jq jq || failed+=(jq)
# The gateway in front of MallBots' services (the tests run their own nginx on port 0-picked ports).
ensure_package nginx nginx || failed+=(nginx)
# The admin web app's browser tests: headless Chromium driven over WebDriver.
ensure_package chromium chromium || failed+=(chromium)
ensure_package chromedriver chromium-driver || failed+=(chromium-driver)

# PostgreSQL
if ensure_package pg_ctlcluster postgresql && ensure_package pg_isready postgresql-client; then
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    log "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  wait_for PostgreSQL 60 pg_isready -q -h 127.0.0.1 -p 5432 || failed+=(PostgreSQL)
else failed+=(PostgreSQL); fi

# Redis
if ensure_package redis-server redis-server; then
  if ! redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
    log "starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null || true
  fi
  wait_for Redis 30 bash -c 'redis-cli -h 127.0.0.1 -p 6379 ping | grep -q PONG' || failed+=(Redis)
else failed+=(Redis); fi

# RabbitMQ. An open port is not enough: a wedged node accepts TCP but never answers the AMQP
# protocol header, and every test would then time out. Restart it when it does not answer.
amqp_answers() { # the server's first frame (type 1, connection.start) comes back within 10 s
  timeout 10 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672; printf "AMQP\x00\x00\x09\x01" >&3; head -c 1 <&3 | od -An -tx1' 2>/dev/null | grep -q 01
}
if ensure_package rabbitmq-server rabbitmq-server; then
  if port_open 5672 && ! amqp_answers; then
    log "RabbitMQ accepts connections but does not answer AMQP: restarting it"
    pkill -9 -u rabbitmq beam.smp 2>/dev/null || true
    sleep 2
  fi
  if ! port_open 5672; then
    log "starting RabbitMQ"
    rabbitmq-server -detached >/dev/null 2>&1 || true
  fi
  wait_for RabbitMQ 180 amqp_answers || failed+=(RabbitMQ)
else failed+=(RabbitMQ); fi

# NATS with JetStream
if ensure_package nats-server nats-server; then
  if ! port_open 4222; then
    log "starting NATS"
    mkdir -p /var/lib/nats-server
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
      -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server || true
  fi
  wait_for NATS 30 port_open 4222 || failed+=(NATS)
else failed+=(NATS); fi

# Mosquitto (MQTT)
if ensure_package mosquitto mosquitto; then
  if ! port_open 1883; then
    log "starting Mosquitto"
    mosquitto -d -c /etc/mosquitto/mosquitto.conf >/dev/null 2>&1 || true
  fi
  wait_for Mosquitto 30 port_open 1883 || failed+=(Mosquitto)
else failed+=(Mosquitto); fi

# tansu: a Kafka-protocol broker (Apache-2.0, written in Rust) for herald-kafka's tests, with
# in-memory storage (the `dynostore` feature's `memory://`). Not packaged by Debian: installed from
# crates.io when missing. herald-kafka's librdkafka is built from source: it needs a C compiler
# and make.
ensure_package cc gcc || failed+=(gcc)
ensure_package make make || failed+=(make)
TANSU=/root/.cargo/bin/tansu  # where the `--root` below puts it
if [ ! -x "$TANSU" ]; then
  log "installing tansu (cargo install, ~9 minutes)"
  cargo install tansu --locked --features dynostore --root /root/.cargo >/tmp/tansu-install.log 2>&1 \
    || log "ERROR: cargo install tansu failed (see /tmp/tansu-install.log)"
fi
if [ -x "$TANSU" ]; then
  if ! port_open 9092; then
    log "starting tansu"
    nohup "$TANSU" broker --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
      --storage-engine memory://tansu/ >/tmp/tansu.log 2>&1 &
  fi
  wait_for tansu 30 port_open 9092 || failed+=(tansu)
else failed+=(tansu); fi

if [ ${#failed[@]} -gt 0 ]; then
  log "ERROR: not available: ${failed[*]}"
  exit 1
fi
log "all servers are up"
