-- The outbox relay lease: which relay may publish the outbox now (one at a time, so several
-- relays can run for availability without publishing out of order). Times are the server's
-- clock; a holder that stops renewing loses the lease at `expires_at`.
CREATE TABLE herald_outbox_lease (
    name       TEXT        PRIMARY KEY,
    holder     TEXT        NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
