-- The backend a namespace's create requests use when they name none; NULL: the server's
-- terraform.default_backend.
ALTER TABLE namespaces ADD COLUMN default_backend TEXT
    CHECK (default_backend IS NULL OR default_backend IN ('aws', 'terraform'));
