use cqrs_core::prelude::*;

#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = Option<String>)]
struct GetUser {
    user_id: u64,
}

#[query_handler(GetUser)]
#[cached_query(ttl = "5m", cache_none = "no")]
struct GetUserHandler;

impl QueryHandler<GetUser> for GetUserHandler {
    async fn handle(&self, _q: GetUser, _cx: &QueryContext) -> Result<Option<String>, Error> {
        Ok(None)
    }
}

fn main() {}
