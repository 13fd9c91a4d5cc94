//! Change-data capture: a database trigger turns every INSERT, UPDATE and DELETE on an
//! application table into a message in Herald's outbox, in the same transaction as the change.
//!
//! A legacy table — written by code that knows nothing of Herald, even by hand in `psql` —
//! becomes an event source with the outbox's guarantees: a change that commits is published
//! (at least once, by the [`OutboxRelay`](herald::outbox::OutboxRelay)), a change that rolls
//! back never is, and a crash between the two loses nothing (the row is in the outbox until
//! the relay has published it).
//!
//! ```no_run
//! # async fn demo(db: &herald_sql::AnyDatabase) -> Result<(), herald_sql::SqlError> {
//! use herald_sql::changes::Capture;
//! Capture::table("customers").topic("customers.changes").key_column("id").install(db).await?;
//! // From now on `INSERT INTO customers …` puts a `herald.RowChanged.v1` message in the outbox.
//! # Ok(()) }
//! ```
//!
//! Each message: name [`RowChanged::NAME`] (or [`Capture::name`]), key = the key column's value
//! as text (so per-key order holds on brokers that partition by key), payload [`RowChanged`]
//! (`{"table","op","before","after"}`, rows as JSON objects of all their columns), headers
//! `herald-cdc-table` and `herald-cdc-op`. An UPDATE that changes nothing sends nothing.
//!
//! **Order.** Messages of one table reach the outbox — and so the broker — in commit order:
//! on SQLite one writer at a time commits, so the outbox's sequence follows commits; on
//! PostgreSQL the trigger takes a transaction-scoped advisory lock per table before it takes
//! its outbox sequence number, so concurrent writers of the table take numbers in the order
//! they commit (the price: writers of a captured table serialise from their first change to
//! their commit; [`Capture::row_order_only`] drops the lock and keeps only per-row order,
//! which row locks already give).
//!
//! **Wake-ups.** On PostgreSQL the trigger announces the outbox like Herald's own commits
//! (`NOTIFY`), so a relay in any process publishes at once. SQLite has no cross-connection
//! signal: the relay finds the changes at its poll interval.
//!
//! BLOB/BYTEA columns are carried as hex (SQLite) or PostgreSQL's JSON rendering of `bytea`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::any::{AnyDatabase, Dialect, query};
use crate::error::SqlError;
use crate::postgres::CAPTURE_LOCK;

/// What a captured change says: the table, the operation, and the row before and after.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RowChanged {
    /// The table that changed.
    pub table: String,
    /// What happened to the row.
    pub op: ChangeOp,
    /// The row before the change (UPDATE and DELETE).
    pub before: Option<Value>,
    /// The row after the change (INSERT and UPDATE).
    pub after: Option<Value>,
}

impl herald::Event for RowChanged {
    const NAME: &'static str = "herald.RowChanged.v1";
}

/// The operation a [`RowChanged`] records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ChangeOp {
    /// A row was inserted.
    Insert,
    /// A row was updated (and at least one column changed).
    Update,
    /// A row was deleted.
    Delete,
}

/// Header naming the captured table.
pub const TABLE_HEADER: &str = "herald-cdc-table";
/// Header naming the operation (`INSERT`, `UPDATE`, `DELETE`).
pub const OP_HEADER: &str = "herald-cdc-op";

/// The capture of one table: where its changes go and how they are keyed. Install it once
/// (installing again replaces the trigger: idempotent, and the way to change its settings).
#[derive(Clone, Debug)]
pub struct Capture {
    table: String,
    topic: String,
    key_column: String,
    name: String,
    commit_order: bool,
}

impl Capture {
    /// Captures `table` (a plain identifier: letters, digits, `_`). Defaults: topic
    /// `<table>.changes`, key column `id`, name [`RowChanged::NAME`], commit order.
    pub fn table(table: impl Into<String>) -> Self {
        let table = table.into();
        Self {
            topic: format!("{table}.changes"),
            table,
            key_column: "id".to_owned(),
            name: <RowChanged as herald::Event>::NAME.to_owned(),
            commit_order: true,
        }
    }

