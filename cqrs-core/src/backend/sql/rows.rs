//! What the statements of each database (`sqlite.rs`, `postgres.rs`) read and write, shared by
//! them and by the files that call them: a migration, and the outbox's rows.

use uuid::Uuid;

/// One migration: its version, what it does, and its SQL for each backend.
pub(crate) struct Migration {
    pub(crate) version: i64,
    pub(crate) description: &'static str,
    #[cfg(feature = "sqlite")]
    pub(crate) sqlite: &'static str,
    #[cfg(feature = "postgres")]
    pub(crate) postgres: &'static str,
}

/// A row to write.
pub(crate) struct OutboxRow {
    pub(crate) id: Uuid,
    pub(crate) event_name: &'static str,
    pub(crate) payload: String,
    pub(crate) metadata: String,
    pub(crate) created_at_ms: i64,
    /// The key whose events leave in order (`pipeline/transport.rs`).
    pub(crate) partition_key: Option<String>,
}

/// A row the relay claimed.
pub(crate) struct ClaimedRow {
    pub(crate) id: Uuid,
    pub(crate) event_name: String,
    pub(crate) payload: String,
    pub(crate) metadata: String,
    pub(crate) created_at_ms: i64,
    pub(crate) attempts: i64,
    pub(crate) partition_key: Option<String>,
    /// The order in which rows were written.
    pub(crate) seq: i64,
}
