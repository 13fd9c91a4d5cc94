//! The SQL text of the PostgreSQL dialect: the same constants as `sqlite/sql.rs` with
//! PostgreSQL's syntax (`$1` placeholders, `= ANY($1)`, `UNNEST`, `FOR UPDATE`).

pub(super) use crate::sql::{
    ACK_IF_CURRENT, ADVANCE_GROUP, CHECKPOINT_AND_TOKEN, CREATE_GROUP, EARLIER_MESSAGES, GROUP_LAG, GROUP_NEXT,
    LAST_NEW_POSITION, LOAD_CHECKPOINT, LOAD_SAGA, LOAD_SNAPSHOT, MESSAGE_AT, PUBLISH, READ_ALL, RECORD_HANDLED,
    RELEASE_IF_CURRENT, SAGA_VERSION, SAVE_CHECKPOINT, SAVE_SNAPSHOT, SETTLE_DELETE, TAKE_NEW,
};

// --- the global-log locks (docs/adr/0003-postgres-global-log.md) ---

/// Takes a transaction-scoped advisory lock `($1, $2)`: `$1` says which log (the event log's
/// sequencer or the broker's messages), `$2` is the schema's hash, so modules in other schemas
/// never wait for it.
pub(super) const LOG_LOCK: &str = "SELECT pg_advisory_xact_lock($1, $2)";

/// Announces a commit on channel `$1` with payload `$2` (delivered when the transaction
/// commits, dropped if it rolls back).
pub(super) const NOTIFY: &str = "SELECT pg_notify($1, $2)";

// --- event store ---

/// The part [`APPEND`] and [`APPEND_ALONE`] share: the version read, and the insert of the
/// events after it when the expectation `$7` holds (up to its `ORDER BY`).
macro_rules! append_insert {
    () => {
        "WITH cur AS (SELECT COALESCE(MAX(version), 0)::BIGINT AS v FROM herald_events WHERE stream = $1), \
         ins AS (INSERT INTO herald_events (stream, version, id, name, payload, metadata, recorded_at) \
           SELECT $1, cur.v + t.n, t.id, t.name, t.payload, t.metadata, $6 \
           FROM cur, UNNEST($2::TEXT[], $3::TEXT[], $4::BYTEA[], $5::TEXT[]) \
                WITH ORDINALITY AS t(id, name, payload, metadata, n) \
           WHERE $7::BIGINT IS NULL OR cur.v = $7 \
           ORDER BY t.n "
    };
}

/// An append in one statement: reads the stream's version, and if it is `$7` (NULL = any)
/// inserts all the events after it, in order (`WITH ORDINALITY`, so `seq` and later the
/// positions follow versions), without a position: the sequencer assigns it after commit.
/// Returns the version read and the `seq`s inserted.
///
/// A version that another transaction holds is not an error: the insert waits for that
/// transaction, then skips the row if it committed (inserts it if it rolled back). Fewer `seq`s
/// than events means another append got there first; the caller deletes the rows that were
/// inserted ([`DELETE_EVENTS`]), so the append writes nothing and the transaction stays usable.
pub(super) const APPEND: &str = concat!(
    append_insert!(),
    "ON CONFLICT (stream, version) DO NOTHING RETURNING seq) SELECT cur.v, ARRAY(SELECT seq FROM ins) FROM cur"
);

/// [`APPEND`] on its own, as one autocommit statement (`Store::append` outside a unit of
/// work): no `ON CONFLICT`, so a version another transaction committed first fails the whole
/// statement with a unique violation and nothing is written. Returns the version read (the
/// insert ran if and only if it matches the expectation `$7`; a data-modifying `WITH` runs
/// whether or not the `SELECT` reads it).
pub(super) const APPEND_ALONE: &str = concat!(append_insert!(), "RETURNING seq) SELECT cur.v FROM cur");

/// Undoes the part of an append that raced with another transaction (rows of this transaction).
pub(super) const DELETE_EVENTS: &str = "DELETE FROM herald_events WHERE seq = ANY($1)";

/// A stream's events; position 0 = not sequenced yet (see `PostgresStore::read_stream`).
pub(super) const READ_STREAM: &str = "SELECT COALESCE(position, 0) AS position, stream, version, id, name, payload, metadata \
     FROM herald_events WHERE stream = $1 AND version >= $2 ORDER BY version LIMIT $3";

