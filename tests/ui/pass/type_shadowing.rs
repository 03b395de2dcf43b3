//! The generated code names only `::cqrs_core::__private` and `::core`, so a module that
//! shadows the prelude's names still compiles (tracing's `type_shadowing.rs`).
#![allow(dead_code, non_camel_case_types)]

use cqrs_core::prelude::{
    Bus, CommandContext, CommandHandler, EventContext, EventHandler, QueryContext, QueryHandler,
};
use cqrs_core::{
    Command, Event, Query, authorize, cached_query, command_handler, event_handler, query_handler,
    retry, timeout, transactional,
};

type Result<T> = ::core::result::Result<T, cqrs_core::Error>;
struct Box;
struct Option;
struct Some;
struct None;
struct Ok;
struct Err;
struct Vec;
struct String;
struct Duration;
struct Any;
trait Send {}
trait Sync {}
trait Clone {}
trait Default {}
trait Hash {}
trait Hasher {}
trait Fn {}
mod core {}
mod std {}
mod inventory {}

#[derive(Command, Debug, serde::Serialize, serde::Deserialize, ::core::clone::Clone)]
#[command(output = u64, name = "shadow.bump")]
struct Bump {
    by: u64,
}

#[derive(Query, Debug, ::core::clone::Clone, ::core::hash::Hash, PartialEq, Eq)]
#[query(output = ::core::option::Option<u64>)]
struct Current {
    key: u64,
}

#[derive(Event, Debug, ::core::clone::Clone, serde::Serialize, serde::Deserialize)]
struct Bumped {
    by: u64,
}

#[derive(::core::clone::Clone)]
struct Counter;

#[command_handler(Bump, timeout = "10s", invalidates = [Current], emits = [Bumped])]
#[authorize(permissions = ["counter:bump"], roles = ["admin"], resource = by, admin_override)]
#[retry(max_attempts = 3, delay = "1ms", backoff = 2.0, max_delay = "10ms", jitter = 0.2, on = [Conflict, Unavailable])]
#[transactional(isolation = "serializable", rollback_on = [Conflict])]
struct BumpHandler {
    counter: Counter,
}

impl CommandHandler<Bump> for BumpHandler {
    async fn handle(&self, cmd: Bump, cx: &mut CommandContext) -> Result<u64> {
        cx.emit(Bumped { by: cmd.by });
        Result::Ok(cmd.by)
    }
}

#[query_handler(Current)]
#[timeout("2s")]
#[cached_query(ttl = "5m", vary_by = [key], cache_none = false, max_entries = 100)]
#[authorize(roles = ["reader"])]
#[retry(max_attempts = 2, jitter = true)]
struct CurrentHandler;

impl QueryHandler<Current> for CurrentHandler {
    async fn handle(&self, q: Current, _cx: &QueryContext) -> Result<::core::option::Option<u64>> {
        Result::Ok(::core::option::Option::Some(q.key))
    }
}

#[event_handler(Bumped, timeout = "1s", sends = [Bump])]
#[retry(max_attempts = 5)]
struct OnBumped {
    #[inject(default)]
    seen: ::std::sync::Arc<::std::sync::atomic::AtomicU64>,
}

impl EventHandler<Bumped> for OnBumped {
    async fn handle(&self, e: &Bumped, _cx: &mut EventContext) -> Result<()> {
        self.seen
            .fetch_add(e.by, ::std::sync::atomic::Ordering::Relaxed);
        Result::Ok(())
    }
}

fn main() {
    let _ = Bus::builder();
}
