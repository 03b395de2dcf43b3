//! `build()` (DESIGN §4): every problem at once, each with where it is declared: two handlers
//! for one command or query, a dependency nobody provided, a decorator whose backend is missing,
//! two messages with one name, and, under `.strict()`, a derived command or query without a
//! handler.
//!
//! Without `.strict()`, an unhandled message is a `tracing` warning (see `trace.rs`).
//!
//! This binary is a deliberately broken program: a discovering `Bus::builder()` here sees every
//! mistake below. Builds with `discover(false)` see only what they register.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cqrs_core::prelude::*;
use cqrs_core::{
    AuthorizeLayer, BuildError, BuildProblem, Decorator, Location, MessageKind, ResourcePolicy,
    ResourceRequest, RetryLayer,
};

const SOURCE: &str = include_str!("build_errors.rs");

/// Whether `location` is in this file, on the line that declares `item`.
fn declares(location: &Location, item: &str) -> bool {
    let line = SOURCE.lines().nth(location.line as usize - 1).unwrap_or("");
    location.file.ends_with("build_errors.rs") && line.contains(item)
}

// Two handlers of one command.

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Ship {
    parcel: u32,
}

#[command_handler(Ship)]
struct ShipHandler;

impl CommandHandler<Ship> for ShipHandler {
    async fn handle(&self, _cmd: Ship, _cx: &mut CommandContext) -> Result<(), Error> {
        Ok(())
    }
}

#[command_handler(Ship)]
struct LegacyShipHandler;

impl CommandHandler<Ship> for LegacyShipHandler {
    async fn handle(&self, _cmd: Ship, _cx: &mut CommandContext) -> Result<(), Error> {
        Ok(())
    }
}

// Two handlers of one query.

#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = u32)]
struct GetInvoice {
    invoice_id: u32,
}

#[query_handler(GetInvoice)]
struct InvoiceHandler;

impl QueryHandler<GetInvoice> for InvoiceHandler {
    async fn handle(&self, q: GetInvoice, _cx: &QueryContext) -> Result<u32, Error> {
        Ok(q.invoice_id)
    }
}

#[query_handler(GetInvoice)]
struct InvoiceV2Handler;

impl QueryHandler<GetInvoice> for InvoiceV2Handler {
    async fn handle(&self, q: GetInvoice, _cx: &QueryContext) -> Result<u32, Error> {
        Ok(q.invoice_id * 2)
    }
}

// Dependencies nobody provides.

struct Mailer;
struct Templates;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct SendInvoice {
    invoice_id: u32,
}

#[command_handler(SendInvoice)]
struct SendInvoiceHandler {
    mailer: Arc<Mailer>,
    templates: Arc<Templates>,
    #[inject(default)]
    sent: Arc<AtomicUsize>,
}

impl CommandHandler<SendInvoice> for SendInvoiceHandler {
    async fn handle(&self, _cmd: SendInvoice, _cx: &mut CommandContext) -> Result<(), Error> {
        let _ = (&self.mailer, &self.templates, &self.sent);
        Ok(())
    }
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Dun;

#[command_handler(Dun)]
struct DunHandler {
    mailer: Arc<Mailer>,
    ledger: Arc<Mutex<Vec<u32>>>,
}

impl CommandHandler<Dun> for DunHandler {
    async fn handle(&self, _cmd: Dun, _cx: &mut CommandContext) -> Result<(), Error> {
        let _ = (&self.mailer, &self.ledger);
        Ok(())
    }
}

// A resource check without a resource policy.

#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = String)]
struct ShowInvoice {
    invoice_id: u32,
}

#[query_handler(ShowInvoice)]
#[authorize(resource = invoice_id)]
struct ShowInvoiceHandler;

impl QueryHandler<ShowInvoice> for ShowInvoiceHandler {
    async fn handle(&self, q: ShowInvoice, _cx: &QueryContext) -> Result<String, Error> {
        Ok(format!("invoice {}", q.invoice_id))
    }
}

// Two commands with one name.

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(name = "billing.void")]
struct VoidInvoice;

#[command_handler(VoidInvoice)]
struct VoidInvoiceHandler;