/// [`READ_ALL`] and, in the same snapshot, whether committed events wait for a position (then
/// the reader at the head of the log waits for the sequencer and reads again). Always at least
/// one row: `pending` beside NULL event columns when nothing follows `$1`.
pub(super) const READ_ALL_AT_HEAD: &str = "SELECT EXISTS (SELECT 1 FROM herald_events WHERE position IS NULL) AS pending, \
            e.position, e.stream, e.version, e.id, e.name, e.payload, e.metadata \
     FROM (SELECT 1) AS one \
     LEFT JOIN LATERAL (SELECT position, stream, version, id, name, payload, metadata FROM herald_events \
                        WHERE position > $1 ORDER BY position LIMIT $2) AS e ON TRUE \
     ORDER BY e.position";

/// Whether a committed event waits for a position (the partial index, usually empty).
pub(super) const UNSEQUENCED: &str = "SELECT EXISTS (SELECT 1 FROM herald_events WHERE position IS NULL)";

/// One sequencer batch (`herald_sequence_events`, migration 0006): takes lock (`$1`, `$2`),
/// numbers at most `$3` committed unsequenced rows, announces them on channel `$4` with payload
/// `$5`; returns how many.
pub(super) const SEQUENCE_BATCH: &str = "SELECT herald_sequence_events($1, $2, $3, $4, $5)";

/// What loading an aggregate reads, in one round trip: the snapshot of stream `$1` (version and
/// payload on the first row only; NULL without one) beside up to `$2` events after it (NULL
/// columns when none follow). Always at least one row. Position 0 = not sequenced yet.
pub(super) const LOAD_STREAM: &str = "WITH s AS (SELECT version, payload FROM herald_snapshots WHERE stream = $1) \
     SELECT s.version AS snapshot_version, \
            CASE WHEN ROW_NUMBER() OVER (ORDER BY e.version) = 1 THEN s.payload END AS snapshot_payload, \
            e.position, e.version, e.id, e.name, e.payload, e.metadata \
     FROM (SELECT 1) AS one \
     LEFT JOIN s ON TRUE \
     LEFT JOIN LATERAL (SELECT COALESCE(position, 0) AS position, version, id, name, payload, metadata \
                        FROM herald_events WHERE stream = $1 AND version > COALESCE(s.version, 0) \
                        ORDER BY version LIMIT $2) AS e ON TRUE \
     ORDER BY e.version";

// --- outbox ---

/// Enqueues a batch of messages in one statement (in array order: `sequence` follows
/// `ORDINALITY`) and announces the outbox on channel `$8` with payload `$9` at commit: one round
/// trip per unit of work, whatever the number of messages.
pub(super) const ENQUEUE: &str = "WITH ins AS (INSERT INTO herald_outbox (id, name, topic, key, payload, metadata, enqueued_at) \
       SELECT t.id, t.name, t.topic, t.key, t.payload, t.metadata, $7 \
       FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::BYTEA[], $6::TEXT[]) \
            WITH ORDINALITY AS t(id, name, topic, key, payload, metadata, n) \
       ORDER BY t.n) \
     SELECT pg_notify($8, $9)";

/// Removes published messages, immediate or scheduled (the tables share the sequences), in one
/// statement.
pub(super) const OUTBOX_REMOVE: &str = "WITH o AS (DELETE FROM herald_outbox WHERE sequence = ANY($1)) \
     DELETE FROM herald_outbox_scheduled WHERE sequence = ANY($1)";

/// Now, in unix milliseconds of the server's clock (floored, so a message is never due early).
/// `statement_timestamp()`, not the leases' `clock_timestamp()`: it is stable within the
/// statement, so PostgreSQL can compare the due-time index with it (a volatile value cannot be
/// an index condition, and the scan would walk every scheduled row).
macro_rules! now_millis {
    () => {
        "FLOOR(EXTRACT(EPOCH FROM statement_timestamp()) * 1000)::BIGINT"
    };
}

pub(super) const OUTBOX_PENDING: &str = crate::sql::outbox_pending!(now_millis!());
pub(super) const OUTBOX_STATS: &str = crate::sql::outbox_stats!(now_millis!());
pub(super) const NEXT_SCHEDULED: &str = crate::sql::next_scheduled!(now_millis!());

