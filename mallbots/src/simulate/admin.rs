//! An admin worker: the depot staff (and the bots, when the run has none). A kiosk hands it
//! each order the saga approved, with its shopping list, the way a customer walks to the depot
//! with an approved order; for each, in a task of its own, the admin assigns and completes the
//! list (unless bots do), pays the invoice once it is issued, and waits for the order to be
//! completed.
//!
//! Why not pick lists from `GET /api/depot/shopping?status=available`: the saga makes the list
//! available (step 4) before it approves the order (step 5), and ordering drops a list
//! completed in between (the order is still pending, "cannot be readied"), leaving the order
//! approved for ever. Only approved orders' lists are worked on; the hand-over also spares the
//! server a listing poll (up to 500 rows) every few milliseconds.

use std::sync::Arc;

use hyper::StatusCode;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::client::RequestError;
use super::stats::Stage;
use super::{Backoff, Shared};

/// An approved order and its shopping list, handed from a kiosk to an admin.
#[derive(Debug)]
pub struct Approved {
    pub order_id: String,
    pub shopping_id: String,
}

/// Fulfils the orders handed over on `orders` until `shared.halt`.
pub async fn run(admin: usize, mut orders: mpsc::Receiver<Approved>, shared: Arc<Shared>) {
    let mut tasks = JoinSet::new();
    loop {
        let order = tokio::select! {
            () = shared.halt.cancelled() => break,
            order = orders.recv() => match order {
                Some(order) => order,
                None => break,
            },
        };
        while tasks.try_join_next().is_some() {}
        let shared = shared.clone();
        tasks.spawn(async move {
            tokio::select! {
                () = shared.halt.cancelled() => {}
                () = fulfil(admin, order, &shared) => {}
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Assign, complete, pay, wait for `completed`; a failed step is counted and ends the order's
/// journey here.
async fn fulfil(admin: usize, order: Approved, shared: &Shared) {
    let client = &shared.client;
    let Approved { order_id, shopping_id } = order;
    if shared.bots {
        // The bots take the list over their stream; the admin only takes the payment.
        return settle(&order_id, shared).await;
    }
    let assigned = client
        .put(
            &format!("/api/depot/shopping/{shopping_id}/assign"),
            Some(json!({ "botId": format!("simulated-bot-{admin}") })),
            true,
        )
        .await
        .and_then(|a| a.expect(StatusCode::NO_CONTENT));
    if let Err(e) = assigned {
        return shared.stats.error("assign shopping", &e.kind());
    }
    let completed = client
        .put(&format!("/api/depot/shopping/{shopping_id}/complete"), None, true)
        .await
        .and_then(|a| a.expect(StatusCode::NO_CONTENT));
    if let Err(e) = completed {
        return shared.stats.error("complete shopping", &e.kind());
    }
    settle(&order_id, shared).await;
}

/// Pays the order's invoice once it is issued, then waits for the order to be completed.
async fn settle(order_id: &str, shared: &Shared) {
    if let Err((step, e)) = pay(order_id, shared).await {
        return shared.stats.error(step, &e.kind());
    }
    if let Err(e) = wait_for_completion(order_id, shared).await {
        shared.stats.error("poll order", &e.kind());
    }
}

/// Waits for the order's invoice (issued once the list's completion has readied the order),
/// then pays it.
async fn pay(order: &str, shared: &Shared) -> Result<(), (&'static str, RequestError)> {
    let mut backoff = Backoff::polling();
    loop {
        backoff.wait().await;
        // A read of the invoices table: cheaper for the server than trying to pay.
        let answer = shared
            .client
            .get(&format!("/api/payments/invoices?orderId={order}"), true)
            .await
            .map_err(|e| ("poll invoice", e))?;
        if answer.status != StatusCode::NOT_FOUND {
            answer.expect(StatusCode::OK).map_err(|e| ("poll invoice", e))?;
            break;
        }
    }
    // The invoice's id is the order's.
    shared
        .client
        .put(&format!("/api/payments/invoices/{order}/pay"), None, true)
        .await
        .and_then(|a| a.expect(StatusCode::NO_CONTENT))
        .map(drop)
        .map_err(|e| ("pay invoice", e))
}

/// Polls the order until it is completed (or ends otherwise).
async fn wait_for_completion(order: &str, shared: &Shared) -> Result<(), RequestError> {
    #[derive(serde::Deserialize)]
    struct Order {
        status: String,
    }
    let mut backoff = Backoff::polling();
    loop {
        backoff.wait().await;
        let answer = shared.client.get(&format!("/api/ordering/{order}"), false).await?.expect(StatusCode::OK)?;
        let stage = match answer.json::<Order>()?.status.as_str() {
            "completed" => Stage::Completed,
            "approved" | "ready" => continue,
            _ => Stage::Other,
        };
        shared.stats.reached(order, stage);
        return Ok(());
    }
}