impl CommandHandler<VoidInvoice> for VoidInvoiceHandler {
    async fn handle(&self, _cmd: VoidInvoice, _cx: &mut CommandContext) -> Result<(), Error> {
        Ok(())
    }
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(name = "billing.void")]
struct VoidCreditNote;

#[command_handler(VoidCreditNote)]
struct VoidCreditNoteHandler;

impl CommandHandler<VoidCreditNote> for VoidCreditNoteHandler {
    async fn handle(&self, _cmd: VoidCreditNote, _cx: &mut CommandContext) -> Result<(), Error> {
        Ok(())
    }
}

// Messages without a handler (an error only under `.strict()`).

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Refund {
    invoice_id: u32,
}

#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = Vec<String>)]
struct AuditTrail;

/// Events need no handler.
#[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct InvoiceSent;

// A transaction without a database.

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Archive;

#[command_handler(Archive)]
#[transactional]
struct ArchiveHandler;

impl CommandHandler<Archive> for ArchiveHandler {
    async fn handle(&self, _cmd: Archive, _cx: &mut CommandContext) -> Result<(), Error> {
        Ok(())
    }
}

// Handlers the `discover(false)` tests misuse; fine as declared.

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Remind;

#[command_handler(Remind)]
#[timeout("5s")]
struct RemindHandler;

impl CommandHandler<Remind> for RemindHandler {
    async fn handle(&self, _cmd: Remind, _cx: &mut CommandContext) -> Result<(), Error> {
        Ok(())
    }
}

#[event_handler(InvoiceSent)]
struct LogInvoiceSent;

impl EventHandler<InvoiceSent> for LogInvoiceSent {
    async fn handle(&self, _e: &InvoiceSent, _cx: &mut EventContext) -> Result<(), Error> {
        Ok(())
    }
}

struct Everyone;

impl ResourcePolicy for Everyone {
    async fn allows(&self, _r: &ResourceRequest<'_>) -> Result<bool, Error> {
        Ok(true)
    }
}

fn problems(err: &BuildError) -> Vec<String> {
    let mut out: Vec<String> = err.problems().iter().map(summary).collect();
    out.sort();
    out
}

/// A problem in a few words, checking on the way that its locations point at the declarations.
fn summary(p: &BuildProblem) -> String {
    match p {
        BuildProblem::DuplicateHandler {
            kind,
            message,
            first,
            second,
        } => {
            assert!(declares(&first.1, &format!("struct {}", first.0)), "{p}");
            assert!(declares(&second.1, &format!("struct {}", second.0)), "{p}");
            let mut both = [first.0, second.0];
            both.sort();
            format!("duplicate {kind} {message}: {} {}", both[0], both[1])
        }
        BuildProblem::MissingDependency {
            handler,
            location,
            field,
            type_name,
        } => {
            assert!(declares(location, &format!("struct {handler}")), "{p}");
            format!("missing {handler}.{field}: {type_name}")
        }
        BuildProblem::NoHandler {
            kind,
            message,
            location,
        } => {
            let location = location.expect("a derived message knows where it is declared");
            assert!(declares(&location, &format!("struct {message}")), "{p}");
            format!("no handler for {kind} {message}")
        }
        BuildProblem::MissingBackend {
            handler,
            location,
            decorator,
            ..
        } => {
            assert!(declares(location, &format!("struct {handler}")), "{p}");
            format!("backend for {handler} {decorator}")
        }
        BuildProblem::DuplicateMessageName { kind, name, types } => {
            let mut both = [types.0, types.1];
            both.sort();
            format!("name {kind} {name}: {} {}", both[0], both[1])
        }
        BuildProblem::ConflictingDecorators {
            handler,
            location,
            what,
        } => {
            assert!(declares(location, &format!("struct {handler}")), "{p}");
            format!("conflict {handler}: {what}")
        }
        BuildProblem::MisplacedDecorator {
            handler,
            location,
            decorator,
            ..
        } => {
            assert!(declares(location, &format!("struct {handler}")), "{p}");
            format!("misplaced {decorator} on {handler}")
        }
        other => format!("{other}"),
    }
}

