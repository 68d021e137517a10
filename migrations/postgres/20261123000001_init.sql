-- Instances corral manages. Rows are never deleted: a terminated instance keeps its record.
CREATE TABLE instances (
    id TEXT PRIMARY KEY NOT NULL,
    cloud_id TEXT UNIQUE,
    name TEXT NOT NULL,
    namespace TEXT NOT NULL,
    region TEXT NOT NULL,
    ami TEXT NOT NULL,
    instance_type TEXT NOT NULL,
    storage_gb BIGINT NOT NULL,
    state TEXT NOT NULL,
    public_ip TEXT,
    private_ip TEXT,
    key_name TEXT,
    -- JSON object of the user's tags.
    tags TEXT NOT NULL DEFAULT '{}',
    backend TEXT NOT NULL,
    -- Position within the launch call of the job that created the instance.
    launch_index BIGINT NOT NULL,
    created_by_job TEXT NOT NULL,
    -- The queued or running job that currently owns the instance, if any.
    active_job_id TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX instances_namespace ON instances (namespace, id);
CREATE INDEX instances_state ON instances (state, id);
CREATE INDEX instances_created_by_job ON instances (created_by_job);

-- The durable job queue. Times are Unix milliseconds (UTC) in every table.
CREATE TABLE jobs (
    id TEXT PRIMARY KEY NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    -- JSON arguments of the job, written once at enqueue time.
    payload TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    max_attempts BIGINT NOT NULL,
    run_at BIGINT NOT NULL,
    locked_by TEXT,
    lease_expires_at BIGINT,
    error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT
);
CREATE INDEX jobs_due ON jobs (status, run_at);

-- Which instances each job touches.
CREATE TABLE job_instances (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    instance_id TEXT NOT NULL REFERENCES instances (id),
    PRIMARY KEY (job_id, instance_id)
);
CREATE INDEX job_instances_instance ON job_instances (instance_id);
