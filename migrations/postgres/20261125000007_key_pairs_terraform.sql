-- SSH key pairs corral knows: imported public keys and keys corral generated (whose private
-- half was answered once and never stored). The create job imports the public key into each
-- region where an instance uses it.
CREATE TABLE key_pairs (
    name TEXT PRIMARY KEY NOT NULL,
    namespace TEXT NOT NULL,
    key_type TEXT NOT NULL,
    public_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX key_pairs_namespace ON key_pairs (namespace, name);

-- Terraform state served over Terraform's HTTP backend protocol, one row per workspace (a
-- Terraform-backed create request). `lock_id`/`lock_info` hold the lock Terraform took, if any;
-- `lock_job` names the corral job whose run of Terraform holds it.
CREATE TABLE terraform_states (
    workspace TEXT PRIMARY KEY NOT NULL,
    state TEXT,
    lock_id TEXT,
    lock_info TEXT,
    lock_job TEXT,
    updated_at BIGINT NOT NULL
);
