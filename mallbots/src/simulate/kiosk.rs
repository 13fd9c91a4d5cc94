//! A kiosk: places one order after another (register, authorize the payment, start a basket,
//! add items, check out) and waits for the saga's decision, until the load phase ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use serde_json::json;

use super::admin::Approved;
use super::client::RequestError;
use super::stats::Stage;
use super::{Backoff, Shared};

/// How long a kiosk waits for the saga's decision before counting the order as timed out.
const DECISION_TIMEOUT: Duration = Duration::from_secs(30);

/// Places orders until the load phase ends, then finishes the order in hand.
pub async fn run(kiosk: usize, shared: Arc<Shared>) {
    let mut rng = fastrand::Rng::with_seed(kiosk as u64 + 1);
    let mut number = 0u64;
    while !shared.load.is_cancelled() {
        number += 1;
        tokio::select! {
            () = shared.halt.cancelled() => return,
            () = place_and_wait(kiosk, number, &mut rng, &shared) => {}
        }
    }
}

/// The step of the flow a request belongs to, for the error report.
type Step = &'static str;

async fn place_and_wait(kiosk: usize, number: u64, rng: &mut fastrand::Rng, shared: &Shared) {
    if let Err((step, e)) = place(kiosk, number, rng, shared).await {
        shared.stats.error(step, &e.kind());
        // Do not spin on a server that fails every request.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn place(
    kiosk: usize,
    number: u64,
    rng: &mut fastrand::Rng,
    shared: &Shared,
) -> Result<(), (Step, RequestError)> {
    let client = &shared.client;
    let customer = client
        .create(
            "/api/customers",
            json!({ "name": format!("Kiosk {kiosk} shopper {number}"), "smsNumber": "555 0100" }),
            false,
        )
        .await
        .map_err(|e| ("register customer", e))?;
    // 1 to 3 different products, 1 or 2 of each.
    let mut picks: Vec<usize> = (0..shared.catalog.len()).collect();
    rng.shuffle(&mut picks);
    picks.truncate(rng.usize(1..=3.min(shared.catalog.len())));
    let items: Vec<(&str, u32)> = picks.iter().map(|&i| (shared.catalog[i].id.as_str(), rng.u32(1..=2))).collect();
    let total: i64 = picks.iter().zip(&items).map(|(&i, (_, q))| shared.catalog[i].price_cents * i64::from(*q)).sum();
    let payment = client
        .create(
            "/api/payments",
            json!({ "customerId": customer, "amount": format!("{}.{:02}", total / 100, total % 100) }),
            false,
        )
        .await
        .map_err(|e| ("authorize payment", e))?;
    let basket = client
        .create("/api/baskets", json!({ "customerId": customer }), false)
        .await
        .map_err(|e| ("start basket", e))?;
    for (product, quantity) in items {
        client
            .put(
                &format!("/api/baskets/{basket}/addItem"),
                Some(json!({ "productId": product, "quantity": quantity })),
                false,
            )
            .await
            .and_then(|a| a.expect(StatusCode::NO_CONTENT))
            .map_err(|e| ("add item", e))?;
    }
    let checkout = Instant::now();
    client
        .put(&format!("/api/baskets/{basket}/checkout"), Some(json!({ "paymentId": payment })), false)
        .await
        .and_then(|a| a.expect(StatusCode::NO_CONTENT))
        .map_err(|e| ("checkout", e))?;
    shared.stats.placed(&basket, checkout);
    let Some(shopping_id) = wait_for_decision(&basket, checkout, shared).await.map_err(|e| ("poll order", e))? else {
        return Ok(());
    };
    // Off to the depot. Waits while the admins are that far behind (the load they can take is
    // part of what is measured).
    let admin = &shared.admins[kiosk % shared.admins.len()];
    let _ = admin.send(Approved { order_id: basket, shopping_id }).await;
    Ok(())
}

/// Polls the order (the basket's id) until the saga approved or rejected it; returns the
/// shopping list of an approved order for the admins to fulfil.
async fn wait_for_decision(order: &str, checkout: Instant, shared: &Shared) -> Result<Option<String>, RequestError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Order {
        status: String,
        shopping_id: Option<String>,
    }
    let mut backoff = Backoff::polling();
    loop {
        backoff.wait().await;
        let answer = shared.client.get(&format!("/api/ordering/{order}"), false).await?;
        // 404: ordering has not heard of the checkout yet.
        if answer.status != StatusCode::NOT_FOUND {
            let Order { status, shopping_id } = answer.expect(StatusCode::OK)?.json()?;
            let stage = match status.as_str() {
                "pending" => None,
                // With bots, an order can be picked before the kiosk looks again: past
                // `approved` is approved too.
                "approved" | "ready" | "completed" => Some(Stage::Approved),
                "rejected" => Some(Stage::Rejected),
                _ => Some(Stage::Other),
            };
            if let Some(stage) = stage {
                shared.stats.reached(order, stage);
                return Ok(shopping_id.filter(|_| stage == Stage::Approved));
            }
        }
        if checkout.elapsed() > DECISION_TIMEOUT {
            shared.stats.reached(order, Stage::TimedOut);
            return Ok(None);
        }
    }
}
