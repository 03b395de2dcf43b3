//! Messages, handlers and decorators declared by a `macro_rules!`.
//!
//! Teams generate families of similar queries and commands with declarative macros. Every name
//! in such an expansion carries the `macro_rules!` hygiene, so code the attribute macros generate
//! around a user's token (a `vary_by` field, a `resource` field, an injected field's type) must
//! still resolve its own variables. Each item below is written in the macro, token for token,
//! and each test checks that the attribute works there, not only that it compiles.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cqrs_core::prelude::*;
use cqrs_core::{ResourcePolicy, ResourceRequest};

#[derive(Default)]
struct Reads(AtomicUsize);

impl Reads {
    fn bump(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// A cached query keyed on `user_id` only, and its handler, which counts its runs through an
/// injected `Arc<Reads>`.
macro_rules! cached_lookup {
    ($query:ident, $handler:ident) => {
        #[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
        #[query(output = String)]
        struct $query {
            #[allow(dead_code)]
            user_id: u32,
            locale: String,
        }

        #[query_handler($query)]
        #[cached_query(ttl = "5m", vary_by = [user_id])]
        struct $handler {
            reads: Arc<Reads>,
        }

        impl QueryHandler<$query> for $handler {
            async fn handle(&self, q: $query, _cx: &QueryContext) -> Result<String, Error> {
                Ok(format!("{} read #{}", q.locale, self.reads.bump()))
            }
        }
    };
}

cached_lookup!(NameOf, NameOfHandler);
cached_lookup!(EmailOf, EmailOfHandler);

/// A command authorized on one of its fields by the resource policy.
macro_rules! owned_command {
    ($command:ident, $handler:ident) => {
        #[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
        #[command(output = String)]
        struct $command {
            document: String,
        }

        #[command_handler($command)]
        #[authorize(resource = document)]
        struct $handler;

        impl CommandHandler<$command> for $handler {
            async fn handle(&self, c: $command, _cx: &mut CommandContext) -> Result<String, Error> {
                Ok(format!("archived {}", c.document))
            }
        }
    };
}

owned_command!(Archive, ArchiveHandler);

/// Documents whose name starts with the caller's id are theirs.
struct Owners;

impl ResourcePolicy for Owners {
    async fn allows(&self, r: &ResourceRequest<'_>) -> Result<bool, Error> {
        Ok(r.resource_id.starts_with(&format!("{}/", r.principal.id())))
    }
}

fn bus(reads: &Arc<Reads>) -> Bus {
    Bus::builder()
        .discover(false)
        .register::<NameOfHandler>()
        .register::<EmailOfHandler>()
        .register::<ArchiveHandler>()
        .provide(reads.clone())
        .resource_policy(Owners)
        .build()
        .expect("handlers declared by a macro_rules! build like any other")
}

#[tokio::test]
async fn vary_by_fields_named_inside_a_macro_rules_key_the_cache() {
    let reads = Arc::new(Reads::default());
    let bus = bus(&reads);
    let ask = |user_id, locale: &str| NameOf {
        user_id,
        locale: locale.to_owned(),
    };

    let first = bus.query(ask(1, "en")).await.unwrap();
    assert_eq!(first, "en read #1");
    // Same `user_id`, other locale: `vary_by = [user_id]` makes it the same entry.
    assert_eq!(bus.query(ask(1, "fr")).await.unwrap(), first);
    assert_eq!(reads.get(), 1);
    // Another user is another entry.
    assert_eq!(bus.query(ask(2, "fr")).await.unwrap(), "fr read #2");
    // The second query of the same macro has its own region.
    let email = EmailOf {
        user_id: 1,
        locale: "de".to_owned(),
    };
    assert_eq!(bus.query(email).await.unwrap(), "de read #3");
    assert_eq!(reads.get(), 3);
}

#[tokio::test]
async fn a_resource_field_named_inside_a_macro_rules_reaches_the_policy() {
    let bus = bus(&Arc::new(Reads::default()));
    let alice = Arc::new(Principal::new("alice"));
    let archive = |document: &str| {
        Envelope::new(Archive {
            document: document.to_owned(),
        })
        .principal(alice.clone())
    };

    assert_eq!(
        bus.send(archive("alice/notes")).await.unwrap(),
        "archived alice/notes"
    );
    let refused = bus.send(archive("bob/notes")).await.unwrap_err();
    assert_eq!(refused.status(), Status::Forbidden, "{refused}");
}
