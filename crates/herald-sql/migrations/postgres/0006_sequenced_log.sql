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