    /// The topic the changes are published to.
    #[must_use]
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = topic.into();
        self
    }

    /// The column whose value keys each message (usually the primary key).
    #[must_use]
    pub fn key_column(mut self, column: impl Into<String>) -> Self {
        self.key_column = column.into();
        self
    }

    /// The message name (default [`RowChanged::NAME`]), e.g. to version a table's changes.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// On PostgreSQL, keep only per-row order (no table-wide advisory lock): concurrent writers
    /// of different rows no longer wait for each other, and their changes may reach the outbox
    /// in another order than they committed. No effect on SQLite (one writer at a time).
    #[must_use]
    pub fn row_order_only(mut self) -> Self {
        self.commit_order = false;
        self
    }

    /// Creates (or replaces) the trigger. The table must exist; on SQLite the trigger lists the
    /// table's columns, so install again after adding a column.
    pub async fn install(&self, db: &AnyDatabase) -> Result<(), SqlError> {
        self.validate()?;
        match db.dialect() {
            Dialect::Postgres => {
                let (schema,): (String,) = query("SELECT current_schema()").fetch_one(db).await?;
                for statement in self.postgres_ddl(&schema) {
                    query(statement).execute(db).await?;
                }
            }
            Dialect::Sqlite => {
                let columns: Vec<(String,)> =
                    query(format!("SELECT name FROM pragma_table_info('{}') ORDER BY cid", self.table))
                        .fetch_all(db)
                        .await?;
                if columns.is_empty() {
                    return Err(SqlError::Config(format!("cannot capture `{}`: no such table", self.table)));
                }
                let columns: Vec<String> = columns.into_iter().map(|(c,)| c).collect();
                if !columns.contains(&self.key_column) {
                    return Err(SqlError::Config(format!(
                        "cannot capture `{}`: it has no key column `{}`",
                        self.table, self.key_column
                    )));
                }
                for statement in self.sqlite_ddl(&columns) {
                    query(statement).execute(db).await?;
                }
            }
        }
        Ok(())
    }

    /// Drops the trigger (changes are no longer captured; what is in the outbox stays).
    pub async fn uninstall(&self, db: &AnyDatabase) -> Result<(), SqlError> {
        self.validate()?;
        let statements = match db.dialect() {
            Dialect::Postgres => vec![
                format!("DROP TRIGGER IF EXISTS herald_capture ON {}", self.table),
                format!("DROP FUNCTION IF EXISTS herald_capture_{}()", self.table),
            ],
            Dialect::Sqlite => ["insert", "update", "delete"]
                .iter()
                .map(|op| format!("DROP TRIGGER IF EXISTS herald_capture_{}_{op}", self.table))
                .collect(),
        };
        for statement in statements {
            query(statement).execute(db).await?;
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), SqlError> {
        for (what, identifier) in [("table", &self.table), ("key column", &self.key_column)] {
            let mut chars = identifier.chars();
            let plain = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !plain {
                return Err(SqlError::Config(format!(
                    "cannot capture: the {what} `{identifier}` is not a plain identifier (letters, digits, _)"
                )));
            }
        }
        if self.topic.is_empty() || self.name.is_empty() {
            return Err(SqlError::Config(format!("cannot capture `{}`: empty topic or name", self.table)));
        }
        Ok(())
    }

    /// One PL/pgSQL function and one row trigger. Everything is qualified with the schema
    /// current at install time, so a writer with another `search_path` still fills this
    /// schema's outbox.
    fn postgres_ddl(&self, schema: &str) -> Vec<String> {
        let (table, key) = (&self.table, literal(&self.key_column));
        let schema_ident = format!("\"{}\"", schema.replace('"', "\"\""));
        let lock = if self.commit_order {
            format!(
                "PERFORM pg_advisory_xact_lock({CAPTURE_LOCK}, hashtext({}));",
                literal(&format!("{schema}.{table}"))
            )
        } else {
            String::new()
        };
        let function = format!(
            "CREATE OR REPLACE FUNCTION {schema_ident}.herald_capture_{table}() RETURNS trigger \
             LANGUAGE plpgsql AS $herald$
DECLARE
    row_before jsonb := NULL;
    row_after jsonb := NULL;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW IS NOT DISTINCT FROM OLD THEN RETURN NULL; END IF;
    IF TG_OP <> 'INSERT' THEN row_before := to_jsonb(OLD); END IF;
    IF TG_OP <> 'DELETE' THEN row_after := to_jsonb(NEW); END IF;
    {lock}
    INSERT INTO {schema_ident}.herald_outbox (id, name, topic, key, payload, metadata, enqueued_at)
    VALUES (
        gen_random_uuid()::text, {name}, {topic},
        COALESCE(COALESCE(row_after, row_before) ->> {key}, ''),
        convert_to(jsonb_build_object('table', TG_TABLE_NAME, 'op', TG_OP,
                                      'before', row_before, 'after', row_after)::text, 'UTF8'),
        jsonb_build_object(
            'occurredAt', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
            'headers', jsonb_build_object({table_header}, TG_TABLE_NAME, {op_header}, TG_OP))::text,
        (extract(epoch FROM clock_timestamp()) * 1000)::bigint);
    PERFORM pg_notify({channel}, {payload});
    RETURN NULL;
END $herald$",
            name = literal(&self.name),
            topic = literal(&self.topic),
            table_header = literal(TABLE_HEADER),
            op_header = literal(OP_HEADER),
            channel = literal(crate::postgres::CHANNEL),
            payload = literal(&format!("{schema}:outbox")),
        );
        vec![
            function,
            format!("DROP TRIGGER IF EXISTS herald_capture ON {schema_ident}.{table}"),
            format!(
                "CREATE TRIGGER herald_capture AFTER INSERT OR UPDATE OR DELETE ON {schema_ident}.{table} \
                 FOR EACH ROW EXECUTE FUNCTION {schema_ident}.herald_capture_{table}()"
            ),
        ]
    }

    /// Three triggers (SQLite has no multi-event triggers and no `row_to_json`: the row's JSON
    /// lists the columns known at install time).
    fn sqlite_ddl(&self, columns: &[String]) -> Vec<String> {
        let table = &self.table;
        let row = |alias: &str| {
            let fields: Vec<String> = columns
                .iter()
                .map(|c| {
                    format!(
                        "{}, CASE WHEN typeof({alias}.\"{c}\") = 'blob' THEN hex({alias}.\"{c}\") ELSE {alias}.\"{c}\" END",
                        literal(c)
                    )
                })
                .collect();
            format!("json_object({})", fields.join(", "))
        };
        // A version-4 UUID from random bytes (the message id).
        let uuid = "lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' || \
                    substr(lower(hex(randomblob(2))), 2) || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || \
                    substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6)))";
        let changed =
            columns.iter().map(|c| format!("OLD.\"{c}\" IS NOT NEW.\"{c}\"")).collect::<Vec<_>>().join(" OR ");
        let mut statements = Vec::new();
        for (op, event, when, before, after, key_row) in [
            ("insert", "INSERT", String::new(), "NULL".to_owned(), row("NEW"), "NEW"),
            ("update", "UPDATE", format!("WHEN {changed}"), row("OLD"), row("NEW"), "NEW"),
            ("delete", "DELETE", String::new(), row("OLD"), "NULL".to_owned(), "OLD"),
        ] {
            statements.push(format!("DROP TRIGGER IF EXISTS herald_capture_{table}_{op}"));
            statements.push(format!(
                "CREATE TRIGGER herald_capture_{table}_{op} AFTER {event} ON \"{table}\" FOR EACH ROW {when}
BEGIN
    INSERT INTO herald_outbox (id, name, topic, key, payload, metadata, enqueued_at)
    VALUES (
        {uuid}, {name}, {topic},
        COALESCE(CAST({key_row}.\"{key}\" AS TEXT), ''),
        CAST(json_object('table', {table_literal}, 'op', '{event}', 'before', json({before}), 'after', json({after})) AS BLOB),
        json_object('occurredAt', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                    'headers', json_object({table_header}, {table_literal}, {op_header}, '{event}')),
        CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));
END",
                name = literal(&self.name),
                topic = literal(&self.topic),
                key = self.key_column,
                table_literal = literal(table),
                table_header = literal(TABLE_HEADER),
                op_header = literal(OP_HEADER),
            ));
        }
        statements
    }
}

/// A SQL string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
