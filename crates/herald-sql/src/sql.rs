//! The statements both dialects run as written here, in PostgreSQL's placeholder style. SQLite
//! reads `$1`, `$2`… as named parameters numbered in order of first appearance, which is their
//! number when each first appears in ascending order (checked below), so the same text binds
//! the same way on both. Statements whose text differs live in `sqlite/sql.rs` and
//! `postgres/sql.rs`, which re-export these.

/// The global log: only sequenced rows (`position > $1` excludes NULL).
pub(crate) const READ_ALL: &str = "SELECT position, stream, version, id, name, payload, metadata FROM herald_events \
     WHERE position > $1 ORDER BY position LIMIT $2";

pub(crate) const SAVE_SNAPSHOT: &str = "INSERT INTO herald_snapshots (stream, version, payload, saved_at) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (stream) DO UPDATE SET version = excluded.version, payload = excluded.payload, \
     saved_at = excluded.saved_at";

pub(crate) const LOAD_SNAPSHOT: &str = "SELECT stream, version, payload FROM herald_snapshots WHERE stream = $1";

/// The due outbox, oldest first: up to `$1` rows of `herald_outbox` (its primary key, in
/// sequence order, as before scheduled messages existed) and of `herald_outbox_scheduled` due
/// by `$now` (the dialect's clock in unix milliseconds, floored: the due-time index), merged in
/// sequence order (the two tables share one sequence). Not-due scheduled rows are never walked.
///
/// The due condition is a two-sided range (`due_at >= 0`: stored due times are never negative)
/// on purpose: on a table PostgreSQL has no statistics for yet, it estimates a one-sided
/// inequality to match a third of the rows and scans the whole table, but a range a 200th,
/// and takes the index.
macro_rules! outbox_pending {
    ($($now:tt)+) => {
        concat!(
            "SELECT sequence, id, name, topic, key, payload, metadata FROM \
               (SELECT sequence, id, name, topic, key, payload, metadata FROM herald_outbox \
                ORDER BY sequence LIMIT $1) AS o \
             UNION ALL \
             SELECT sequence, id, name, topic, key, payload, metadata FROM \
               (SELECT sequence, id, name, topic, key, payload, metadata FROM herald_outbox_scheduled \
                WHERE due_at >= 0 AND due_at <= ",
            $($now)+,
            " ORDER BY sequence LIMIT $1) AS s \
             ORDER BY sequence LIMIT $1"
        )
    };
}
pub(crate) use outbox_pending;

/// The due outbox's size and its oldest time (milliseconds: `enqueued_at`, or `due_at` for a
/// scheduled message, when it joined the backlog), for the relay's gauges; `$now` as in
/// [`outbox_pending!`].
macro_rules! outbox_stats {
    ($($now:tt)+) => {
        concat!(
            "SELECT count(*), min(t) FROM \
               (SELECT enqueued_at AS t FROM herald_outbox \
                UNION ALL \
                SELECT due_at FROM herald_outbox_scheduled WHERE due_at >= 0 AND due_at <= ",
            $($now)+,
            ") AS w"
        )
    };
}
pub(crate) use outbox_stats;

/// Milliseconds until the earliest scheduled message falls due (negative: already due; NULL:
/// none), by `$now` as in [`outbox_pending!`]: the first entry of the due-time index.
macro_rules! next_scheduled {
    ($($now:tt)+) => {
        concat!("SELECT MIN(due_at) - ", $($now)+, " FROM herald_outbox_scheduled")
    };
}
pub(crate) use next_scheduled;

/// On PostgreSQL a concurrent uncommitted insert of the same pair makes this wait for that
/// transaction: if it commits, this inserts nothing (`false`); if it rolls back, this inserts.
pub(crate) const RECORD_HANDLED: &str = "INSERT INTO herald_inbox (handler, message_id, handled_at) VALUES ($1, $2, $3) \
     ON CONFLICT (handler, message_id) DO NOTHING";

pub(crate) const SAVE_CHECKPOINT: &str = "INSERT INTO herald_checkpoints (name, position, updated_at) VALUES ($1, $2, $3) \
     ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at";

pub(crate) const LOAD_CHECKPOINT: &str = "SELECT position FROM herald_checkpoints WHERE name = $1";

/// A checkpoint's position and fencing token, for a conditional save.
pub(crate) const CHECKPOINT_AND_TOKEN: &str = "SELECT position, token FROM herald_checkpoints WHERE name = $1";

pub(crate) const SAGA_VERSION: &str = "SELECT version FROM herald_sagas WHERE name = $1 AND id = $2";

pub(crate) const LOAD_SAGA: &str = "SELECT name, id, version, step, compensating, done, data, deadline \
     FROM herald_sagas WHERE name = $1 AND id = $2";

/// Publishing an id twice to one topic stores it once.
pub(crate) const PUBLISH: &str = "INSERT INTO herald_broker_messages (topic, id, name, key, payload, metadata, published_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (topic, id) DO NOTHING";

