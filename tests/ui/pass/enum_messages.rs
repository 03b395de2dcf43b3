//! Commands, queries and events may be enums.
use cqrs_core::prelude::*;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = i64, name = "account.adjust")]
enum Adjust {
    Credit { amount: i64 },
    Debit(i64),
    Reset,
}

#[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[event(name = "account.changed")]
enum AccountChanged {
    Credited(i64),
    Debited(i64),
    Reset,
}

#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = i64)]
enum Total {
    All,
    Since(u64),
}

#[command_handler(Adjust)]
struct AdjustHandler;

impl CommandHandler<Adjust> for AdjustHandler {
    async fn handle(&self, cmd: Adjust, cx: &mut CommandContext) -> Result<i64, Error> {
        let (event, delta) = match cmd {
            Adjust::Credit { amount } => (AccountChanged::Credited(amount), amount),
            Adjust::Debit(amount) => (AccountChanged::Debited(amount), -amount),
            Adjust::Reset => (AccountChanged::Reset, 0),
        };
        cx.emit(event);
        Ok(delta)
    }
}

#[event_handler(AccountChanged)]
struct OnAccountChanged;

impl EventHandler<AccountChanged> for OnAccountChanged {
    async fn handle(&self, _e: &AccountChanged, _cx: &mut EventContext) -> Result<(), Error> {
        Ok(())
    }
}

#[query_handler(Total)]
#[cached_query(ttl = "1m")]
struct TotalHandler;

impl QueryHandler<Total> for TotalHandler {
    async fn handle(&self, _q: Total, _cx: &QueryContext) -> Result<i64, Error> {
        Ok(0)
    }
}

fn main() {
    assert_eq!(Adjust::NAME, "account.adjust");
    assert_eq!(AccountChanged::NAME, "account.changed");
    let bus = Bus::builder().build().expect("every handler discovered and built");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        assert_eq!(bus.send(Adjust::Credit { amount: 5 }).await.unwrap(), 5);
        assert_eq!(bus.send(Adjust::Debit(2)).await.unwrap(), -2);
        assert_eq!(bus.query(Total::Since(3)).await.unwrap(), 0);
        bus.publish(AccountChanged::Reset).await.unwrap();
    });
}
