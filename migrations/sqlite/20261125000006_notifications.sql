-- Who is told about what: a webhook (URL and signing secret) or an email address, for one
-- namespace or (namespace NULL) for all of them. `events` is a JSON array of event types; an
-- empty array means every event.
CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY NOT NULL,
    channel TEXT NOT NULL,
    namespace TEXT REFERENCES namespaces (name),
    target TEXT NOT NULL,
    events TEXT NOT NULL,
    secret TEXT,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX subscriptions_namespace ON subscriptions (namespace, id);

-- The outbox: lifecycle events, written in the transaction of the change that caused them.
CREATE TABLE notification_events (
    id TEXT PRIMARY KEY NOT NULL,
    type TEXT NOT NULL,
    namespace TEXT,
    job_id TEXT,
    actor TEXT NOT NULL,
    -- JSON: the event as webhooks receive it.
    payload TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- One message to one receiver, written with its event, sent by the delivery workers.
CREATE TABLE deliveries (
    id TEXT PRIMARY KEY NOT NULL,
    event_id TEXT NOT NULL REFERENCES notification_events (id),
    channel TEXT NOT NULL,
    -- The email address or webhook URL, as it was when the event happened.
    target TEXT NOT NULL,
    subscription_id TEXT,
    namespace TEXT,
    -- pending, delivered or dead.
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    locked_by TEXT,
    lease_expires_at INTEGER,
    last_error TEXT,
    delivered_at INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at);
CREATE INDEX deliveries_status ON deliveries (status, id);
CREATE INDEX deliveries_namespace ON deliveries (namespace, status, id);
