-- The audit log, jobs and notification events name people: `actor` is the user's name, and the
-- new `credential` says which of their credentials acted (an API key's prefix, or `token`).
-- Rows written before named an API key's prefix as their actor: they now name the key's
-- user, with the prefix as their credential (a key whose user is gone keeps its prefix).
ALTER TABLE audit_events ADD COLUMN credential TEXT;
ALTER TABLE jobs ADD COLUMN credential TEXT;
UPDATE audit_events
SET credential = actor,
    actor = (SELECT users.username FROM api_keys JOIN users ON users.id = api_keys.user_id
             WHERE api_keys.prefix = audit_events.actor)
WHERE actor LIKE 'crl~_%' ESCAPE '~'
  AND EXISTS (SELECT 1 FROM api_keys JOIN users ON users.id = api_keys.user_id
              WHERE api_keys.prefix = audit_events.actor);
UPDATE jobs
SET credential = actor,
    actor = (SELECT users.username FROM api_keys JOIN users ON users.id = api_keys.user_id
             WHERE api_keys.prefix = jobs.actor)
WHERE actor LIKE 'crl~_%' ESCAPE '~'
  AND EXISTS (SELECT 1 FROM api_keys JOIN users ON users.id = api_keys.user_id
              WHERE api_keys.prefix = jobs.actor);
UPDATE notification_events
SET actor = (SELECT users.username FROM api_keys JOIN users ON users.id = api_keys.user_id
             WHERE api_keys.prefix = notification_events.actor)
WHERE actor LIKE 'crl~_%' ESCAPE '~'
  AND EXISTS (SELECT 1 FROM api_keys JOIN users ON users.id = api_keys.user_id
              WHERE api_keys.prefix = notification_events.actor);
