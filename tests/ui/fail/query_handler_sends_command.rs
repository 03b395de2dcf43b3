use cqrs_core::prelude::*;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct MarkSeen {
    user_id: u64,
}

#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = Option<String>)]
struct GetUser {
    user_id: u64,
}

#[query_handler(GetUser)]
struct GetUserHandler;

impl QueryHandler<GetUser> for GetUserHandler {
    async fn handle(&self, q: GetUser, cx: &QueryContext) -> Result<Option<String>, Error> {
        cx.send(MarkSeen { user_id: q.user_id }).await?;
        Ok(None)
    }
}

fn main() {}
