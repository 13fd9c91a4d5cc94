//! The SQL text of the SQLite dialect. The PostgreSQL dialect has the same constants with its
//! own syntax (`$1` placeholders, `= ANY($1)` instead of `json_each`); the Rust around them is
//! the same.

pub(super) use crate::sql::{
    ACK_IF_CURRENT, ADVANCE_GROUP, CHECKPOINT_AND_TOKEN, CREATE_GROUP, EARLIER_MESSAGES, GROUP_LAG, GROUP_NEXT,
    LAST_NEW_POSITION, LOAD_CHECKPOINT, LOAD_SAGA, LOAD_SNAPSHOT, MESSAGE_AT, PUBLISH, READ_ALL, RECORD_HANDLED,
    RELEASE_IF_CURRENT, SAGA_VERSION, SAVE_CHECKPOINT, SAVE_SNAPSHOT, SETTLE_DELETE, TAKE_NEW,
};

// --- event store ---

pub(super) const STREAM_VERSION: &str = "SELECT COALESCE(MAX(version), 0) FROM herald_events WHERE stream = ?1";

pub(super) const INSERT_EVENT: &str = "INSERT INTO herald_events (stream, version, id, name, payload, metadata, recorded_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

pub(super) const READ_STREAM: &str = "SELECT position, stream, version, id, name, payload, metadata FROM herald_events \
     WHERE stream = ?1 AND version >= ?2 ORDER BY version LIMIT ?3";

// --- outbox ---

pub(super) const ENQUEUE: &str = "INSERT INTO herald_outbox (id, name, topic, key, payload, metadata, enqueued_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

/// `?1` is a JSON array of sequences.
pub(super) const OUTBOX_REMOVE: &str = "DELETE FROM herald_outbox WHERE sequence IN (SELECT value FROM json_each(?1))";

/// [`OUTBOX_REMOVE`] for scheduled messages (the same sequences: the tables share them).
pub(super) const OUTBOX_REMOVE_SCHEDULED: &str =
    "DELETE FROM herald_outbox_scheduled WHERE sequence IN (SELECT value FROM json_each(?1))";

/// Now, in unix milliseconds of SQLite's clock (floored), as the leases read it.
macro_rules! now_millis {
    () => {
        "CAST(unixepoch('subsec') * 1000 AS INTEGER)"
    };
}

pub(super) const OUTBOX_PENDING: &str = crate::sql::outbox_pending!(now_millis!());
pub(super) const OUTBOX_STATS: &str = crate::sql::outbox_stats!(now_millis!());
pub(super) const NEXT_SCHEDULED: &str = crate::sql::next_scheduled!(now_millis!());

/// Reserves `?1` outbox sequences for scheduled messages: raises `herald_outbox`'s
/// AUTOINCREMENT counter (migration 0008 made sure its row exists) and returns the last one
/// reserved. The writer is held, so nobody takes a number in between.
pub(super) const RESERVE_SEQUENCES: &str =
    "UPDATE sqlite_sequence SET seq = seq + ?1 WHERE name = 'herald_outbox' RETURNING seq";

/// [`RESERVE_SEQUENCES`] when the counter's row is missing (deleted by hand): starts it above
/// every sequence either table holds.
pub(super) const RESERVE_FIRST_SEQUENCES: &str = "INSERT INTO sqlite_sequence (name, seq) \
     SELECT 'herald_outbox', MAX(COALESCE((SELECT MAX(sequence) FROM herald_outbox), 0), \
                                 COALESCE((SELECT MAX(sequence) FROM herald_outbox_scheduled), 0)) + ?1 \
     RETURNING seq";

/// A scheduled message: sequence `?1` (reserved), due at `?2` (unix milliseconds).
pub(super) const SCHEDULE: &str = "INSERT INTO herald_outbox_scheduled \
     (sequence, due_at, id, name, topic, key, payload, metadata, enqueued_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// Takes or renews lease `?1` for holder `?2`, `?3` ms of time to live. Returns the fencing
/// token only if `?2` holds the lease afterwards: kept on a renewal in time, one more on any
/// other grant. Times are unix milliseconds from SQLite's clock; every expression of the
/// `UPDATE` sees the row as it was.
pub(super) const ACQUIRE_LEASE: &str = "INSERT INTO herald_leases (name, holder, expires_at, token) \
     VALUES (?1, ?2, CAST(unixepoch('subsec') * 1000 AS INTEGER) + ?3, 1) \
     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at, \
        token = CASE WHEN herald_leases.holder = excluded.holder \
                      AND herald_leases.expires_at > CAST(unixepoch('subsec') * 1000 AS INTEGER) \
                     THEN herald_leases.token ELSE herald_leases.token + 1 END \
     WHERE herald_leases.holder = excluded.holder \
        OR herald_leases.expires_at <= CAST(unixepoch('subsec') * 1000 AS INTEGER) \
     RETURNING token";

/// Ends lease `?1` if `?2` holds it; the row (and its token) stays.
pub(super) const RELEASE_LEASE: &str = "UPDATE herald_leases SET expires_at = 0 \
     WHERE name = ?1 AND holder = ?2 AND expires_at > CAST(unixepoch('subsec') * 1000 AS INTEGER)";

