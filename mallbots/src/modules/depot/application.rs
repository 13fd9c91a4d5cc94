//! The depot application.

use herald_sql::any::query;
use std::collections::BTreeMap;

use herald::aggregate::Aggregate;
use herald::command::Reply;
use herald::router::{HandlerContext, HandlerError};
use herald::{Message, Transaction};
use herald_sql::AnyDatabase;
use serde::Serialize;
use utoipa::ToSchema;

use super::api::{self, ShoppingItem};
use super::domain::{BotStatus, ShoppingCommand, ShoppingError, ShoppingEvent, ShoppingList, ShoppingStatus};
use crate::db;
use crate::error::{AppError, AppResult};
use crate::modules::ordering::api as ordering;

impl From<ShoppingError> for AppError {
    fn from(e: ShoppingError) -> Self {
        match e {
            ShoppingError::NotFound => AppError::NotFound("shopping list".into()),
            ShoppingError::NoItems | ShoppingError::NoBot | ShoppingError::NoSuchStop(_) => AppError::invalid(e),
            ShoppingError::AlreadyExists | ShoppingError::WrongStatus { .. } | ShoppingError::NotYours => {
                AppError::conflict(e)
            }
        }
    }
}

type Row = (String, String, Option<String>, String);

fn from_row((order_id, status, bot_id, items): Row) -> AppResult<ShoppingList> {
    Ok(ShoppingList {
        status: ShoppingStatus::parse(&status).ok_or_else(|| AppError::internal(format!("bad status {status}")))?,
        order_id,
        items: serde_json::from_str(&items).map_err(AppError::internal)?,
        bot_id,
    })
}

async fn execute(
    tx: &mut dyn Transaction,
    id: &str,
    command: ShoppingCommand,
    cause: Option<&Message>,
) -> AppResult<Result<ShoppingList, ShoppingError>> {
    let row: Option<Row> = query("SELECT order_id, status, bot_id, items FROM depot_shopping_lists WHERE id = ?")
        .bind(id)
        .fetch_optional(db::conn(tx)?)
        .await?;
    let mut list = match row {
        Some(row) => from_row(row)?,
        None => ShoppingList::default(),
    };
    let events = match list.handle(command) {
        Ok(events) => events,
        Err(e) => return Ok(Err(e)),
    };
    if events.is_empty() {
        return Ok(Ok(list));
    }
    let mut messages = Vec::new();
    for event in &events {
        list.apply(event);
        let (id, order_id) = (id.to_owned(), list.order_id.clone());
        let bot_id = list.bot_id.clone().unwrap_or_default();
        let integration: api::ShoppingListIntegrationEvent = match event {
            ShoppingEvent::Created(_) => api::ShoppingListCreated { id, order_id }.into(),
            ShoppingEvent::Available(_) => continue,
            ShoppingEvent::Assigned(e) => api::ShoppingListAssigned { id, order_id, bot_id: e.bot_id.clone() }.into(),
            ShoppingEvent::StopPicked(e) => {
                api::ShoppingListStopPicked { id, order_id, bot_id, store_id: e.store_id.clone() }.into()
            }
            ShoppingEvent::Released(e) => {
                let (bot_id, reason) = (e.bot_id.clone(), e.reason.clone());
                api::ShoppingListReleased { id, order_id, bot_id, reason }.into()
            }
            ShoppingEvent::Completed(_) => api::ShoppingListCompleted { id, order_id }.into(),
            ShoppingEvent::Canceled(_) => api::ShoppingListCanceled { id, order_id }.into(),
        };
        let mut message = Message::encode(api::EVENT_TOPIC, &integration)?.with_key(list.order_id.as_str());
        if let Some(cause) = cause {
            message = message.caused_by(cause);
        }
        messages.push(message);
    }
    let items = serde_json::to_string(&list.items).map_err(AppError::internal)?;
    query(
        "INSERT INTO depot_shopping_lists (id, order_id, status, bot_id, items) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET status = excluded.status, bot_id = excluded.bot_id",
    )
    .bind(id)
    .bind(&list.order_id)
    .bind(list.status.as_str())
    .bind(&list.bot_id)
    .bind(items)
    .execute(db::conn(tx)?)
    .await?;
    tx.enqueue(messages).await?;
    Ok(Ok(list))
}

