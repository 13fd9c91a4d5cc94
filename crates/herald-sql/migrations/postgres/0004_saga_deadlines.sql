-- When the current step of a saga times out (unix milliseconds; NULL: no deadline). The index
-- serves the orchestrator's "which sagas are overdue" query.
ALTER TABLE herald_sagas ADD COLUMN deadline BIGINT;
CREATE INDEX herald_sagas_due ON herald_sagas (name, deadline) WHERE deadline IS NOT NULL AND NOT done;
