-- The outbox relay lease: which relay may publish the outbox now (one at a time, so several
-- relays can run for availability without publishing out of order). `expires_at` is in unix
-- milliseconds; a holder that stops renewing loses the lease then.
CREATE TABLE herald_outbox_lease (
    name       TEXT    PRIMARY KEY,
    holder     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
