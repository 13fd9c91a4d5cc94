-- Scheduled outbox messages (`Transaction::schedule`, docs/adr/0021-scheduled-messages.md): a
-- table of their own beside `herald_outbox`, so the immediate path (insert, the relay's walk of
-- `herald_outbox` in sequence order, its deletes) neither updates a due-time index nor steps
-- over rows that are not due yet. The relay lists both tables' due rows in one statement.
--
-- `sequence` is drawn from `herald_outbox`'s own sequence, so the outbox order covers both
-- tables and `outbox_remove` needs no second key. `due_at` is in unix milliseconds of the
-- server's clock (`clock_timestamp()`), so relays on machines with skewed clocks agree.
CREATE TABLE herald_outbox_scheduled (
    sequence    BIGINT PRIMARY KEY DEFAULT nextval('herald_outbox_sequence_seq'),
    due_at      BIGINT NOT NULL,
    id          TEXT   NOT NULL,
    name        TEXT   NOT NULL,
    topic       TEXT   NOT NULL,
    key         TEXT   NOT NULL,
    payload     BYTEA  NOT NULL,
    metadata    TEXT   NOT NULL,
    enqueued_at BIGINT NOT NULL
);

-- The due scan (`due_at <= now`) and the next due time (`MIN(due_at)`).
CREATE INDEX herald_outbox_scheduled_due ON herald_outbox_scheduled (due_at, sequence);