const EVERY_PROBLEM: [&str; 9] = [
    "backend for ArchiveHandler #[transactional]",
    "backend for ShowInvoiceHandler #[authorize(resource = ..)]",
    "duplicate command Ship: LegacyShipHandler ShipHandler",
    "duplicate query GetInvoice: InvoiceHandler InvoiceV2Handler",
    "missing DunHandler.ledger: Arc<Mutex<Vec<u32>>>",
    "missing DunHandler.mailer: Arc<Mailer>",
    "missing SendInvoiceHandler.mailer: Arc<Mailer>",
    "missing SendInvoiceHandler.templates: Arc<Templates>",
    "name command billing.void: build_errors::VoidCreditNote build_errors::VoidInvoice",
];

#[test]
fn a_discovering_build_lists_every_problem_of_the_program_at_once() {
    let err = Bus::builder().build().unwrap_err();
    assert_eq!(problems(&err), EVERY_PROBLEM);
}

#[test]
fn strict_adds_every_command_and_query_without_a_handler() {
    let err = Bus::builder().strict().build().unwrap_err();
    let mut expected: Vec<String> = EVERY_PROBLEM.iter().map(|s| s.to_string()).collect();
    expected.push("no handler for command Refund".into());
    expected.push("no handler for query AuditTrail".into());
    expected.sort();
    assert_eq!(problems(&err), expected, "events without handlers are fine");
}

#[test]
fn the_error_reads_as_a_numbered_list_with_locations() {
    let err = Bus::builder().strict().build().unwrap_err();
    let text = err.to_string();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("the bus cannot be built: 11 problems"));
    let numbered: Vec<&str> = lines.collect();
    assert_eq!(numbered.len(), 11, "{text}");
    for (i, line) in numbered.iter().enumerate() {
        assert!(line.starts_with(&format!("  {}. ", i + 1)), "{line}");
    }
    let here = "tests/tests/build_errors.rs:";
    assert!(text.contains(here), "{text}");
    assert!(
        text.contains("`SendInvoiceHandler` (tests/tests/build_errors.rs:"),
        "{text}"
    );
    assert!(text.contains("needs field `mailer: Arc<Mailer>`"), "{text}");
    assert!(
        text.contains("command `Refund` (tests/tests/build_errors.rs:"),
        "{text}"
    );
    assert!(text.contains("`.resource_policy(policy)`"), "{text}");
    assert_eq!(format!("{err:?}"), text, "Debug reads like Display");
    let boxed: Box<dyn std::error::Error> = Box::new(err);
    assert_eq!(boxed.to_string(), text);
}

#[test]
fn fixing_problems_removes_them_from_the_list() {
    let err = Bus::builder()
        .provide(Arc::new(Mailer))
        .provide(Arc::new(Templates))
        .provide(Arc::new(Mutex::new(Vec::<u32>::new())))
        .resource_policy(Everyone)
        .build()
        .unwrap_err();
    assert_eq!(
        problems(&err),
        [
            "backend for ArchiveHandler #[transactional]",
            "duplicate command Ship: LegacyShipHandler ShipHandler",
            "duplicate query GetInvoice: InvoiceHandler InvoiceV2Handler",
            "name command billing.void: build_errors::VoidCreditNote build_errors::VoidInvoice",
        ]
    );
}

