//! Users: staff register customers; registering one sends a welcome mail.

use cqrs_core::prelude::*;
use cqrs_core::{FieldError, sqlx};
use serde::{Deserialize, Serialize};
use validator::Validate;

use super::db::{self, Db, on_db};

/// A user's id.
pub type UserId = i64;

/// Registers a user (`POST /users`, permission `user:create`). Answers the new user.
#[derive(Command, Validate, Debug, Clone, Serialize, Deserialize)]
#[command(output = User, name = "users.register")]
pub struct RegisterUser {
    #[validate(email(message = "must be an email address"))]
    pub email: String,
    #[validate(length(min = 1, max = 80, message = "must be 1 to 80 characters"))]
    pub name: String,
}

/// Reads one user (`GET /users/{id}`, permission `user:read`).
#[derive(Query, Debug, Clone, Hash, PartialEq, Eq, Serialize, Deserialize)]
#[query(output = User, name = "users.get")]
pub struct GetUser {
    pub id: UserId,
}

/// A user, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub name: String,
}

/// A user was registered.
#[derive(Event, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[event(name = "users.registered")]
pub struct UserRegistered {
    pub user_id: UserId,
    pub email: String,
    pub name: String,
}

/// Inserts the user in the command's transaction. Serializable, so that the "is the email
/// free?" check and the insert cannot interleave with another registration. Concurrent
/// registrations then fail now and then with a serialization failure, which is transient
/// (`Unavailable`): `#[retry]` runs the whole command again, in a fresh transaction, after a
/// growing, jittered pause (so that the clashing registrations do not clash again in step), up
/// to 8 times within the 5 s deadline. A taken email is a 422 and is not retried.
#[command_handler(RegisterUser, timeout = "5s", emits = [UserRegistered])]
#[authorize(permissions = ["user:create"])]
#[transactional(isolation = "serializable")]
#[retry(max_attempts = 8, delay = "5ms", backoff = 2.0, max_delay = "250ms", jitter = true, on = [Unavailable])]
pub struct RegisterUserHandler;

impl CommandHandler<RegisterUser> for RegisterUserHandler {
    async fn handle(&self, cmd: RegisterUser, cx: &mut CommandContext) -> Result<User, Error> {
        let email = cmd.email.to_lowercase();
        let taken = on_db!(db::tx(cx)?, |c| {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM users WHERE email = $1")
                .bind(&email)
                .fetch_one(c)
                .await
        })?;
        if taken > 0 {
            // A field error (422), not a Conflict: the caller must change the email, and
            // `#[retry(on = [Conflict])]` must not run the command again for nothing.
            return Err(Error::validation([FieldError::new(
                "email",
                "taken",
                "is already registered",
            )]));
        }
        let id = on_db!(db::tx(cx)?, |c| {
            sqlx::query_scalar::<_, i64>(
                "INSERT INTO users (email, name, created_at_ms) VALUES ($1, $2, $3) RETURNING id",
            )
            .bind(&email)
            .bind(&cmd.name)
            .bind(db::now_ms())
            .fetch_one(c)
            .await
        })?;
        cx.emit(UserRegistered {
            user_id: id,
            email: email.clone(),
            name: cmd.name.clone(),
        });
        Ok(User {
            id,
            email,
            name: cmd.name,
        })
    }
}

#[query_handler(GetUser)]
#[authorize(permissions = ["user:read"])]
pub struct GetUserHandler {
    db: Db,
}

impl QueryHandler<GetUser> for GetUserHandler {
    async fn handle(&self, q: GetUser, _cx: &QueryContext) -> Result<User, Error> {
        let row = on_db!(&self.db, |c| {
            sqlx::query_as::<_, (String, String)>("SELECT email, name FROM users WHERE id = $1")
                .bind(q.id)
                .fetch_optional(c)
                .await
        })?;
        let (email, name) = row.ok_or_else(|| Error::not_found(format!("user {}", q.id)))?;
        Ok(User {
            id: q.id,
            email,
            name,
        })
    }
}

/// Sends the welcome mail (here: a log line). It runs after the registration committed, from the
/// outbox, at least once.
#[event_handler(UserRegistered)]
pub struct SendWelcomeMail;

impl EventHandler<UserRegistered> for SendWelcomeMail {
    async fn handle(&self, e: &UserRegistered, cx: &mut EventContext) -> Result<(), Error> {
        tracing::info!(to = %e.email, event_id = %cx.event_id(), "welcome mail sent to {}", e.name);
        Ok(())
    }
}
