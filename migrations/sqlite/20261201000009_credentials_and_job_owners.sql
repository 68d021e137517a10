-- Raised by every password change: tokens carry the value they were issued under, and stop
-- working once it has moved on.
ALTER TABLE users ADD COLUMN credentials_version INTEGER NOT NULL DEFAULT 0;
-- A generated first password must be changed before its user may do anything else.
ALTER TABLE users ADD COLUMN must_change_password BOOLEAN NOT NULL DEFAULT FALSE;

-- Who asked for a job, by user id: a username (or a key prefix) can be taken again by someone
-- else, an id cannot. NULL: corral itself. Earlier jobs belong to the user or key that held
-- their actor's name when they were made; corral's own ('system') and those whose user is gone
-- to no one.
ALTER TABLE jobs ADD COLUMN user_id TEXT;
UPDATE jobs SET user_id = COALESCE(
    (SELECT users.id FROM users
        WHERE users.username = jobs.actor AND users.created_at <= jobs.created_at),
    (SELECT api_keys.user_id FROM api_keys
        WHERE api_keys.prefix = jobs.actor AND api_keys.created_at <= jobs.created_at))
WHERE jobs.actor <> 'system';
CREATE INDEX jobs_user ON jobs (user_id, id);
