#!/usr/bin/env bash
# MallBots acceptance over the REST API only, as a new user would drive it: starts its own
# `mallbots serve` on a free port and a temporary database, then checks
#   1. the happy path: an order goes pending → approved → ready → completed;
#   2. a disabled customer's order is rejected;
#   3. a wrong payment amount rejects the order and cancels its shopping list;
#   4. canceling an approved order cancels its shopping list;
#   5. bad input is a 400, a missing admin token a 401, an unknown id a 404.
# Needs curl and jq (scripts/ensure-services.sh installs them).
# Usage: bash mallbots/acceptance.sh   (MALLBOTS_BIN=path to use an already built binary;
#        ACCEPTANCE_DATABASE / ACCEPTANCE_BROKER for PostgreSQL and a real broker, see below)
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${MALLBOTS_BIN:-}
if [[ -z "$BIN" ]]; then
  cargo build -q -p mallbots
  BIN="${CARGO_TARGET_DIR:-target}/debug/mallbots"
fi
DIR=$(mktemp -d)
TOKEN=acceptance-token
ADMIN="Authorization: Bearer $TOKEN"
J="Content-Type: application/json"

# Port 0: the server picks a free port and prints it in its "MallBots on URL" line.
# ACCEPTANCE_DATABASE / ACCEPTANCE_BROKER run it on PostgreSQL and a real broker, e.g.
#   ACCEPTANCE_DATABASE=postgres://postgres@127.0.0.1/test ACCEPTANCE_BROKER=nats://127.0.0.1:4222
# (in a namespace of its own, so earlier runs' data never counts).
"$BIN" serve --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 --database "${ACCEPTANCE_DATABASE:-sqlite://$DIR/mallbots.db}" \
  ${ACCEPTANCE_BROKER:+--broker "$ACCEPTANCE_BROKER"} --namespace "acceptance_$(date +%s)_$$" \
  --admin-token "$TOKEN" >"$DIR/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$DIR"' EXIT
for _ in $(seq 100); do
  # (the log may not exist yet: the background shell opens it; `|| true` keeps set -e quiet)
  API=$(sed -nE 's#^MallBots on (http://[0-9.]+:[0-9]+).*#\1#p' "$DIR/serve.log" 2>/dev/null | head -n1 || true)
  [[ -n "$API" ]] && break
  sleep 0.1
done
[[ -n "$API" ]] || { echo "FAILED: mallbots serve did not start" >&2; cat "$DIR/serve.log" >&2; exit 1; }

fail() { echo "FAILED: $*" >&2; echo "--- server log (tail)" >&2; tail -20 "$DIR/serve.log" >&2; exit 1; }
# until <what> <command…>: retries for up to 20 s (the app is asynchronous between modules).
until_ok() {
  local what=$1; shift
  for _ in $(seq 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  fail "$what"
}
status_is() { [[ "$(curl -sf "$API/api/ordering/$1" | jq -r .status)" == "$2" ]]; }
list_of() { curl -sf "$API/api/depot/shopping" -H "$ADMIN" | jq -r --arg o "$1" '.[] | select(.orderId == $o) | .id'; }
# order_list_is <order> <status>: the order's shopping list has that status.
order_list_is() {
  local list
  list=$(list_of "$1")
  [[ -n "$list" && "$(curl -sf "$API/api/depot/shopping/$list" -H "$ADMIN" | jq -r .status)" == "$2" ]]
}
code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }

until_ok "the server answers /readyz" curl -sf "$API/readyz"

STORE=$(curl -sf -X POST "$API/api/stores" -H "$ADMIN" -H "$J" -d '{"name":"Waldorf Books","location":"Level 1"}' | jq -r .id)
PRODUCT=$(curl -sf -X POST "$API/api/stores/$STORE/products" -H "$ADMIN" -H "$J" \
  -d '{"name":"Muppet Treasury","sku":"B-1","price":9.99}' | jq -r .id)