/// The id of the list of an order, if it has one.
async fn list_of_order(tx: &mut dyn Transaction, order_id: &str) -> AppResult<Option<String>> {
    Ok(query("SELECT id FROM depot_shopping_lists WHERE order_id = ?")
        .bind(order_id)
        .fetch_optional::<(String,)>(db::conn(tx)?)
        .await?
        .map(|(id,)| id))
}

/// Handles the saga's commands to depot.
pub async fn handle_command(cx: &mut HandlerContext, command: api::DepotCommand) -> Result<Reply, HandlerError> {
    let cause = cx.message().clone();
    let tx = cx.tx()?;
    let outcome = match command {
        api::DepotCommand::Create(c) => {
            // One list per order: a repeated command answers with the list already made.
            if let Some(id) = list_of_order(tx, &c.order_id).await.map_err(HandlerError::transient)? {
                return Ok(Reply::with(&api::CreatedShoppingList { id })?);
            }
            let id = db::new_id();
            let result =
                execute(tx, &id, ShoppingCommand::Create { order_id: c.order_id, items: c.items }, Some(&cause)).await;
            match result.map_err(HandlerError::transient)? {
                Ok(_) => return Ok(Reply::with(&api::CreatedShoppingList { id })?),
                Err(refusal) => Err(refusal),
            }
        }
        api::DepotCommand::Cancel(c) => execute(tx, &c.id, ShoppingCommand::Cancel, Some(&cause))
            .await
            .map_err(HandlerError::transient)?
            .map(|_| ()),
        api::DepotCommand::Initiate(c) => execute(tx, &c.id, ShoppingCommand::Initiate, Some(&cause))
            .await
            .map_err(HandlerError::transient)?
            .map(|_| ()),
    };
    Ok(match outcome {
        Ok(()) => Reply::success(),
        Err(refusal) => Reply::failure(refusal.to_string()),
    })
}

/// Cancels the list of a canceled order (and so frees its bot), if it is not done yet.
pub async fn on_order_canceled(cx: &mut HandlerContext, event: ordering::OrderCanceled) -> Result<(), HandlerError> {
    let cause = cx.message().clone();
    let tx = cx.tx()?;
    let Some(id) = list_of_order(tx, &event.id).await.map_err(HandlerError::transient)? else { return Ok(()) };
    match execute(tx, &id, ShoppingCommand::Cancel, Some(&cause)).await.map_err(HandlerError::transient)? {
        Ok(_) | Err(ShoppingError::WrongStatus { .. }) => Ok(()),
        Err(refusal) => Err(HandlerError::permanent(refusal)),
    }
}

/// A bot takes an available list.
pub async fn assign(tx: &mut dyn Transaction, id: &str, bot_id: String) -> AppResult<()> {
    execute(tx, id, ShoppingCommand::Assign { bot_id }, None).await??;
    Ok(())
}

/// The bot brought everything to the depot.
pub async fn complete(tx: &mut dyn Transaction, id: &str) -> AppResult<()> {
    execute(tx, id, ShoppingCommand::Complete, None).await??;
    Ok(())
}

/// The list's bot picked the items at a store.
pub async fn pick_stop(tx: &mut dyn Transaction, id: &str, bot_id: String, store_id: String) -> AppResult<()> {
    execute(tx, id, ShoppingCommand::PickStop { bot_id, store_id }, None).await??;
    Ok(())
}