// --- inbox ---

// --- checkpoints ---

/// A conditional checkpoint save, after the caller checked the condition (the writer is
/// serialised): `?1` name, `?2` position, `?3` token (NULL: keep the stored one), `?4` now.
pub(super) const SAVE_CHECKPOINT_IF: &str = "INSERT INTO herald_checkpoints (name, position, token, updated_at) \
     VALUES (?1, ?2, COALESCE(?3, 0), ?4) \
     ON CONFLICT (name) DO UPDATE SET position = excluded.position, \
        token = COALESCE(?3, herald_checkpoints.token), updated_at = excluded.updated_at";

// --- sagas ---

pub(super) const SAVE_SAGA: &str = "INSERT INTO herald_sagas \
     (name, id, version, step, compensating, done, data, updated_at, deadline) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
     ON CONFLICT (name, id) DO UPDATE SET version = excluded.version, step = excluded.step, \
     compensating = excluded.compensating, done = excluded.done, data = excluded.data, \
     updated_at = excluded.updated_at, deadline = excluded.deadline";

pub(super) const DUE_SAGAS: &str = "SELECT name, id, version, step, compensating, done, data, deadline \
     FROM herald_sagas WHERE name = ?1 AND deadline IS NOT NULL AND done = 0 AND deadline <= ?2 \
     ORDER BY deadline LIMIT ?3";

// --- broker ---

/// The position after the last message of any topic (positions are global).
pub(super) const END_POSITION: &str = "SELECT COALESCE(MAX(position), 0) + 1 FROM herald_broker_messages";

/// Without a write lock: whether a claim could find anything (`NULL` row = no such group):
/// new messages, or a key's oldest pending message that is visible (`?3` = now), whether to
/// claim or, past its last delivery, to dead-letter.
pub(super) const CLAIM_PROBE: &str = "SELECT \
       EXISTS (SELECT 1 FROM herald_broker_messages m \
               WHERE m.topic = g.topic AND m.position >= g.next_position) \
    OR EXISTS (SELECT 1 FROM herald_broker_pending p \
               WHERE p.topic = g.topic AND p.grp = g.grp AND p.visible_at <= ?3 \
                 AND p.position IN (SELECT MIN(position) FROM herald_broker_pending \
                                    WHERE topic = ?1 AND grp = ?2 AND key <> '' GROUP BY key \
                                    UNION ALL \
                                    SELECT position FROM herald_broker_pending \
                                    WHERE topic = ?1 AND grp = ?2 AND key = '')) \
     FROM herald_broker_groups g WHERE g.topic = ?1 AND g.grp = ?2";

/// The per-key rule: visible (`?3` = now) and no older unsettled message of the same non-empty
/// key; at most `?4`. The caller leases those with deliveries left and dead-letters the rest
/// (a message past its last delivery is always its key's oldest, so it is found here too).
///
/// The candidates are each key's oldest pending row (`MIN(position) … GROUP BY key`, one walk
/// of the `(topic, grp, key, position)` index) plus every row without a key. A correlated
/// `NOT EXISTS` per pending row would probe the index once per row of the backlog on every
/// claim, and `LIMIT` cannot stop that scan early when few keys are claimable. `CROSS JOIN`
/// fixes the join order (heads outside, primary-key lookups inside): left free, SQLite 3.51
/// walks every pending row in position order to avoid the sort and re-scans the heads for
/// each, which is quadratic in the backlog.
pub(super) const CLAIMABLE: &str = "SELECT p.position, p.attempts, m.id, m.name, m.topic, m.key, m.payload, m.metadata \
     FROM (SELECT MIN(position) AS position FROM herald_broker_pending \
             WHERE topic = ?1 AND grp = ?2 AND key <> '' GROUP BY key \
           UNION ALL \
           SELECT position FROM herald_broker_pending WHERE topic = ?1 AND grp = ?2 AND key = '') h \
     CROSS JOIN herald_broker_pending p ON p.topic = ?1 AND p.grp = ?2 AND p.position = h.position \
     CROSS JOIN herald_broker_messages m ON m.position = p.position \
     WHERE p.visible_at <= ?3 \
     ORDER BY p.position LIMIT ?4";

/// Leases a claimed row until `?4`.
pub(super) const LEASE: &str = "UPDATE herald_broker_pending SET attempts = attempts + 1, visible_at = ?4 \
     WHERE topic = ?1 AND grp = ?2 AND position = ?3";

pub(super) const PENDING_ATTEMPTS: &str =
    "SELECT attempts FROM herald_broker_pending WHERE topic = ?1 AND grp = ?2 AND position = ?3";

/// Nack (not the last delivery) in one statement, guarded like [`ACK_IF_CURRENT`]; `?5` = when.
pub(super) const DELAY_IF_CURRENT: &str = "UPDATE herald_broker_pending SET visible_at = ?5 \
     WHERE topic = ?1 AND grp = ?2 AND position = ?3 AND attempts = ?4";
