//! The macros of `cqrs-core`. Use them through `cqrs_core` (its prelude re-exports them); the
//! code they generate names only `::cqrs_core::__private` and `::core`.
//!
//! Every macro parses and checks its input, reports every mistake it finds on the offending
//! token, and registers what it declares through `inventory`; the runtime in `cqrs-core` does
//! the work.

#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

mod ast;
mod attr;
mod check;
mod duration;
mod errors;
mod expand;
#[cfg(test)]
mod fuzz;
mod item;

use proc_macro::TokenStream;

use crate::ast::{
    AuthorizeOptions, CacheOptions, ExclusiveOptions, HandlerKind, MessageKind, RetryOptions,
    TimeoutOption, TransactionalOptions,
};
use crate::expand::decorator::decorator_attribute;
use crate::expand::handler::handler_attribute;
use crate::expand::message::derive_message;

/// Declares a command: implements `Command`, registers the type, and wires validation.
///
/// ```text
/// #[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
/// #[command(output = UserId, name = "users.register")]
/// pub struct RegisterUser { pub email: String }
/// ```
///
/// Options, in `#[command(..)]`: `output = Type` (default `()`), `name = "users.register"`
/// (default: the type's name; logs, metrics, caches and stores use it). A command is a struct
/// or an enum, possibly generic. A name leaves out the type arguments, so one bus handles one
/// instance of a generic message: `build()` refuses a second (`Import<String>` and
/// `Import<u64>` share the name `Import`, and with it cache regions and stored records), naming
/// both types; declare a non-generic message per instance instead. Field rules written with the `validator` crate
/// (`#[derive(validator::Validate)]` and `#[validate(..)]`) are checked before the handler runs.
#[proc_macro_derive(Command, attributes(command))]
pub fn derive_command(input: TokenStream) -> TokenStream {
    derive_message(input.into(), MessageKind::Command)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Declares a query: `#[derive(Query)]` with `#[query(output = Option<UserView>)]`.
///
/// Options, in `#[query(..)]`: `output = Type` (default `()`), `name = ".."`. A cached query
/// (`#[cached_query]` on its handler) is usually `Hash + Eq` too.
#[proc_macro_derive(Query, attributes(query))]
pub fn derive_query(input: TokenStream) -> TokenStream {
    derive_message(input.into(), MessageKind::Query)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Declares an event: `#[derive(Event)]`. Option, in `#[event(..)]`: `name = ".."`.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    derive_message(input.into(), MessageKind::Event)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Declares the handler of a command: `#[command_handler(RegisterUser)]` on a struct whose fields
/// are injected from the bus's dependencies (`#[inject(default)]` falls back to `Default`).
///
/// ```text
/// #[command_handler(RegisterUser, timeout = "15s", invalidates = [GetUser])]
/// pub struct RegisterUserHandler { users: Arc<dyn UserRepository> }
///
/// impl CommandHandler<RegisterUser> for RegisterUserHandler { async fn handle(..) -> Result<UserId, Error> { .. } }
/// ```
///
/// Options: `timeout = "15s"`, `invalidates = [GetUser, ListUsers]` (cached queries dropped when
/// the command succeeds; `invalidates = [GetUser(id = user_id)]` drops only the answers whose
/// `vary_by` fields are the command's fields named, for every caller), `emits = [UserRegistered]` and `sends = [SendMail]` (for
/// `describe()`), `reads_queries = "why"` (the documented exception that allows a `QueryBus`
/// field). The struct is not generic (register a generic handler by hand with
/// `Bus::builder().command_handler(..)`); a tuple or unit struct is fine. Decorators
/// (`#[authorize]`, `#[retry]`, `#[timeout]`, `#[transactional]`) go above or below it.
#[proc_macro_attribute]
pub fn command_handler(args: TokenStream, input: TokenStream) -> TokenStream {
    handler_attribute(args.into(), input.into(), HandlerKind::Command).into()
}

/// Declares the handler of a query: `#[query_handler(GetUser)]`. Option: `timeout = ".."`.
///
/// A query handler may hold a `QueryBus` but not the `Bus` (it would be able to send commands).
/// Decorators: `#[cached_query]`, `#[authorize]`, `#[retry]`, `#[timeout]`.
#[proc_macro_attribute]
pub fn query_handler(args: TokenStream, input: TokenStream) -> TokenStream {
    handler_attribute(args.into(), input.into(), HandlerKind::Query).into()
}

/// Declares a handler of an event (an event has any number): `#[event_handler(UserRegistered)]`.
/// Options: `timeout = ".."`, `sends = [Command, ..]` (for `describe()`). Decorators:
/// `#[retry]`, `#[timeout]`.
#[proc_macro_attribute]
pub fn event_handler(args: TokenStream, input: TokenStream) -> TokenStream {
    handler_attribute(args.into(), input.into(), HandlerKind::Event).into()
}

/// Requires a principal, permissions, roles, or a resource policy's consent:
/// `#[authorize(permissions = ["user:delete"], roles = ["admin"], resource = user_id, admin_override)]`.
///
/// On command and query handlers. `resource` names a field of the message whose `Display` is
/// handed to the bus's resource policy.
#[proc_macro_attribute]
pub fn authorize(args: TokenStream, input: TokenStream) -> TokenStream {
    decorator_attribute::<AuthorizeOptions>(args.into(), input.into()).into()
}

/// Caches a query handler's answers:
/// `#[cached_query(ttl = "5m", vary_by = [user_id], cache_none = false, max_entries = 10000, public)]`.
///
/// On query handlers only. The key is the whole query (which must be `Hash`) unless `vary_by`
/// names the fields that make it, and the caller: answers are kept per principal (anonymous
/// callers share one scope), since a handler may read `cx.principal()`. `public` declares the
/// answer the same for every caller, so that all of them share one cached answer. Options left
/// out take the runtime's defaults: `ttl` is `CacheSpec::DEFAULT_TTL` (one minute),
/// `max_entries` is `CacheSpec::DEFAULT_MAX_ENTRIES`.
#[proc_macro_attribute]
pub fn cached_query(args: TokenStream, input: TokenStream) -> TokenStream {
    decorator_attribute::<CacheOptions>(args.into(), input.into()).into()
}

/// Retries transient failures:
/// `#[retry(max_attempts = 3, delay = "50ms", backoff = 2.0, max_delay = "1s", jitter = true, on = [Conflict, Unavailable])]`.
///
/// `max_attempts` counts the first attempt (at least 1; default
/// `RetryLayer::DEFAULT_MAX_ATTEMPTS`, 3). The pauses are jittered exponential backoff unless
/// told otherwise: `delay` (default 10 ms) before the second attempt, growing by `backoff`
/// (at least 1.0; default 2.0) up to `max_delay` (default 1 s), with `jitter` of each pause
/// random (`RetryLayer::DEFAULT_JITTER`, half, unless a fraction is given; `jitter = false` for
/// exact pauses), so that callers that failed together do not retry in step. `on` lists
/// statuses (default `RetryLayer::DEFAULT_ON`: `Conflict`, `Unavailable`), never `Validation`
/// or `NoHandler`, which a retry cannot change.
#[proc_macro_attribute]
pub fn retry(args: TokenStream, input: TokenStream) -> TokenStream {
    decorator_attribute::<RetryOptions>(args.into(), input.into()).into()
}

/// The handler's overall deadline, retries included: `#[timeout("2s")]`, the same as the
/// handler attribute's `timeout = "2s"` (give one of them). Durations are an integer and a unit:
/// `ms`, `s`, `m`, `h`, `d`, as in `"250ms"` or `"1m30s"`.
#[proc_macro_attribute]
pub fn timeout(args: TokenStream, input: TokenStream) -> TokenStream {
    decorator_attribute::<TimeoutOption>(args.into(), input.into()).into()
}

/// Runs a command or event handler in a database transaction:
/// `#[transactional(isolation = "serializable", rollback_on = [Conflict])]`.
///
/// On command handlers and event handlers. An event handler's transaction also records the
/// event in the handler's inbox (`cqrs_inbox`): a redelivered event it already handled is not
/// run again, so its effects in the database happen once. `isolation` is `"read_committed"`, `"repeatable_read"` or
/// `"serializable"`; `rollback_on` lists the statuses whose errors roll back (default: every
/// error).
#[proc_macro_attribute]
pub fn transactional(args: TokenStream, input: TokenStream) -> TokenStream {
    decorator_attribute::<TransactionalOptions>(args.into(), input.into()).into()
}

/// Runs at most one command per key value at a time, across every process that shares the
/// bus's PostgreSQL or Redis: `#[exclusive(key = account_id)]`, or
/// `#[exclusive(key = account_id, name = "account")]` to share the lock with other commands.
///
/// On command handlers. `key` names a field of the command (any `Serialize` type: a string is
/// the key as is, another value its JSON text); `name` is the lock space (default: the
/// command's name), so that a `Withdraw` and a `Deposit` that both say `name = "account"`
/// exclude each other on one account. Each attempt takes the lock before its transaction
/// begins and frees it after the transaction ends. On PostgreSQL (`.postgres(pool)`) it is a
/// session advisory lock on the transaction's own connection; otherwise a Redis lease
/// (`.redis(client)`) renewed while the handler runs, whose fencing token the handler reads
/// with `cx.fencing_token()`. A command whose key is held waits, then fails with `Conflict`;
/// a lock backend that does not answer fails it with `Unavailable`. Without either backend,
/// `build()` says so. The runtime decides the wait and the lease (see `ExclusiveLayer` and
/// `BusBuilder::redis_lock_lease` in cqrs-core).
#[proc_macro_attribute]
pub fn exclusive(args: TokenStream, input: TokenStream) -> TokenStream {
    decorator_attribute::<ExclusiveOptions>(args.into(), input.into()).into()
}
