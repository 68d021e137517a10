-- The user to log in as on each instance, which its AMI implies (or the policy says); NULL until
-- the create job has described the AMI.
ALTER TABLE instances ADD COLUMN login_user TEXT;