/// Schedules a batch of messages for `$1` (unix milliseconds) in one statement, in array order
/// (`sequence`, from the outbox's own sequence, follows `ORDINALITY`), and announces it on
/// channel `$9` with payload `$10` at commit (the relay then asks for the next due time).
pub(super) const SCHEDULE: &str = "WITH ins AS (INSERT INTO herald_outbox_scheduled \
       (due_at, id, name, topic, key, payload, metadata, enqueued_at) \
       SELECT $1, t.id, t.name, t.topic, t.key, t.payload, t.metadata, $8 \
       FROM UNNEST($2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::BYTEA[], $7::TEXT[]) \
            WITH ORDINALITY AS t(id, name, topic, key, payload, metadata, n) \
       ORDER BY t.n) \
     SELECT pg_notify($9, $10)";

/// Takes or renews lease `$1` for holder `$2`, `$3` ms of time to live. Returns the fencing
/// token only if `$2` holds the lease afterwards: kept on a renewal in time, one more on any
/// other grant. A concurrent taker waits on the row lock, then re-checks the condition against
/// the winner's row, so two holders never both get it. Times are the server's clock.
pub(super) const ACQUIRE_LEASE: &str = "INSERT INTO herald_leases (name, holder, expires_at, token) \
     VALUES ($1, $2, clock_timestamp() + $3 * INTERVAL '1 millisecond', 1) \
     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at, \
        token = CASE WHEN herald_leases.holder = excluded.holder AND herald_leases.expires_at > clock_timestamp() \
                     THEN herald_leases.token ELSE herald_leases.token + 1 END \
     WHERE herald_leases.holder = excluded.holder OR herald_leases.expires_at <= clock_timestamp() \
     RETURNING token";

/// Ends lease `$1` if `$2` holds it; the row (and its token) stays.
pub(super) const RELEASE_LEASE: &str = "UPDATE herald_leases SET expires_at = '-infinity' \
     WHERE name = $1 AND holder = $2 AND expires_at > clock_timestamp()";

// --- inbox ---

// --- checkpoints ---

/// A conditional checkpoint save on an existing row: `$1` name, `$2` expected position, `$3`
/// new position, `$4` token (NULL: no fencing, keep the stored one), `$5` now. A concurrent
/// save of the same row waits for the other transaction, then re-checks the condition against
/// its result (READ COMMITTED), so two saves from one position never both succeed.
pub(super) const UPDATE_CHECKPOINT_IF: &str = "UPDATE herald_checkpoints \
     SET position = $3, token = COALESCE($4, token), updated_at = $5 \
     WHERE name = $1 AND position = $2 AND ($4::BIGINT IS NULL OR token <= $4)";

/// The first save of a checkpoint (expected position 0): inserts nothing if a concurrent
/// transaction inserted it first.
pub(super) const INSERT_CHECKPOINT_IF: &str = "INSERT INTO herald_checkpoints (name, position, token, updated_at) \
     VALUES ($1, $2, COALESCE($3, 0), $4) ON CONFLICT (name) DO NOTHING";

// --- sagas ---

/// A new instance (version 1): inserts nothing if the instance exists (a conflict).
pub(super) const INSERT_SAGA: &str = "INSERT INTO herald_sagas \
     (name, id, version, step, compensating, done, data, updated_at, deadline) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (name, id) DO NOTHING";

/// A later version: updates only if the stored version is `$3 - 1`. A concurrent update makes
/// this wait, then re-check the version on the new row (READ COMMITTED), so of two saves of
/// one version exactly one updates.
pub(super) const UPDATE_SAGA: &str = "UPDATE herald_sagas SET version = $3, step = $4, compensating = $5, done = $6, \
     data = $7, updated_at = $8, deadline = $9 WHERE name = $1 AND id = $2 AND version = $3 - 1";

pub(super) const DUE_SAGAS: &str = "SELECT name, id, version, step, compensating, done, data, deadline \
     FROM herald_sagas WHERE name = $1 AND deadline IS NOT NULL AND NOT done AND deadline <= $2 \
     ORDER BY deadline LIMIT $3";

// --- broker ---

/// The position after the last message of any topic (positions are global).
pub(super) const END_POSITION: &str = "SELECT (COALESCE(MAX(position), 0) + 1)::BIGINT FROM herald_broker_messages";

