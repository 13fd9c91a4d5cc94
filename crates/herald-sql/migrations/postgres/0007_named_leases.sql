-- Named leases with fencing tokens (ADR 0015): the outbox relay's lease becomes one row of
-- `herald_leases` (`herald:outbox-relay`), beside one per projection and saga timeout scan.
-- `token` grows every time a lease changes hands; a release only ends the lease
-- (`expires_at` in the past), so the row and its token stay. Times are the server's clock.
-- Relays of an older Herald still running during an upgrade fail to find their table and
-- publish nothing (they retry), so two relays never publish at once.
ALTER TABLE herald_outbox_lease RENAME TO herald_leases;
ALTER TABLE herald_leases ADD COLUMN token BIGINT NOT NULL DEFAULT 1;
UPDATE herald_leases SET name = 'herald:outbox-relay' WHERE name = 'relay';

-- The fencing token of the lease under which a checkpoint was last saved (0: none): a
-- conditional save with an older token is refused.
ALTER TABLE herald_checkpoints ADD COLUMN token BIGINT NOT NULL DEFAULT 0;