/// The lists a bot holds (assigned or active), e.g. from before a depot process died.
pub async fn lists_of_bot(db: &AnyDatabase, bot_id: &str) -> AppResult<Vec<String>> {
    let rows: Vec<(String,)> =
        query("SELECT id FROM depot_shopping_lists WHERE bot_id = ? AND status IN ('assigned', 'active') ORDER BY id")
            .bind(bot_id)
            .fetch_all(db)
            .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// The list's bot lets it go: available again for another.
pub async fn release(tx: &mut dyn Transaction, id: &str, bot_id: String, reason: String) -> AppResult<()> {
    execute(tx, id, ShoppingCommand::Release { bot_id, reason }, None).await??;
    Ok(())
}

/// A product to pick up at a stop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StopItemView {
    pub product_id: String,
    pub product_name: String,
    pub quantity: u32,
}

/// One store to visit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StopView {
    pub store_id: String,
    pub store_name: String,
    pub items: Vec<StopItemView>,
}

/// A shopping list as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShoppingListView {
    pub id: String,
    pub order_id: String,
    /// pending, available, assigned, active, completed or canceled.
    pub status: String,
    pub bot_id: Option<String>,
    pub stops: Vec<StopView>,
}

fn view(id: String, list: ShoppingList) -> ShoppingListView {
    let mut stops: BTreeMap<String, StopView> = BTreeMap::new();
    for ShoppingItem { store_id, store_name, product_id, product_name, quantity } in list.items {
        stops
            .entry(store_id.clone())
            .or_insert_with(|| StopView { store_id, store_name, items: Vec::new() })
            .items
            .push(StopItemView { product_id, product_name, quantity });
    }
    ShoppingListView {
        id,
        order_id: list.order_id,
        status: list.status.as_str().to_owned(),
        bot_id: list.bot_id,
        stops: stops.into_values().collect(),
    }
}

/// One shopping list.
pub async fn get(db: &AnyDatabase, id: &str) -> AppResult<ShoppingListView> {
    let row: Option<Row> = query("SELECT order_id, status, bot_id, items FROM depot_shopping_lists WHERE id = ?")
        .bind(id)
        .fetch_optional(db)
        .await?;
    let row = row.ok_or_else(|| AppError::NotFound("shopping list".into()))?;
    Ok(view(id.to_owned(), from_row(row)?))
}

/// Shopping lists, optionally of one status (`status` must be a known one), oldest first.
pub async fn list(db: &AnyDatabase, status: Option<&str>) -> AppResult<Vec<ShoppingListView>> {
    let rows: Vec<(String, String, String, Option<String>, String)> = match status {
        Some(status) => {
            let status = ShoppingStatus::parse(status)
                .ok_or_else(|| AppError::invalid(format!("unknown status {status:?}")))?
                .as_str();
            query(
                "SELECT id, order_id, status, bot_id, items FROM depot_shopping_lists WHERE status = ? ORDER BY id LIMIT 500",
            )
            .bind(status)
            .fetch_all(db)
            .await?
        }
        None => {
            query("SELECT id, order_id, status, bot_id, items FROM depot_shopping_lists ORDER BY id LIMIT 500")
                .fetch_all(db)
                .await?
        }
    };
    rows.into_iter()
        .map(|(id, order_id, status, bot_id, items)| Ok(view(id, from_row((order_id, status, bot_id, items))?)))
        .collect()
}

// --- the shopper bots' table -------------------------------------------------------------------

