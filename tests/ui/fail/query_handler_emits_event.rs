use cqrs_core::prelude::*;

#[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct UserViewed {
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
        cx.emit(UserViewed { user_id: q.user_id });
        Ok(None)
    }
}

fn main() {}
