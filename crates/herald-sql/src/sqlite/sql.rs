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

pub(super) const OUTBOX_PENDING: &str = "SELECT sequence, id, name, topic, key, payload, metadata FROM herald_outbox \
     ORDER BY sequence LIMIT ?1";

/// `?1` is a JSON array of sequences.
pub(super) const OUTBOX_REMOVE: &str = "DELETE FROM herald_outbox WHERE sequence IN (SELECT value FROM json_each(?1))";

// --- inbox ---

pub(super) const RECORD_HANDLED: &str = "INSERT INTO herald_inbox (handler, message_id, handled_at) VALUES (?1, ?2, ?3) \
     ON CONFLICT (handler, message_id) DO NOTHING";

// --- checkpoints ---

pub(super) const SAVE_CHECKPOINT: &str = "INSERT INTO herald_checkpoints (name, position, updated_at) VALUES (?1, ?2, ?3) \
     ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at";

pub(super) const LOAD_CHECKPOINT: &str = "SELECT position FROM herald_checkpoints WHERE name = ?1";

// --- sagas ---

pub(super) const SAGA_VERSION: &str = "SELECT version FROM herald_sagas WHERE name = ?1 AND id = ?2";

pub(super) const SAVE_SAGA: &str = "INSERT INTO herald_sagas (name, id, version, step, compensating, done, data, updated_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
     ON CONFLICT (name, id) DO UPDATE SET version = excluded.version, step = excluded.step, \
     compensating = excluded.compensating, done = excluded.done, data = excluded.data, \
     updated_at = excluded.updated_at";

pub(super) const LOAD_SAGA: &str =
    "SELECT name, id, version, step, compensating, done, data FROM herald_sagas WHERE name = ?1 AND id = ?2";

// --- broker ---

/// Publishing an id twice to one topic stores it once.
pub(super) const PUBLISH: &str = "INSERT INTO herald_broker_messages (topic, id, name, key, payload, metadata, published_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (topic, id) DO NOTHING";

/// The position after the last message of any topic (positions are global).
pub(super) const END_POSITION: &str = "SELECT COALESCE(MAX(position), 0) + 1 FROM herald_broker_messages";

pub(super) const CREATE_GROUP: &str = "INSERT INTO herald_broker_groups (topic, grp, next_position, created_at) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (topic, grp) DO NOTHING";

pub(super) const GROUP_NEXT: &str = "SELECT next_position FROM herald_broker_groups WHERE topic = ?1 AND grp = ?2";

/// Without a write lock: whether a claim could find anything (`NULL` row = no such group).
/// `?3` = now, `?4` = max deliveries.
pub(super) const CLAIM_PROBE: &str = "SELECT \
       EXISTS (SELECT 1 FROM herald_broker_messages m \
               WHERE m.topic = g.topic AND m.position >= g.next_position) \
    OR EXISTS (SELECT 1 FROM herald_broker_pending p \
               WHERE p.topic = g.topic AND p.grp = g.grp AND p.visible_at <= ?3 \
                 AND (p.attempts >= ?4 OR p.key = '' OR NOT EXISTS ( \
                      SELECT 1 FROM herald_broker_pending o \
                      WHERE o.topic = p.topic AND o.grp = p.grp AND o.key = p.key \
                        AND o.position < p.position))) \
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

/// Pending rows whose last allowed delivery expired. `?3` = max deliveries, `?4` = now.
pub(super) const EXPIRED: &str = "SELECT p.position, p.attempts, m.id, m.name, m.topic, m.key, m.payload, m.metadata \
     FROM herald_broker_pending p JOIN herald_broker_messages m ON m.position = p.position \
     WHERE p.topic = ?1 AND p.grp = ?2 AND p.attempts >= ?3 AND p.visible_at <= ?4 \
     ORDER BY p.position";

/// The per-key rule: visible, and no older unsettled message of the same non-empty key.
/// `?3` = now, `?4` = max deliveries, `?5` = how many.
pub(super) const CLAIMABLE: &str = "SELECT p.position, p.attempts, m.id, m.name, m.topic, m.key, m.payload, m.metadata \
     FROM herald_broker_pending p JOIN herald_broker_messages m ON m.position = p.position \
     WHERE p.topic = ?1 AND p.grp = ?2 AND p.visible_at <= ?3 AND p.attempts < ?4 \
       AND (p.key = '' OR NOT EXISTS ( \
            SELECT 1 FROM herald_broker_pending o \
            WHERE o.topic = p.topic AND o.grp = p.grp AND o.key = p.key AND o.position < p.position)) \
     ORDER BY p.position LIMIT ?5";

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
