-- The global log is assigned after commit by a sequencer (docs/adr/0003-postgres-global-log.md,
-- "Superseded: a sequencer after commit"). Appending transactions insert events with `position`
-- NULL and take no lock; a short sequencer transaction, serialised by an advisory lock, later
-- gives every committed unsequenced row the next positions, in `seq` order. Existing rows keep
-- their positions.

-- Positions are no longer taken from a sequence at insert time.
ALTER TABLE herald_events DROP CONSTRAINT herald_events_pkey;
ALTER TABLE herald_events ALTER COLUMN position DROP DEFAULT;
ALTER TABLE herald_events ALTER COLUMN position DROP NOT NULL;
DROP SEQUENCE IF EXISTS herald_events_position_seq;

-- Insertion order, the storage key: a later version of a stream is always inserted after the
-- earlier one committed (or in the same transaction, later), so sequencing in `seq` order keeps
-- each stream's versions in position order. Existing rows are numbered in whatever order the
-- table is scanned; they are already sequenced, so that order never matters.
ALTER TABLE herald_events ADD COLUMN seq BIGSERIAL PRIMARY KEY;

-- The global log: unique where assigned (NULLs are distinct), read by `position > $1 ORDER BY
-- position`.
CREATE UNIQUE INDEX herald_events_position ON herald_events (position);

-- The sequencer's queue: committed rows still waiting for a position, oldest first. Usually
-- empty, so probing it is cheap.
CREATE INDEX herald_events_unsequenced ON herald_events (seq) WHERE position IS NULL;

-- One sequencer batch, in one call (one round trip): takes the sequencer's advisory lock
-- (`lock_class`, `lock_key`), numbers the (at most `batch`) oldest committed unsequenced rows
-- from the head of the log on, in `seq` order, announces them on `channel` if there were any,
-- and returns how many. Called outside a transaction (the lock is released at its implicit
-- commit) or inside a short one.
--
-- VOLATILE on purpose: a volatile function takes a fresh snapshot for each statement it runs
-- (in READ COMMITTED), so the UPDATE sees every batch committed before the lock was granted;
-- the snapshot of the calling SELECT, taken before the lock, is not used. Under REPEATABLE READ
-- or SERIALIZABLE the whole transaction has one snapshot, taken before the lock: refused.
CREATE FUNCTION herald_sequence_events(lock_class INT, lock_key INT, batch BIGINT, channel TEXT, payload TEXT)
RETURNS BIGINT LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    numbered BIGINT;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'herald_sequence_events runs in READ COMMITTED only'
            USING ERRCODE = 'invalid_transaction_state';
    END IF;
    PERFORM pg_advisory_xact_lock(lock_class, lock_key);
    UPDATE herald_events e SET position = b.head + u.rn
    FROM (SELECT COALESCE(MAX(position), 0) AS head FROM herald_events) b,
         (SELECT seq, row_number() OVER (ORDER BY seq) AS rn
          FROM (SELECT seq FROM herald_events WHERE position IS NULL ORDER BY seq LIMIT batch) q) u
    WHERE e.seq = u.seq;
    GET DIAGNOSTICS numbered = ROW_COUNT;
    IF numbered > 0 THEN
        PERFORM pg_notify(channel, payload);
    END IF;
    RETURN numbered;
END
$$;
