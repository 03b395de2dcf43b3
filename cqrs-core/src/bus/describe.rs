//! `bus.describe()`: every message, its handlers, their layers and source locations.

use std::any::TypeId;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use super::checks::{Candidate, KnownMessage};
use crate::pipeline::Layers;

use crate::location::Location;
use crate::message::MessageKind;

/// What the bus knows, as `bus.describe()` returns it. `Display` prints it for people.
///
/// ```text
/// commands
///   RegisterUser -> RegisterUserHandler  (src/users.rs:40)
///       trace -> authorize(permissions=[user:create]) -> validate -> idempotency -> retry(max_attempts=3, on=[Conflict]) -> handler
/// queries
///   GetUser -> GetUserHandler  (src/users.rs:70)
///       trace -> cache(ttl=5m, vary_by=[user_id], max_entries=10000) -> handler
/// events
///   UserRegistered -> SendWelcomeMail (src/mail.rs:8), UpdateDirectory (src/directory.rs:21)
/// ```
#[derive(Debug, Clone, Default)]
pub struct Description {
    /// Every message, commands first, then queries, then events, each sorted by name.
    pub messages: Vec<MessageDescription>,
}

/// One message and its handlers.
#[derive(Debug, Clone)]
pub struct MessageDescription {
    /// Command, query or event.
    pub kind: MessageKind,
    /// The stable name.
    pub name: &'static str,
    /// The Rust type.
    pub type_name: &'static str,
    /// Where the message is declared, when its derive registered it.
    pub location: Option<Location>,
    /// Its handlers (at most one for commands and queries).
    pub handlers: Vec<HandlerDescription>,
}

/// One handler and its pipeline.
#[derive(Debug, Clone)]
pub struct HandlerDescription {
    /// The handler's name.
    pub name: &'static str,
    /// Where it is declared.
    pub location: Location,
    /// Its layers, outermost first, with their options.
    pub layers: Vec<String>,
    /// For a command handler that reads the query side: the documented reason.
    pub reads_queries: Option<&'static str>,
    /// The events it declares it emits (`emits = [..]`).
    pub emits: Vec<&'static str>,
    /// The commands it declares it sends (`sends = [..]`).
    pub sends: Vec<&'static str>,
    /// The queries whose cache it invalidates (`invalidates = [..]`).
    pub invalidates: Vec<&'static str>,
}

impl Description {
    /// The description of the message named `name`, if any.
    pub fn message(&self, name: &str) -> Option<&MessageDescription> {
        self.messages.iter().find(|m| m.name == name)
    }

    /// The message flow as a Mermaid flowchart: each command to its handler, to the events it
    /// emits, to their handlers, to the commands those send (from the handlers' `emits = [..]`
    /// and `sends = [..]`), and queries to their handlers.
    ///
    /// ```text
    /// flowchart LR
    ///   c_PlaceOrder[/"PlaceOrder"/] --> h_PlaceOrderHandler["PlaceOrderHandler"]
    ///   h_PlaceOrderHandler -- emits --> e_OrderPlaced(["OrderPlaced"])
    ///   e_OrderPlaced --> h_ReserveStock["ReserveStock"]
    /// ```
    pub fn to_mermaid(&self) -> String {
        fn id(prefix: &str, name: &str) -> String {
            let clean: String = name
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            format!("{prefix}_{clean}")
        }
        let mut out = String::from("flowchart LR\n");
        let mut line = |s: String| {
            out.push_str("  ");
            out.push_str(&s);
            out.push('\n');
        };
        for m in &self.messages {
            let node = match m.kind {
                MessageKind::Command => format!("{}[/\"{}\"/]", id("c", m.name), m.name),
                MessageKind::Query => format!("{}[(\"{}\")]", id("q", m.name), m.name),
                MessageKind::Event => format!("{}([\"{}\"])", id("e", m.name), m.name),
            };
            line(node);
        }
        for m in &self.messages {
            let from = id(
                match m.kind {
                    MessageKind::Command => "c",
                    MessageKind::Query => "q",
                    MessageKind::Event => "e",
                },
                m.name,
            );
            for h in &m.handlers {
                let handler = id("h", h.name);
                line(format!("{handler}[\"{}\"]", h.name));
                line(format!("{from} --> {handler}"));
                for e in &h.emits {
                    line(format!("{handler} -- emits --> {}", id("e", e)));
                }
                for c in &h.sends {
                    line(format!("{handler} -- sends --> {}", id("c", c)));
                }
                for q in &h.invalidates {
                    line(format!("{handler} -. invalidates .-> {}", id("q", q)));
                }
            }
        }
        out
    }

