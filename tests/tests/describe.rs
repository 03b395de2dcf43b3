//! `bus.describe()` (DESIGN §4): every message → its handler(s) → the layers of the pipeline in
//! the order they run → where each is declared (file:line), and the reason a command handler
//! gives for reading queries.

use std::sync::Arc;

use cqrs_core::prelude::*;
use cqrs_core::{Location, MessageKind};
use validator::Validate;

const SOURCE: &str = include_str!("describe.rs");

/// The line that declares `item` in this file.
fn line_of(item: &str) -> u32 {
    let found: Vec<usize> = SOURCE
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with(item))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(found.len(), 1, "`{item}` is declared once");
    found[0] as u32
}

fn at(item: &str) -> String {
    format!("tests/tests/describe.rs:{}", line_of(item))
}

fn assert_declares(location: Location, item: &str) {
    assert!(location.file.ends_with("describe.rs"), "{location}");
    assert_eq!(location.line, line_of(item), "{item}");
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize, Validate)]
#[command(output = u64)]
struct OpenAccount {
    #[validate(length(min = 1))]
    owner: String,
}

#[command_handler(OpenAccount, timeout = "15s", invalidates = [AccountView])]
#[retry(max_attempts = 3, delay = "50ms", on = [Conflict])]
#[authorize(permissions = ["account:open"], roles = ["teller"])]
struct OpenAccountHandler;

impl CommandHandler<OpenAccount> for OpenAccountHandler {
    async fn handle(&self, _cmd: OpenAccount, cx: &mut CommandContext) -> Result<u64, Error> {
        cx.emit(AccountOpened { id: 1 });
        Ok(1)
    }
}

#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = Option<String>)]
struct AccountView {
    account_id: u64,
}

#[query_handler(AccountView)]
#[timeout("2s")]
#[cached_query(ttl = "5m", vary_by = [account_id])]
struct AccountViewHandler;

impl QueryHandler<AccountView> for AccountViewHandler {
    async fn handle(&self, _q: AccountView, _cx: &QueryContext) -> Result<Option<String>, Error> {
        Ok(None)
    }
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(name = "accounts.close")]
struct CloseAccount {
    account_id: u64,
}

#[command_handler(
    CloseAccount,
    reads_queries = "checks the balance is zero before closing"
)]
struct CloseAccountHandler {
    queries: QueryBus,
}

impl CommandHandler<CloseAccount> for CloseAccountHandler {
    async fn handle(&self, cmd: CloseAccount, _cx: &mut CommandContext) -> Result<(), Error> {
        self.queries
            .query(AccountView {
                account_id: cmd.account_id,
            })
            .await?;
        Ok(())
    }
}

#[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct AccountOpened {
    id: u64,
}

#[event_handler(AccountOpened)]
struct UpdateDashboard;

impl EventHandler<AccountOpened> for UpdateDashboard {
    async fn handle(&self, _e: &AccountOpened, _cx: &mut EventContext) -> Result<(), Error> {
        Ok(())
    }
}

#[event_handler(AccountOpened)]
struct EmailOwner {
    #[inject(default)]
    _sent: Arc<std::sync::atomic::AtomicUsize>,
}

impl EventHandler<AccountOpened> for EmailOwner {
    async fn handle(&self, _e: &AccountOpened, _cx: &mut EventContext) -> Result<(), Error> {
        Ok(())
    }
}

/// Declared, never handled.
#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct FreezeAccount {
    account_id: u64,
}

fn bus() -> Bus {
    Bus::builder().middleware(AuditLog::new()).build().unwrap()
}

const OPEN_ACCOUNT_LAYERS: [&str; 9] = [
    "trace",
    "middleware(1)",
    "timeout(15s)",
    "authorize(permissions=[account:open], roles=[teller])",
    "validate",
    "idempotency",
    "retry(max_attempts=3, delay=50ms, backoff=2, max_delay=1s, jitter=0.5, on=[Conflict])",
    "handler",
    "invalidates[AccountView]",
];

#[test]
fn a_command_is_described_with_its_handler_layers_in_pipeline_order_and_locations() {
    let description = bus().describe();
    let m = description.message("OpenAccount").unwrap();
    assert_eq!(m.kind, MessageKind::Command);
    assert_eq!(m.type_name, "describe::OpenAccount");
    assert_declares(m.location.unwrap(), "struct OpenAccount {");
    assert_eq!(m.handlers.len(), 1);
    let h = &m.handlers[0];
    assert_eq!(h.name, "OpenAccountHandler");
    assert_declares(h.location, "struct OpenAccountHandler;");
    assert_eq!(h.layers, OPEN_ACCOUNT_LAYERS);
    assert_eq!(h.invalidates, ["AccountView"]);
    assert_eq!(h.reads_queries, None);
}

