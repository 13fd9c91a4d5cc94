//! The SQL text of the SQLite dialect. The PostgreSQL dialect has the same constants with its
//! own syntax (`$1` placeholders, `= ANY($1)` instead of `json_each`); the Rust around them is
//! the same.

// --- event store ---

pub(super) const STREAM_VERSION: &str = "SELECT COALESCE(MAX(version), 0) FROM herald_events WHERE stream = ?1";

pub(super) const INSERT_EVENT: &str = "INSERT INTO herald_events (stream, version, id, name, payload, metadata, recorded_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

pub(super) const READ_STREAM: &str = "SELECT position, stream, version, id, name, payload, metadata FROM herald_events \
     WHERE stream = ?1 AND version >= ?2 ORDER BY version LIMIT ?3";

pub(super) const READ_ALL: &str = "SELECT position, stream, version, id, name, payload, metadata FROM herald_events \
     WHERE position > ?1 ORDER BY position LIMIT ?2";

pub(super) const SAVE_SNAPSHOT: &str = "INSERT INTO herald_snapshots (stream, version, payload, saved_at) VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT (stream) DO UPDATE SET version = excluded.version, payload = excluded.payload, \
     saved_at = excluded.saved_at";

pub(super) const LOAD_SNAPSHOT: &str = "SELECT stream, version, payload FROM herald_snapshots WHERE stream = ?1";

// --- outbox ---

pub(super) const ENQUEUE: &str = "INSERT INTO herald_outbox (id, name, topic, key, payload, metadata, enqueued_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

/// The outbox's size and its oldest `enqueued_at` (milliseconds), for the relay's gauges.
pub(super) const OUTBOX_STATS: &str = "SELECT count(*), min(enqueued_at) FROM herald_outbox";

pub(super) const OUTBOX_PENDING: &str = "SELECT sequence, id, name, topic, key, payload, metadata FROM herald_outbox \
     ORDER BY sequence LIMIT ?1";

/// `?1` is a JSON array of sequences.
pub(super) const OUTBOX_REMOVE: &str = "DELETE FROM herald_outbox WHERE sequence IN (SELECT value FROM json_each(?1))";

/// Takes or renews the relay lease: `?1` holder, `?2` time to live in ms. Returns a row only if
/// `?1` holds the lease afterwards. Times are unix milliseconds from SQLite's clock.
pub(super) const OUTBOX_LEASE: &str = "INSERT INTO herald_outbox_lease (name, holder, expires_at) \
     VALUES ('relay', ?1, CAST(unixepoch('subsec') * 1000 AS INTEGER) + ?2) \
     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
     WHERE herald_outbox_lease.holder = excluded.holder \
        OR herald_outbox_lease.expires_at <= CAST(unixepoch('subsec') * 1000 AS INTEGER) \
     RETURNING holder";

pub(super) const OUTBOX_LEASE_RELEASE: &str = "DELETE FROM herald_outbox_lease WHERE name = 'relay' AND holder = ?1";

// --- inbox ---

pub(super) const RECORD_HANDLED: &str = "INSERT INTO herald_inbox (handler, message_id, handled_at) VALUES (?1, ?2, ?3) \
     ON CONFLICT (handler, message_id) DO NOTHING";

// --- checkpoints ---

pub(super) const SAVE_CHECKPOINT: &str = "INSERT INTO herald_checkpoints (name, position, updated_at) VALUES (?1, ?2, ?3) \
     ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at";

pub(super) const LOAD_CHECKPOINT: &str = "SELECT position FROM herald_checkpoints WHERE name = ?1";

// --- sagas ---

pub(super) const SAGA_VERSION: &str = "SELECT version FROM herald_sagas WHERE name = ?1 AND id = ?2";

pub(super) const SAVE_SAGA: &str = "INSERT INTO herald_sagas \
     (name, id, version, step, compensating, done, data, updated_at, deadline) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
     ON CONFLICT (name, id) DO UPDATE SET version = excluded.version, step = excluded.step, \
     compensating = excluded.compensating, done = excluded.done, data = excluded.data, \
     updated_at = excluded.updated_at, deadline = excluded.deadline";