pub(crate) const CREATE_GROUP: &str = "INSERT INTO herald_broker_groups (topic, grp, next_position, created_at) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (topic, grp) DO NOTHING";

/// How many messages of topic `$1` lie before position `$2`, counting at most `$3` (the index
/// on `(topic, position)` answers it; the limit keeps it cheap on a long topic).
pub(crate) const EARLIER_MESSAGES: &str = "SELECT count(*) FROM (SELECT 1 FROM herald_broker_messages \
     WHERE topic = $1 AND position < $2 LIMIT $3) AS e";

pub(crate) const GROUP_NEXT: &str = "SELECT next_position FROM herald_broker_groups WHERE topic = $1 AND grp = $2";

pub(crate) const SETTLE_DELETE: &str =
    "DELETE FROM herald_broker_pending WHERE topic = $1 AND grp = $2 AND position = $3";

pub(crate) const MESSAGE_AT: &str =
    "SELECT id, name, topic, key, payload, metadata FROM herald_broker_messages WHERE position = $1";

/// Ack in one statement: deletes the row only if delivery `$4` is still the current one.
pub(crate) const ACK_IF_CURRENT: &str =
    "DELETE FROM herald_broker_pending WHERE topic = $1 AND grp = $2 AND position = $3 AND attempts = $4";

/// Undoes a claim that never reached a consumer, if delivery `$4` is still the current one.
pub(crate) const RELEASE_IF_CURRENT: &str = "UPDATE herald_broker_pending SET attempts = attempts - 1, visible_at = 0 \
     WHERE topic = $1 AND grp = $2 AND position = $3 AND attempts = $4";

/// A group's consumer lag: messages of the topic not yet taken into its pending set, plus its
/// pending (unsettled) ones. No row when the group does not exist.
pub(crate) const GROUP_LAG: &str = "SELECT \
     (SELECT count(*) FROM herald_broker_messages m WHERE m.topic = $1 AND m.position >= g.next_position) \
     + (SELECT count(*) FROM herald_broker_pending p WHERE p.topic = $1 AND p.grp = $2) \
     FROM herald_broker_groups g WHERE g.topic = $1 AND g.grp = $2";

/// The last of the next (at most `$3`) positions of the topic from `$2` on.
pub(crate) const LAST_NEW_POSITION: &str = "SELECT MAX(position) FROM (SELECT position FROM herald_broker_messages \
     WHERE topic = $1 AND position >= $2 ORDER BY position LIMIT $3) AS n";

/// Takes positions `$3..=$4` of topic `$2` into group `$1`'s pending set.
pub(crate) const TAKE_NEW: &str = "INSERT INTO herald_broker_pending (topic, grp, position, key, attempts, visible_at) \
     SELECT topic, $1, position, key, 0, 0 FROM herald_broker_messages \
     WHERE topic = $2 AND position >= $3 AND position <= $4";

/// Group `$3` of topic `$2` takes new messages from position `$1` on.
pub(crate) const ADVANCE_GROUP: &str =
    "UPDATE herald_broker_groups SET next_position = $1 WHERE topic = $2 AND grp = $3";

/// Every shared statement, for the check below.
#[cfg(test)]
const ALL: &[&str] = &[
    crate::dead_letters::INSERT,
    crate::dead_letters::GET,
    crate::dead_letters::LIST,
    crate::dead_letters::COUNT,
    crate::dead_letters::RESOLVE,
    crate::dead_letters::STATUS,
    crate::parking::HEAD,
    crate::parking::PARK,
    crate::parking::ADVANCE,
    crate::parking::FIRST_MESSAGE,
    crate::parking::PARKED,
    TAKE_NEW,
    ADVANCE_GROUP,
    READ_ALL,
    SAVE_SNAPSHOT,
    LOAD_SNAPSHOT,
    CHECKPOINT_AND_TOKEN,
    RECORD_HANDLED,
    SAVE_CHECKPOINT,
    LOAD_CHECKPOINT,
    SAGA_VERSION,
    LOAD_SAGA,
    PUBLISH,
    CREATE_GROUP,
    EARLIER_MESSAGES,
    GROUP_NEXT,
    SETTLE_DELETE,
    MESSAGE_AT,
    ACK_IF_CURRENT,
    RELEASE_IF_CURRENT,
    GROUP_LAG,
    LAST_NEW_POSITION,
];

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders_first_appear_in_ascending_order() {
        for statement in super::ALL {
            let mut seen: Vec<u32> = Vec::new();
            let mut rest = *statement;
            while let Some(at) = rest.find('$') {
                rest = &rest[at + 1..];
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                let n: u32 = digits.parse().unwrap_or_else(|_| panic!("a `$` without a number in {statement}"));
                if !seen.contains(&n) {
                    seen.push(n);
                }
            }
            let expected: Vec<u32> = (1..=u32::try_from(seen.len()).unwrap()).collect();
            assert_eq!(seen, expected, "placeholders out of order in {statement}");
        }
    }
}
