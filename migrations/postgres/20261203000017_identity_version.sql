-- One number that every change of users, role bindings or API keys raises, in the transaction
-- that makes the change: a process that kept principals in memory keeps them while the number
-- stays what it was when it read them (storage::identity, Store::identity_version).
CREATE TABLE identity_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO identity_version (id, version) VALUES (1, 0);
