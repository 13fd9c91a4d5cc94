#!/usr/bin/env bash
# One order, from an empty mall to `completed`, through the REST API only.
# Start MallBots first:  cargo run -p mallbots -- serve --admin-token secret
# Then:                  bash mallbots/walkthrough.sh   (API and TOKEN can be overridden)
set -euo pipefail
API=${API:-http://127.0.0.1:8080}
ADMIN="Authorization: Bearer ${TOKEN:-secret}"
J="Content-Type: application/json"
id() { sed -E 's/.*"id":"([^"]+)".*/\1/'; }

STORE=$(curl -sf -X POST "$API/api/stores" -H "$ADMIN" -H "$J" -d '{"name":"Waldorf Books","location":"Level 1"}' | id)
PRODUCT=$(curl -sf -X POST "$API/api/stores/$STORE/products" -H "$ADMIN" -H "$J" -d '{"name":"Muppet Treasury","sku":"B-1","price":9.99}' | id)
CUSTOMER=$(curl -sf -X POST "$API/api/customers" -H "$J" -d '{"name":"Ada","smsNumber":"555 0100"}' | id)
PAYMENT=$(curl -sf -X POST "$API/api/payments" -H "$J" -d "{\"customerId\":\"$CUSTOMER\",\"amount\":19.98}" | id)
BASKET=$(curl -sf -X POST "$API/api/baskets" -H "$J" -d "{\"customerId\":\"$CUSTOMER\"}" | id)
sleep 1 # the basket module's catalog copy follows the stores events
curl -sf -X PUT "$API/api/baskets/$BASKET/addItem" -H "$J" -d "{\"productId\":\"$PRODUCT\",\"quantity\":2}"
curl -sf -X PUT "$API/api/baskets/$BASKET/checkout" -H "$J" -d "{\"paymentId\":\"$PAYMENT\"}"
sleep 1 # the create-order saga runs
echo "order: $(curl -sf "$API/api/ordering/$BASKET")"
LIST=$(curl -sf "$API/api/depot/shopping?status=available" -H "$ADMIN" | sed -E 's/^\[\{"id":"([^"]+)".*/\1/')
curl -sf -X PUT "$API/api/depot/shopping/$LIST/assign" -H "$ADMIN" -H "$J" -d '{"botId":"bot-1"}'
curl -sf -X PUT "$API/api/depot/shopping/$LIST/complete" -H "$ADMIN"
sleep 1 # ordering readies the order, payments issues the invoice
echo "invoice: $(curl -sf "$API/api/payments/invoices?orderId=$BASKET" -H "$ADMIN")"
curl -sf -X PUT "$API/api/payments/invoices/$BASKET/pay" -H "$ADMIN"
sleep 1
curl -sf "$API/api/ordering/$BASKET" | grep -q '"status":"completed"' && echo "order $BASKET completed"