pub(super) const LOAD_SAGA: &str = "SELECT name, id, version, step, compensating, done, data, deadline \
     FROM herald_sagas WHERE name = ?1 AND id = ?2";

pub(super) const DUE_SAGAS: &str = "SELECT name, id, version, step, compensating, done, data, deadline \
     FROM herald_sagas WHERE name = ?1 AND deadline IS NOT NULL AND done = 0 AND deadline <= ?2 \
     ORDER BY deadline LIMIT ?3";

// --- broker ---

/// Publishing an id twice to one topic stores it once.
pub(super) const PUBLISH: &str = "INSERT INTO herald_broker_messages (topic, id, name, key, payload, metadata, published_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (topic, id) DO NOTHING";

/// The position after the last message of any topic (positions are global).
pub(super) const END_POSITION: &str = "SELECT COALESCE(MAX(position), 0) + 1 FROM herald_broker_messages";

pub(super) const CREATE_GROUP: &str = "INSERT INTO herald_broker_groups (topic, grp, next_position, created_at) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (topic, grp) DO NOTHING";

pub(super) const GROUP_NEXT: &str = "SELECT next_position FROM herald_broker_groups WHERE topic = ?1 AND grp = ?2";

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

/// The last of the next (at most `?3`) positions of the topic from `?2` on.
pub(super) const LAST_NEW_POSITION: &str = "SELECT MAX(position) FROM (SELECT position FROM herald_broker_messages \
     WHERE topic = ?1 AND position >= ?2 ORDER BY position LIMIT ?3)";

/// Takes positions `?3..=?4` of topic `?1` into group `?2`'s pending set.
pub(super) const TAKE_NEW: &str = "INSERT INTO herald_broker_pending (topic, grp, position, key, attempts, visible_at) \
     SELECT topic, ?2, position, key, 0, 0 FROM herald_broker_messages \
     WHERE topic = ?1 AND position >= ?3 AND position <= ?4";

pub(super) const ADVANCE_GROUP: &str =
    "UPDATE herald_broker_groups SET next_position = ?3 WHERE topic = ?1 AND grp = ?2";

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

pub(super) const SETTLE_DELETE: &str =
    "DELETE FROM herald_broker_pending WHERE topic = ?1 AND grp = ?2 AND position = ?3";

pub(super) const MESSAGE_AT: &str =
    "SELECT id, name, topic, key, payload, metadata FROM herald_broker_messages WHERE position = ?1";

/// Ack in one statement: deletes the row only if delivery `?4` is still the current one.
pub(super) const ACK_IF_CURRENT: &str =
    "DELETE FROM herald_broker_pending WHERE topic = ?1 AND grp = ?2 AND position = ?3 AND attempts = ?4";

/// Nack (not the last delivery) in one statement, guarded like [`ACK_IF_CURRENT`]; `?5` = when.
pub(super) const DELAY_IF_CURRENT: &str = "UPDATE herald_broker_pending SET visible_at = ?5 \
     WHERE topic = ?1 AND grp = ?2 AND position = ?3 AND attempts = ?4";

/// Undoes a claim that never reached a consumer, if delivery `?4` is still the current one.
pub(super) const RELEASE_IF_CURRENT: &str = "UPDATE herald_broker_pending SET attempts = attempts - 1, visible_at = 0 \
     WHERE topic = ?1 AND grp = ?2 AND position = ?3 AND attempts = ?4";

/// A group's consumer lag: messages of the topic not yet taken into its pending set, plus its
/// pending (unsettled) ones. No row when the group does not exist.
pub(super) const GROUP_LAG: &str = "SELECT \
     (SELECT count(*) FROM herald_broker_messages m WHERE m.topic = ?1 AND m.position >= g.next_position) \
     + (SELECT count(*) FROM herald_broker_pending p WHERE p.topic = ?1 AND p.grp = ?2) \
     FROM herald_broker_groups g WHERE g.topic = ?1 AND g.grp = ?2";