    /// The messages of one kind.
    pub fn of_kind(&self, kind: MessageKind) -> impl Iterator<Item = &MessageDescription> {
        self.messages.iter().filter(move |m| m.kind == kind)
    }
}

impl fmt::Display for Description {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (kind, title) in [
            (MessageKind::Command, "commands"),
            (MessageKind::Query, "queries"),
            (MessageKind::Event, "events"),
        ] {
            let mut messages = self.of_kind(kind).peekable();
            if messages.peek().is_none() {
                continue;
            }
            writeln!(f, "{title}")?;
            for m in messages {
                write!(f, "  {} -> ", m.name)?;
                if m.handlers.is_empty() {
                    write!(f, "(no handler)")?;
                    if let Some(at) = m.location {
                        write!(f, "  declared at {at}")?;
                    }
                    writeln!(f)?;
                    continue;
                }
                if kind == MessageKind::Event {
                    let list: Vec<String> = m
                        .handlers
                        .iter()
                        .map(|h| format!("{} ({})", h.name, h.location))
                        .collect();
                    writeln!(f, "{}", list.join(", "))?;
                    continue;
                }
                for h in &m.handlers {
                    writeln!(f, "{}  ({})", h.name, h.location)?;
                    writeln!(f, "      {}", h.layers.join(" -> "))?;
                    if let Some(reason) = h.reads_queries {
                        writeln!(f, "      reads queries: {reason}")?;
                    }
                    if !h.emits.is_empty() {
                        writeln!(f, "      emits: {}", h.emits.join(", "))?;
                    }
                    if !h.sends.is_empty() {
                        writeln!(f, "      sends: {}", h.sends.join(", "))?;
                    }
                }
            }
        }
        Ok(())
    }
}

pub(crate) fn describe(
    messages: &BTreeMap<(MessageKind, &'static str), KnownMessage>,
    layered: &[(Candidate, Layers)],
    command_middleware: usize,
    query_middleware: usize,
) -> Description {
    // Handlers grouped by message type first: filtering every handler for every message is
    // quadratic, and was most of `build()` with 1,000 handlers.
    let mut by_message: HashMap<TypeId, Vec<&(Candidate, Layers)>> = HashMap::new();
    for handler in layered {
        by_message
            .entry((handler.0.message.type_id)())
            .or_default()
            .push(handler);
    }
    let mut out = Vec::with_capacity(messages.len());
    for ((kind, name), known) in messages {
        let mut handlers: Vec<HandlerDescription> = by_message
            .remove(&(known.info.type_id)())
            .unwrap_or_default()
            .into_iter()
            .map(|(c, layers)| HandlerDescription {
                name: c.handler_name,
                location: c.location,
                layers: layers.describe(
                    *kind,
                    known.info.validated,
                    match kind {
                        MessageKind::Command => command_middleware,
                        MessageKind::Query => query_middleware,
                        MessageKind::Event => 0,
                    },
                ),
                reads_queries: c.options.reads_queries,
                emits: c.options.emits.iter().map(|e| e().name).collect(),
                sends: c.options.sends.iter().map(|c| c().name).collect(),
                invalidates: layers.invalidates.iter().map(|i| i.query).collect(),
            })
            .collect();
        handlers.sort_by_key(|h| h.name);
        out.push(MessageDescription {
            kind: *kind,
            name,
            type_name: known.info.type_name,
            location: known.location,
            handlers,
        });
    }
    Description { messages: out }
}
