-- People and the credentials they act with.
CREATE TABLE users (
    id TEXT PRIMARY KEY NOT NULL,
    username TEXT NOT NULL UNIQUE,
    -- Argon2id, PHC string format.
    password_hash TEXT NOT NULL,
    is_admin BOOLEAN NOT NULL DEFAULT FALSE,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

-- Namespaces group instances; quotas bound what a namespace may hold (NULL: no limit).
CREATE TABLE namespaces (
    name TEXT PRIMARY KEY NOT NULL,
    max_instances INTEGER,
    max_vcpus INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
INSERT INTO namespaces (name, created_at, updated_at) VALUES ('default', 0, 0);
-- Namespaces that instances already name become real ones, without quotas.
INSERT INTO namespaces (name, created_at, updated_at)
    SELECT DISTINCT namespace, 0, 0 FROM instances WHERE namespace <> 'default';

-- A user's role in a namespace: operator (create and change instances) or viewer (read).
CREATE TABLE role_bindings (
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    namespace TEXT NOT NULL REFERENCES namespaces (name),
    role TEXT NOT NULL,
    PRIMARY KEY (user_id, namespace)
);

-- API keys act as their user. Only a SHA-256 of the key is kept; the prefix identifies it.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL UNIQUE,
    key_hash TEXT NOT NULL,
    expires_at INTEGER,
    revoked_at INTEGER,
    created_at INTEGER NOT NULL
);
CREATE INDEX api_keys_user ON api_keys (user_id, id);

-- Values corral generates once and every process shares (the JWT signing key).
CREATE TABLE settings (
    name TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

-- Who did what: every mutating request and every change corral observed.
CREATE TABLE audit_events (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    -- A username, an API key prefix, or 'system'.
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    namespace TEXT,
    -- JSON, when the event changes a value.
    old_value TEXT,
    new_value TEXT,
    request_id TEXT
);
CREATE INDEX audit_events_namespace ON audit_events (namespace, id);
CREATE INDEX audit_events_actor ON audit_events (actor, id);
CREATE INDEX audit_events_action ON audit_events (action, id);
CREATE INDEX audit_events_target ON audit_events (target, id);

-- Events per namespace ('' for events outside any namespace), kept with every insert so that
-- the audit log's total costs one small read however long the log grows.
CREATE TABLE audit_counts (
    namespace TEXT PRIMARY KEY NOT NULL,
    total INTEGER NOT NULL
);

-- vCPUs of an instance's type, counted against its namespace's quota.
ALTER TABLE instances ADD COLUMN vcpus INTEGER NOT NULL DEFAULT 0;

-- Who asked for a job, and the namespace it works in (NULL: several, or none).
ALTER TABLE jobs ADD COLUMN actor TEXT NOT NULL DEFAULT 'system';
ALTER TABLE jobs ADD COLUMN namespace TEXT;
CREATE INDEX jobs_namespace ON jobs (namespace, id);
CREATE INDEX jobs_actor ON jobs (actor, id);
