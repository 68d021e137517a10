-- Transient failures (throttling, 5xx answers, connection errors, timeouts) do not use up a
-- job's attempts; they are retried until they have lasted the transient budget. A job counts
-- the transient failures in a row and remembers when the first of them happened (moved later by
-- the time the job then waited past its due time); any other outcome of an attempt resets both.
ALTER TABLE jobs ADD COLUMN transient_failures BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN transient_since BIGINT;
