-- What each job did, step by step, and every attempt's error.
CREATE TABLE job_events (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL,
    attempt BIGINT NOT NULL,
    -- step | error | outcome
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

-- Idempotency-Key header of mutating requests: the same key and body return the same job.
CREATE TABLE idempotency_keys (
    key TEXT PRIMARY KEY NOT NULL,
    fingerprint TEXT NOT NULL,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    created_at BIGINT NOT NULL
);

-- Changes the reconciler found that corral did not make.
CREATE TABLE drift_events (
    id TEXT PRIMARY KEY NOT NULL,
    instance_id TEXT NOT NULL REFERENCES instances (id),
    at BIGINT NOT NULL,
    field TEXT NOT NULL,
    old_value TEXT,
    new_value TEXT
);
CREATE INDEX drift_events_instance ON drift_events (instance_id, at);

-- Instances tagged by corral that corral has no record of, as last seen by the reconciler.
CREATE TABLE orphans (
    cloud_id TEXT PRIMARY KEY NOT NULL,
    region TEXT NOT NULL,
    state TEXT NOT NULL,
    ami TEXT,
    instance_type TEXT,
    public_ip TEXT,
    private_ip TEXT,
    -- JSON object of all the instance's tags.
    tags TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL
);
