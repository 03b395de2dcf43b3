//! What a database error means to the caller: its [`Status`]. Registered with the error model
//! (`error.rs` asks every backend's classifier), so that `?` on a `sqlx::Error` anywhere (in a
//! handler's own SQL too) gives the right status.

use std::error::Error as StdError;

use crate::Status;
use crate::error::ErrorClassifier;

inventory::submit! {
    ErrorClassifier(|error: &(dyn StdError + 'static)| error.downcast_ref::<sqlx::Error>().and_then(classify))
}

/// The status of a database error: what is transient (the same request may succeed if sent
/// again) is `Unavailable`, a unique violation is `Conflict` (the caller must change something),
/// text PostgreSQL cannot store (a NUL character) is `Validation`, a missing row is `NotFound`.
///
/// `Unavailable`, by database:
/// - PostgreSQL: a serialization failure (`40001`) or a deadlock (`40P01`), where the database
///   itself says "retry the transaction"; connection exceptions (class `08`), the server
///   shutting down or restarting
///   (`57P01`..`57P03`), too many connections (`53300`), a full disk (`53100`), out of memory
///   (`53200`), an I/O error (`58030`);
/// - SQLite: the database busy or locked past the busy timeout (`SQLITE_BUSY`,
///   `SQLITE_LOCKED`), an I/O error (`SQLITE_IOERR`), a full disk (`SQLITE_FULL`), the file
///   gone or unopenable (`SQLITE_CANTOPEN`).
pub(crate) fn classify(error: &sqlx::Error) -> Option<Status> {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => Some(Status::Unavailable),
        sqlx::Error::RowNotFound => Some(Status::NotFound),
        sqlx::Error::Database(db) => {
            if db.kind() == sqlx::error::ErrorKind::UniqueViolation {
                return Some(Status::Conflict);
            }
            let code = db.code()?;
            let code = code.as_ref();
            // Each backend's codes are read only on its own errors: a SQLSTATE such as
            // `42501` (insufficient privilege) is numeric too, and read as a SQLite code its
            // low byte is `SQLITE_BUSY`.
            #[cfg(feature = "sqlite")]
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // SQLite (extended) result codes: BUSY, LOCKED, IOERR, FULL, CANTOPEN.
                return code
                    .parse::<i32>()
                    .is_ok_and(|n| matches!(n & 0xff, 5 | 6 | 10 | 13 | 14))
                    .then_some(Status::Unavailable);
            }
            // PostgreSQL SQLSTATEs.
            if code == "40001" || code == "40P01" {
                return Some(Status::Unavailable);
            }
            // Text the database cannot store: a NUL character sent in UTF-8 text (`22021`, "..
            // 0x00"), a character the database's encoding lacks (`22P05`). The request is at
            // fault, as with a field rule, not the server. Other `22021`s come from the SQL
            // itself (`convert_from` of bad bytes): a bug, left `Internal`.
            if (code == "22021" && db.message().ends_with("0x00")) || code == "22P05" {
                return Some(Status::Validation);
            }
            if code.starts_with("08")
                || matches!(
                    code,
                    "57P01" | "57P02" | "57P03" | "53100" | "53200" | "53300" | "58030"
                )
            {
                return Some(Status::Unavailable);
            }
            None
        }
        _ => None,
    }
}
