-- Namespaces made by the schema were dated 0 (1970): `default`, and those of instances that
-- were there before namespaces were. Each dates from the first thing known of it: `default`
-- from the first user (made at the first start; a database with none yet gets its date
-- then), the others from their first instance. Only a time still 0 changes.
UPDATE namespaces
SET created_at = (SELECT MIN(created_at) FROM instances WHERE instances.namespace = namespaces.name)
WHERE created_at = 0 AND name <> 'default'
  AND EXISTS (SELECT 1 FROM instances WHERE instances.namespace = namespaces.name);
UPDATE namespaces
SET created_at = (SELECT MIN(created_at) FROM users)
WHERE created_at = 0 AND name = 'default' AND EXISTS (SELECT 1 FROM users);
UPDATE namespaces SET updated_at = created_at WHERE updated_at = 0;