# customer → payment → basket → item → checkout; prints the order id (= the basket id).
place_order() { # <customer name> <amount> [disable]
  local customer payment basket
  customer=$(curl -sf -X POST "$API/api/customers" -H "$J" -d "{\"name\":\"$1\",\"smsNumber\":\"555 0100\"}" | jq -r .id)
  if [[ "${3:-}" == disable ]]; then
    curl -sf -X PUT "$API/api/customers/$customer/disable" -H "$ADMIN" >/dev/null || fail "disable the customer"
  fi
  payment=$(curl -sf -X POST "$API/api/payments" -H "$J" -d "{\"customerId\":\"$customer\",\"amount\":$2}" | jq -r .id)
  basket=$(curl -sf -X POST "$API/api/baskets" -H "$J" -d "{\"customerId\":\"$customer\"}" | jq -r .id)
  until_ok "the basket module knows the product" curl -sf -X PUT "$API/api/baskets/$basket/addItem" -H "$J" \
    -d "{\"productId\":\"$PRODUCT\",\"quantity\":2}"
  curl -sf -X PUT "$API/api/baskets/$basket/checkout" -H "$J" -d "{\"paymentId\":\"$payment\"}" >/dev/null \
    || fail "checkout"
  echo "$basket"
}

echo "1. happy path"
ORDER=$(place_order Ada 19.98)
until_ok "order $ORDER approved" status_is "$ORDER" approved
until_ok "its shopping list is available" order_list_is "$ORDER" available
LIST=$(list_of "$ORDER")
curl -sf -X PUT "$API/api/depot/shopping/$LIST/assign" -H "$ADMIN" -H "$J" -d '{"botId":"bot-1"}' >/dev/null || fail "assign"
curl -sf -X PUT "$API/api/depot/shopping/$LIST/complete" -H "$ADMIN" >/dev/null || fail "complete"
until_ok "order $ORDER ready" status_is "$ORDER" ready
until_ok "its invoice exists" curl -sf "$API/api/payments/invoices?orderId=$ORDER" -H "$ADMIN"
INVOICE=$(curl -sf "$API/api/payments/invoices?orderId=$ORDER" -H "$ADMIN" | jq -r .id)
curl -sf -X PUT "$API/api/payments/invoices/$INVOICE/pay" -H "$ADMIN" >/dev/null || fail "pay"
until_ok "order $ORDER completed" status_is "$ORDER" completed
echo "   order $ORDER completed"

echo "2. disabled customer"
ORDER=$(place_order Bob 19.98 disable)
until_ok "order $ORDER rejected" status_is "$ORDER" rejected
echo "   order $ORDER rejected"

echo "3. wrong payment amount"
ORDER=$(place_order Cy 5.00)
until_ok "order $ORDER rejected" status_is "$ORDER" rejected
until_ok "its shopping list canceled" order_list_is "$ORDER" canceled
echo "   order $ORDER rejected, shopping list canceled"

echo "4. cancel an approved order"
ORDER=$(place_order Di 19.98)
until_ok "order $ORDER approved" status_is "$ORDER" approved
[[ $(code -X DELETE "$API/api/ordering/$ORDER") == 204 ]] || fail "cancel order $ORDER"
until_ok "order $ORDER canceled" status_is "$ORDER" canceled
until_ok "its shopping list canceled" order_list_is "$ORDER" canceled
echo "   order $ORDER canceled, shopping list canceled"

echo "5. errors"
[[ $(code -X POST "$API/api/customers" -H "$J" -d '{"name":"","smsNumber":"1"}') == 400 ]] || fail "blank name → 400"
[[ $(code -X POST "$API/api/payments" -H "$J" -d '{"customerId":"x","amount":1.999}') == 400 ]] || fail "3 decimals → 400"
[[ $(code -X POST "$API/api/stores" -H "$J" -d '{"name":"A","location":"B"}') == 401 ]] || fail "no token → 401"
[[ $(code "$API/api/ordering/01a205d2-0000-7000-8000-000000000000") == 404 ]] || fail "unknown order → 404"
echo "   400, 401, 404 as expected"

echo "all acceptance checks passed"