#[test]
fn two_registered_handlers_of_one_command_name_both_in_registration_order() {
    let err = Bus::builder()
        .discover(false)
        .register::<ShipHandler>()
        .register::<LegacyShipHandler>()
        .build()
        .unwrap_err();
    match err.problems() {
        [
            BuildProblem::DuplicateHandler {
                kind,
                message,
                first,
                second,
            },
        ] => {
            assert_eq!(*kind, MessageKind::Command);
            assert_eq!(*message, "Ship");
            assert_eq!(first.0, "ShipHandler");
            assert_eq!(second.0, "LegacyShipHandler");
            assert!(declares(&first.1, "struct ShipHandler;"));
            assert!(declares(&second.1, "struct LegacyShipHandler;"));
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().starts_with(
        "the bus cannot be built: command `Ship` has two handlers: `ShipHandler` (tests/tests/build_errors.rs:"
    ));
}

#[test]
fn a_handler_registered_twice_counts_once() {
    let bus = Bus::builder()
        .discover(false)
        .register::<ShipHandler>()
        .register::<ShipHandler>()
        .build()
        .unwrap();
    assert!(bus.handles::<Ship>());
}

#[test]
fn an_instance_and_a_declared_handler_of_one_command_are_two_handlers() {
    let err = Bus::builder()
        .discover(false)
        .register::<ShipHandler>()
        .command_handler::<Ship, _>(LegacyShipHandler)
        .build()
        .unwrap_err();
    match err.problems() {
        [BuildProblem::DuplicateHandler { first, second, .. }] => {
            assert_eq!(first.0, "ShipHandler");
            assert_eq!(second.0, "LegacyShipHandler");
            assert!(
                second.1.file.ends_with("build_errors.rs"),
                "an instance is located where it was registered: {}",
                second.1
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_missing_dependency_of_every_handler_is_listed() {
    let err = Bus::builder()
        .discover(false)
        .register::<SendInvoiceHandler>()
        .register::<DunHandler>()
        .build()
        .unwrap_err();
    assert_eq!(
        problems(&err),
        [
            "missing DunHandler.ledger: Arc<Mutex<Vec<u32>>>",
            "missing DunHandler.mailer: Arc<Mailer>",
            "missing SendInvoiceHandler.mailer: Arc<Mailer>",
            "missing SendInvoiceHandler.templates: Arc<Templates>",
        ]
    );
    let bus = Bus::builder()
        .discover(false)
        .register::<SendInvoiceHandler>()
        .register::<DunHandler>()
        .provide(Arc::new(Mailer))
        .provide(Arc::new(Templates))
        .provide(Arc::new(Mutex::new(Vec::<u32>::new())))
        .build()
        .unwrap();
    assert!(bus.handles::<Dun>());
}

#[test]
fn a_transactional_handler_without_a_database_fails_the_build() {
    let err = Bus::builder()
        .discover(false)
        .register::<ArchiveHandler>()
        .build()
        .unwrap_err();
    assert_eq!(
        problems(&err),
        ["backend for ArchiveHandler #[transactional]"]
    );
    assert!(err.to_string().contains(".sqlite(pool)"), "{err}");
}

#[test]
fn two_messages_of_one_kind_with_one_name_fail_the_build() {
    let err = Bus::builder()
        .discover(false)
        .register::<VoidInvoiceHandler>()
        .register::<VoidCreditNoteHandler>()
        .build()
        .unwrap_err();
    assert_eq!(
        problems(&err),
        ["name command billing.void: build_errors::VoidCreditNote build_errors::VoidInvoice"]
    );
    assert!(
        err.to_string().contains("#[command(name = \"..\")]"),
        "{err}"
    );
}

#[test]
fn a_decorator_given_by_hand_goes_through_the_same_checks() {
    let err = Bus::builder()
        .discover(false)
        .register::<RemindHandler>()
        .register::<LogInvoiceSent>()
        .decorate::<RemindHandler>([Decorator::Timeout(Duration::from_secs(1))])
        .decorate::<LogInvoiceSent>([Decorator::Authorize(AuthorizeLayer::new())])
        .build()
        .unwrap_err();
    assert_eq!(
        problems(&err),
        [
            "conflict RemindHandler: a timeout",
            "misplaced #[authorize] on LogInvoiceSent",
        ]
    );

    let err = Bus::builder()
        .discover(false)
        .register::<ShipHandler>()
        .decorate::<ShipHandler>([
            Decorator::Retry(RetryLayer::new(2)),
            Decorator::Retry(RetryLayer::new(3)),
        ])
        .build()
        .unwrap_err();
    assert_eq!(problems(&err), ["conflict ShipHandler: `#[retry]`"]);
}

#[test]
fn strict_without_discovery_counts_only_the_registered_handlers_messages() {
    let bus = Bus::builder()
        .discover(false)
        .strict()
        .register::<ShipHandler>()
        .build()
        .unwrap();
    assert!(bus.handles::<Ship>());
    assert!(!bus.handles::<Refund>());
}