/// The claim's first statement: locks the group's row, so claims of one group (in any process)
/// run one at a time while other groups' claims run in parallel.
pub(super) const LOCK_GROUP: &str =
    "SELECT next_position FROM herald_broker_groups WHERE topic = $1 AND grp = $2 FOR UPDATE";

/// Each key's oldest pending row of group (`$1`, `$2`) plus every row without a key: the only
/// rows the per-key rule can ever let through. One walk of the `(topic, grp, key, position)`
/// index. The key is carried along so each head's lookup is exact on either index.
macro_rules! heads {
    () => {
        "(SELECT key, MIN(position) AS position FROM herald_broker_pending \
           WHERE topic = $1 AND grp = $2 AND key <> '' GROUP BY key \
         UNION ALL \
         SELECT key, position FROM herald_broker_pending WHERE topic = $1 AND grp = $2 AND key = '') h"
    };
}

/// Without a lock: whether a claim could find anything (no row = no such group): new
/// messages, or a key's oldest pending message that is visible (`$3` = now). The visibility
/// check is a `LATERAL … LIMIT 1` per head for the same reason as in [`CLAIMABLE`].
pub(super) const CLAIM_PROBE: &str = concat!(
    "SELECT \
       EXISTS (SELECT 1 FROM herald_broker_messages m \
               WHERE m.topic = g.topic AND m.position >= g.next_position) \
    OR EXISTS (SELECT 1 FROM ",
    heads!(),
    " CROSS JOIN LATERAL (SELECT 1 FROM herald_broker_pending p \
                          WHERE p.topic = $1 AND p.grp = $2 AND p.key = h.key AND p.position = h.position \
                            AND p.visible_at <= $3 LIMIT 1) v) \
     FROM herald_broker_groups g WHERE g.topic = $1 AND g.grp = $2"
);

/// The per-key rule, as in the SQLite dialect: each key's oldest pending row plus every row
/// without a key, visible (`$3` = now), at most `$4`, in position order.
///
/// The heads are the outer side and each is looked up by primary key in a `LATERAL` subquery;
/// its `LIMIT 1` (the lookup finds at most one row anyway) keeps PostgreSQL from flattening it
/// into a plain join. Left free, the planner trusts the statistics of a young table (about
/// empty) and nests the heads' aggregate inside a scan of every pending row: quadratic in the
/// backlog (9 s per claim at 4,000 pending rows in the benchmark, before this shape).
pub(super) const CLAIMABLE: &str = concat!(
    "SELECT c.position, c.attempts, c.id, c.name, c.topic, c.key, c.payload, c.metadata FROM ",
    heads!(),
    " CROSS JOIN LATERAL (SELECT p.position, p.attempts, m.id, m.name, m.topic, m.key, m.payload, m.metadata \
                         FROM herald_broker_pending p \
                         JOIN herald_broker_messages m ON m.position = p.position \
                         WHERE p.topic = $1 AND p.grp = $2 AND p.key = h.key AND p.position = h.position \
                           AND p.visible_at <= $3 LIMIT 1) c \
     ORDER BY c.position LIMIT $4"
);

/// Leases the claimed rows `$3` until `$4`.
pub(super) const LEASE: &str = "UPDATE herald_broker_pending SET attempts = attempts + 1, visible_at = $4 \
     WHERE topic = $1 AND grp = $2 AND position = ANY($3)";

pub(super) const PENDING_ATTEMPTS: &str =
    "SELECT attempts FROM herald_broker_pending WHERE topic = $1 AND grp = $2 AND position = $3 FOR UPDATE";

/// Several acks in one statement, each guarded like [`ACK_IF_CURRENT`] (arrays of topics,
/// groups, positions and attempts); returns the index (1-based) of each ack that was current.
pub(super) const ACK_MANY_IF_CURRENT: &str = "DELETE FROM herald_broker_pending p \
     USING UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[]) WITH ORDINALITY AS a(topic, grp, position, attempts, i) \
     WHERE p.topic = a.topic AND p.grp = a.grp AND p.position = a.position AND p.attempts = a.attempts \
     RETURNING a.i";

/// Nack (not the last delivery) in one statement, guarded like [`ACK_IF_CURRENT`]; `$5` = when.
pub(super) const DELAY_IF_CURRENT: &str = "UPDATE herald_broker_pending SET visible_at = $5 \
     WHERE topic = $1 AND grp = $2 AND position = $3 AND attempts = $4";
