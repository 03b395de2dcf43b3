//! A command handler may hold a `QueryBus` when it documents why (`reads_queries = ".."`);
//! a query handler may always hold one.
use cqrs_core::prelude::*;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Login {
    email: String,
}

#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = Option<u64>)]
struct UserIdByEmail {
    email: String,
}

#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = bool)]
struct CanLogin {
    email: String,
}

#[command_handler(Login, reads_queries = "look up the user id by email")]
struct LoginHandler {
    queries: QueryBus,
}

impl CommandHandler<Login> for LoginHandler {
    async fn handle(&self, cmd: Login, _cx: &mut CommandContext) -> Result<(), Error> {
        let _id = self
            .queries
            .query(UserIdByEmail { email: cmd.email })
            .await?;
        Ok(())
    }
}

#[query_handler(UserIdByEmail)]
struct UserIdByEmailHandler;

impl QueryHandler<UserIdByEmail> for UserIdByEmailHandler {
    async fn handle(&self, _q: UserIdByEmail, _cx: &QueryContext) -> Result<Option<u64>, Error> {
        Ok(None)
    }
}

#[query_handler(CanLogin)]
struct CanLoginHandler {
    queries: QueryBus,
}

impl QueryHandler<CanLogin> for CanLoginHandler {
    async fn handle(&self, q: CanLogin, _cx: &QueryContext) -> Result<bool, Error> {
        let id = self.queries.query(UserIdByEmail { email: q.email }).await?;
        Ok(id.is_some())
    }
}

#[tokio::main]
async fn main() {
    let bus = Bus::builder().build().expect("every handler discovered and built");
    bus.send(Login { email: "ada@example.com".into() }).await.unwrap();
    assert!(!bus.query(CanLogin { email: "ada@example.com".into() }).await.unwrap());
}