#[test]
fn a_query_is_described_without_the_command_only_layers() {
    let description = bus().describe();
    let m = description.message("AccountView").unwrap();
    assert_eq!(m.kind, MessageKind::Query);
    let h = &m.handlers[0];
    assert_eq!(h.name, "AccountViewHandler");
    assert_declares(h.location, "struct AccountViewHandler;");
    assert_eq!(
        h.layers,
        [
            "trace",
            "timeout(2s)",
            "cache(ttl=5m, vary_by=[account_id], max_entries=10000)",
            "handler",
        ],
        "the audit log applies to commands only, so queries have no middleware layer"
    );
}

#[test]
fn a_command_handler_that_reads_queries_shows_its_reason() {
    let description = bus().describe();
    let m = description.message("accounts.close").unwrap();
    assert_eq!(m.type_name, "describe::CloseAccount");
    let h = &m.handlers[0];
    assert_eq!(
        h.reads_queries,
        Some("checks the balance is zero before closing")
    );
    assert_eq!(
        h.layers,
        ["trace", "middleware(1)", "idempotency", "handler"]
    );
}

#[test]
fn an_event_lists_every_handler_by_name() {
    let description = bus().describe();
    let m = description.message("AccountOpened").unwrap();
    assert_eq!(m.kind, MessageKind::Event);
    let names: Vec<&str> = m.handlers.iter().map(|h| h.name).collect();
    assert_eq!(names, ["EmailOwner", "UpdateDashboard"]);
    assert_declares(m.handlers[0].location, "struct EmailOwner {");
    assert_declares(m.handlers[1].location, "struct UpdateDashboard;");
}

#[test]
fn a_message_without_a_handler_is_listed_with_none() {
    let description = bus().describe();
    let m = description.message("FreezeAccount").unwrap();
    assert!(m.handlers.is_empty());
    assert_declares(m.location.unwrap(), "struct FreezeAccount {");
    assert!(description.message("NoSuchMessage").is_none());
}

#[test]
fn the_printed_description_reads_message_handler_layers_location() {
    let text = bus().describe().to_string();
    let expected = format!(
        "commands
  FreezeAccount -> (no handler)  declared at {freeze}
  OpenAccount -> OpenAccountHandler  ({open})
      {open_layers}
  accounts.close -> CloseAccountHandler  ({close})
      trace -> middleware(1) -> idempotency -> handler
      reads queries: checks the balance is zero before closing
queries
  AccountView -> AccountViewHandler  ({view})
      trace -> timeout(2s) -> cache(ttl=5m, vary_by=[account_id], max_entries=10000) -> handler
events
  AccountOpened -> EmailOwner ({email}), UpdateDashboard ({dashboard})
",
        freeze = at("struct FreezeAccount {"),
        open = at("struct OpenAccountHandler;"),
        open_layers = OPEN_ACCOUNT_LAYERS.join(" -> "),
        close = at("struct CloseAccountHandler {"),
        view = at("struct AccountViewHandler;"),
        email = at("struct EmailOwner {"),
        dashboard = at("struct UpdateDashboard;"),
    );
    assert_eq!(text, expected);
}

#[test]
fn a_bus_of_registered_handlers_describes_only_those() {
    let bus = Bus::builder()
        .discover(false)
        .register::<AccountViewHandler>()
        .build()
        .unwrap();
    let description = bus.describe();
    let names: Vec<&str> = description.messages.iter().map(|m| m.name).collect();
    assert_eq!(names, ["AccountView"]);
    assert_eq!(
        description.message("AccountView").unwrap().handlers[0].layers,
        [
            "trace",
            "timeout(2s)",
            "cache(ttl=5m, vary_by=[account_id], max_entries=10000)",
            "handler",
        ]
    );
}

#[test]
fn middleware_is_counted_per_kind() {
    struct Everything;
    impl Middleware for Everything {
        async fn handle(
            &self,
            _d: &cqrs_core::Dispatch<'_>,
            next: cqrs_core::Next<'_>,
        ) -> Result<(), Error> {
            next.run().await
        }
    }
    let bus = Bus::builder()
        .discover(false)
        .register::<OpenAccountHandler>()
        .register::<AccountViewHandler>()
        .middleware(AuditLog::new())
        .middleware(Everything)
        .build()
        .unwrap();
    let d = bus.describe();
    assert_eq!(
        d.message("OpenAccount").unwrap().handlers[0].layers[1],
        "middleware(2)"
    );
    assert_eq!(
        d.message("AccountView").unwrap().handlers[0].layers[1],
        "middleware(1)"
    );
}
