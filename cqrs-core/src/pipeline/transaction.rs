//! Layer 9: the database transaction around the handler.
//!
//! `#[transactional(isolation = "serializable", rollback_on = [..])]` on a command handler. The
//! layer begins a transaction on the bus's database before each attempt, the handler reaches it
//! through `cx.tx()`, and it commits when the handler returns `Ok` and rolls back when it returns
//! `Err` (with `rollback_on`, only errors of those statuses roll back; the others commit what was
//! written and still return the error). Events emitted by the handler go into the outbox inside
//! the same transaction. How each isolation level maps onto each database is documented on
//! [`Isolation`].

use std::fmt;

use crate::Status;

/// The isolation level of a `#[transactional]` handler.
///
/// | level | PostgreSQL | SQLite |
/// |---|---|---|
/// | `ReadCommitted` | `READ COMMITTED` | `BEGIN IMMEDIATE` (SQLite is always serializable) |
/// | `RepeatableRead` | `REPEATABLE READ` | `BEGIN IMMEDIATE` |
/// | `Serializable` | `SERIALIZABLE` (a serialization failure is a `Conflict`, which `#[retry]` retries) | `BEGIN IMMEDIATE` |
///
/// SQLite runs one writer at a time, so every level is serializable there. The transaction takes
/// the write lock when it begins (`BEGIN IMMEDIATE`) rather than at its first write: two writers
/// then queue on the busy timeout instead of failing with "database is locked" when a reader
/// tries to upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    /// The database's default for PostgreSQL.
    #[default]
    ReadCommitted,
    /// Snapshot isolation.
    RepeatableRead,
    /// Full serializability.
    Serializable,
}

impl Isolation {
    /// The name used in the attribute: `read_committed`, `repeatable_read`, `serializable`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "read_committed",
            Isolation::RepeatableRead => "repeatable_read",
            Isolation::Serializable => "serializable",
        }
    }

    /// The PostgreSQL statement that sets this level.
    pub const fn postgres_sql(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
            Isolation::RepeatableRead => "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            Isolation::Serializable => "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        }
    }
}

/// The configuration of `#[transactional(..)]`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TransactionLayer {
    isolation: Isolation,
    rollback_on: Option<&'static [Status]>,
}

impl TransactionLayer {
    /// Read committed; every error rolls back.
    pub const fn new() -> Self {
        TransactionLayer {
            isolation: Isolation::ReadCommitted,
            rollback_on: None,
        }
    }

    /// The isolation level.
    pub const fn isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = isolation;
        self
    }

    /// Only errors of these statuses roll back; the others commit.
    pub const fn rollback_on(mut self, statuses: &'static [Status]) -> Self {
        self.rollback_on = Some(statuses);
        self
    }

    /// The isolation level.
    pub fn isolation_level(&self) -> Isolation {
        self.isolation
    }

    /// Whether an error of this status rolls the transaction back.
    pub fn rolls_back(&self, status: Status) -> bool {
        self.rollback_on.is_none_or(|on| on.contains(&status))
    }
}

impl Default for TransactionLayer {
    fn default() -> Self {
        TransactionLayer::new()
    }
}

impl fmt::Display for TransactionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "transaction(isolation={}", self.isolation.as_str())?;
        if let Some(on) = self.rollback_on {
            let on: Vec<_> = on.iter().map(|s| format!("{s:?}")).collect();
            write!(f, ", rollback_on={}", super::describe::list(&on))?;
        }
        f.write_str(")")
    }
}

impl fmt::Debug for TransactionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
