//! The quickstart: a few commands, a query and event handlers on one bus, with several
//! decorators, and `describe()` at the end.
//!
//! Run it with `cargo run -p cqrs-examples --bin quickstart`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use cqrs_core::prelude::*;
use serde::{Deserialize, Serialize};
use validator::Validate;

// ---- messages ---------------------------------------------------------------------------

/// Registers a user; answers the new user's id.
#[derive(Command, Validate, Debug, Clone, Serialize, Deserialize)]
#[command(output = u64, name = "users.register")]
pub struct RegisterUser {
    #[validate(email)]
    pub email: String,
    #[validate(length(min = 2, max = 40))]
    pub name: String,
}

/// Renames a user.
#[derive(Command, Validate, Debug, Clone, Serialize, Deserialize)]
pub struct RenameUser {
    pub user_id: u64,
    #[validate(length(min = 2, max = 40))]
    pub name: String,
}

/// Reads one user.
#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = Option<UserView>)]
pub struct GetUser {
    pub user_id: u64,
}

/// What `GetUser` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserView {
    pub id: u64,
    pub email: String,
    pub name: String,
}

/// A user was registered.
#[derive(Event, Debug, Clone, Serialize, Deserialize)]
pub struct UserRegistered {
    pub user_id: u64,
    pub email: String,
}

// ---- a repository the handlers share ----------------------------------------------------

#[derive(Default)]
pub struct Users {
    rows: Mutex<BTreeMap<u64, UserView>>,
}

impl Users {
    fn insert(&self, email: String, name: String) -> Result<u64, Error> {
        let mut rows = self
            .rows
            .lock()
            .map_err(|_| Error::internal("users lock poisoned"))?;
        if rows.values().any(|u| u.email == email) {
            return Err(Error::conflict(format!("{email} is already registered")));
        }
        let id = rows.len() as u64 + 1;
        rows.insert(id, UserView { id, email, name });
        Ok(id)
    }

    fn rename(&self, id: u64, name: String) -> Result<(), Error> {
        let mut rows = self
            .rows
            .lock()
            .map_err(|_| Error::internal("users lock poisoned"))?;
        let user = rows
            .get_mut(&id)
            .ok_or_else(|| Error::not_found(format!("user {id}")))?;
        user.name = name;
        Ok(())
    }

    fn get(&self, id: u64) -> Option<UserView> {
        self.rows.lock().ok()?.get(&id).cloned()
    }
}

// ---- handlers ---------------------------------------------------------------------------

#[command_handler(RegisterUser, timeout = "5s")]
#[authorize(permissions = ["user:create"])]
#[retry(max_attempts = 3, delay = "10ms", on = [Unavailable])]
pub struct RegisterUserHandler {
    users: Arc<Users>,
}

impl CommandHandler<RegisterUser> for RegisterUserHandler {
    async fn handle(&self, cmd: RegisterUser, cx: &mut CommandContext) -> Result<u64, Error> {
        let id = self.users.insert(cmd.email.clone(), cmd.name)?;
        cx.emit(UserRegistered {
            user_id: id,
            email: cmd.email,
        });
        Ok(id)
    }
}

#[command_handler(RenameUser, invalidates = [GetUser])]
pub struct RenameUserHandler {
    users: Arc<Users>,
}

impl CommandHandler<RenameUser> for RenameUserHandler {
    async fn handle(&self, cmd: RenameUser, _cx: &mut CommandContext) -> Result<(), Error> {
        self.users.rename(cmd.user_id, cmd.name)
    }
}

#[query_handler(GetUser)]
#[cached_query(ttl = "5m", vary_by = [user_id])]
pub struct GetUserHandler {
    users: Arc<Users>,
}

impl QueryHandler<GetUser> for GetUserHandler {
    async fn handle(&self, q: GetUser, _cx: &QueryContext) -> Result<Option<UserView>, Error> {
        Ok(self.users.get(q.user_id))
    }
}

#[event_handler(UserRegistered)]
pub struct SendWelcomeMail;

impl EventHandler<UserRegistered> for SendWelcomeMail {
    async fn handle(&self, e: &UserRegistered, cx: &mut EventContext) -> Result<(), Error> {
        println!("  [mail] welcome, {} (event {})", e.email, cx.event_id());
        Ok(())
    }
}

#[event_handler(UserRegistered)]
pub struct CountRegistrations {
    #[inject(default)]
    count: Arc<std::sync::atomic::AtomicU64>,
}

impl EventHandler<UserRegistered> for CountRegistrations {
    async fn handle(&self, _e: &UserRegistered, _cx: &mut EventContext) -> Result<(), Error> {
        let n = self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        println!("  [stats] {n} registration(s) so far");
        Ok(())
    }
}

// ---- main -------------------------------------------------------------------------------

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bus = Bus::builder()
        .provide(Arc::new(Users::default()))
        .middleware(AuditLog::with_sink(|r| {
            println!("  [audit] {} {:?}", r.command, r.state)
        }))
        .build()?;

    let admin = Principal::new("alice").with_permissions(["user:create"]);

    println!("register ada:");
    let report = bus
        .send_with_report(
            Envelope::new(RegisterUser {
                email: "ada@example.com".into(),
                name: "Ada".into(),
            })
            .principal(admin.clone())
            .idempotency_key("signup-ada"),
        )
        .await?;
    println!(
        "  -> user {} (events: {:?}, attempts: {})",
        report.output, report.events, report.attempts
    );

    println!("the same request again (same idempotency key):");
    let again = bus
        .send_with_report(
            Envelope::new(RegisterUser {
                email: "ada@example.com".into(),
                name: "Ada".into(),
            })
            .principal(admin.clone())
            .idempotency_key("signup-ada"),
        )
        .await?;
    println!("  -> user {} (replayed: {})", again.output, again.replayed);

    println!("an invalid email:");
    let err = bus
        .send(
            Envelope::new(RegisterUser {
                email: "nope".into(),
                name: "X".into(),
            })
            .principal(admin.clone()),
        )
        .await
        .unwrap_err();
    println!("  -> {err}");

    println!("no principal:");
    let err = bus
        .send(RegisterUser {
            email: "bob@example.com".into(),
            name: "Bob".into(),
        })
        .await
        .unwrap_err();
    println!("  -> {err}");

    println!("query twice, rename, query again:");
    let first = bus
        .query_with_report(GetUser {
            user_id: report.output,
        })
        .await?;
    let second = bus
        .query_with_report(GetUser {
            user_id: report.output,
        })
        .await?;
    println!(
        "  -> {:?} (cache hit: {}, then {})",
        first.output.map(|u| u.name),
        first.cache_hit,
        second.cache_hit
    );
    bus.send(RenameUser {
        user_id: report.output,
        name: "Ada Lovelace".into(),
    })
    .await?;
    let third = bus
        .query_with_report(GetUser {
            user_id: report.output,
        })
        .await?;
    println!(
        "  -> {:?} (cache hit: {})",
        third.output.map(|u| u.name),
        third.cache_hit
    );

    println!("\n{}", bus.describe());
    Ok(())
}
