//! Behaviour only PostgreSQL has: several replicas sharing one database, and `LISTEN/NOTIFY`
//! wake-ups between processes. The SQLite pass of `scripts/test` leaves this module out; on the
//! PostgreSQL pass every test here runs, and in CI a missing server fails them.