/// Now, as `depot_bots.last_seen` holds it: RFC 3339 in UTC with milliseconds, one fixed width,
/// so the text sorts (and compares) as the time does.
pub fn timestamp(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A bot's row as the depot process holding its stream sees it: `status` (with its list when
/// busy), this process as its `instance`, seen `at`.
pub async fn save_bot(
    db: &AnyDatabase,
    id: &str,
    status: BotStatus,
    shopping_id: Option<&str>,
    instance: &str,
    at: &str,
) -> AppResult<()> {
    query(
        "INSERT INTO depot_bots (id, status, shopping_id, instance, last_seen) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET status = excluded.status, shopping_id = excluded.shopping_id,
         instance = excluded.instance, last_seen = excluded.last_seen",
    )
    .bind(id)
    .bind(status.as_str())
    .bind(shopping_id)
    .bind(instance)
    .bind(at)
    .execute(db)
    .await?;
    Ok(())
}

/// The bot left this process (`instance`): offline, unless its row is another process's now.
pub async fn bot_offline(db: &AnyDatabase, id: &str, instance: &str) -> AppResult<()> {
    query("UPDATE depot_bots SET status = 'offline', shopping_id = NULL WHERE id = ? AND instance = ?")
        .bind(id)
        .bind(instance)
        .execute(db)
        .await?;
    Ok(())
}

/// Every bot connected to this process (`instance`) was seen `at`: one statement for them all.
/// Returns how many rows it touched.
pub async fn refresh_bots(db: &AnyDatabase, instance: &str, at: &str) -> AppResult<u64> {
    Ok(query("UPDATE depot_bots SET last_seen = ? WHERE instance = ? AND status <> 'offline'")
        .bind(at)
        .bind(instance)
        .execute(db)
        .await?)
}

/// Bots not offline whose depot process has not vouched for them since `before` (it died).
pub async fn stale_bots(db: &AnyDatabase, before: &str) -> AppResult<Vec<String>> {
    let rows: Vec<(String,)> =
        query("SELECT id FROM depot_bots WHERE status <> 'offline' AND last_seen < ? ORDER BY id LIMIT 100")
            .bind(before)
            .fetch_all(db)
            .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// A bot whose depot process is gone (its row still unseen since `before`) goes offline, and
/// the lists it holds are released (`ShoppingListReleased`, available again). `false` if it was
/// seen again meanwhile (it came back, through another process): nothing changes then.
pub async fn retire_bot(tx: &mut dyn Transaction, id: &str, before: &str) -> AppResult<bool> {
    let retired = query(
        "UPDATE depot_bots SET status = 'offline', shopping_id = NULL
         WHERE id = ? AND status <> 'offline' AND last_seen < ?",
    )
    .bind(id)
    .bind(before)
    .execute(db::conn(tx)?)
    .await?;
    if retired == 0 {
        return Ok(false);
    }
    let lists: Vec<(String,)> =
        query("SELECT id FROM depot_shopping_lists WHERE bot_id = ? AND status IN ('assigned', 'active') ORDER BY id")
            .bind(id)
            .fetch_all(db::conn(tx)?)
            .await?;
    for (list,) in lists {
        let command = ShoppingCommand::Release { bot_id: id.to_owned(), reason: "its depot process is gone".into() };
        match execute(tx, &list, command, None).await? {
            // Completed or canceled meanwhile: nothing to give back.
            Ok(_) | Err(ShoppingError::WrongStatus { .. } | ShoppingError::NotYours | ShoppingError::NotFound) => {}
            Err(refusal) => return Err(refusal.into()),
        }
    }
    Ok(true)
}

/// A shopper bot as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BotView {
    pub id: String,
    /// idle, busy or offline.
    pub status: String,
    /// The list it works on (when busy).
    pub shopping_id: Option<String>,
    /// When its depot process last saw it connected (RFC 3339; vouched for every second).
    pub last_seen: String,
}

/// The shopper bots, optionally of one status (`status` must be a known one), by id.
pub async fn list_bots(db: &AnyDatabase, status: Option<&str>) -> AppResult<Vec<BotView>> {
    let rows: Vec<(String, String, Option<String>, String)> = match status {
        Some(status) => {
            let status = BotStatus::parse(status)
                .ok_or_else(|| AppError::invalid(format!("unknown status {status:?}: idle, busy or offline")))?;
            query("SELECT id, status, shopping_id, last_seen FROM depot_bots WHERE status = ? ORDER BY id")
                .bind(status.as_str())
                .fetch_all(db)
                .await?
        }
        None => query("SELECT id, status, shopping_id, last_seen FROM depot_bots ORDER BY id").fetch_all(db).await?,
    };
    Ok(rows
        .into_iter()
        .map(|(id, status, shopping_id, last_seen)| BotView { id, status, shopping_id, last_seen })
        .collect())
}
