-- When a create job first called RunInstances: until then there is nothing to look for in the
-- cloud before launching.
ALTER TABLE jobs ADD COLUMN launch_started_at INTEGER;
