-- The security groups attached to each instance, as the cloud last reported them (a JSON array
-- of group ids); NULL until an observation has told them.
ALTER TABLE instances ADD COLUMN security_groups TEXT;
