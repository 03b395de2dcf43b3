//! A message type may be generic; a handler names one concrete instance of it.
use cqrs_core::prelude::*;
use serde::{Serialize, de::DeserializeOwned};

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(bound = "")]
#[command(output = u64)]
struct Import<T: Clone + Serialize + DeserializeOwned + Send + Sync + 'static> {
    rows: Vec<T>,
}

#[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(bound = "")]
struct Imported<T: Clone + Serialize + DeserializeOwned + Send + Sync + 'static> {
    rows: Vec<T>,
}

#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = Vec<u64>)]
struct Recent<T: Clone + Send + Sync + 'static> {
    limit: T,
}

#[command_handler(Import<String>)]
struct ImportNames;

impl CommandHandler<Import<String>> for ImportNames {
    async fn handle(&self, cmd: Import<String>, cx: &mut CommandContext) -> Result<u64, Error> {
        let n = cmd.rows.len() as u64;
        cx.emit(Imported { rows: cmd.rows });
        Ok(n)
    }
}

#[event_handler(Imported<String>)]
struct OnImportedNames;

impl EventHandler<Imported<String>> for OnImportedNames {
    async fn handle(&self, _e: &Imported<String>, _cx: &mut EventContext) -> Result<(), Error> {
        Ok(())
    }
}

#[query_handler(Recent<u32>)]
#[cached_query(ttl = "1m", vary_by = [limit])]
struct RecentHandler;

impl QueryHandler<Recent<u32>> for RecentHandler {
    async fn handle(&self, q: Recent<u32>, _cx: &QueryContext) -> Result<Vec<u64>, Error> {
        Ok((0..u64::from(q.limit)).collect())
    }
}

#[tokio::main]
async fn main() {
    let bus = Bus::builder().build().expect("every handler discovered and built");
    let rows = vec!["ada".to_owned(), "bob".to_owned()];
    assert_eq!(bus.send(Import { rows }).await.unwrap(), 2);
    assert_eq!(bus.query(Recent { limit: 3u32 }).await.unwrap(), vec![0, 1, 2]);
}
