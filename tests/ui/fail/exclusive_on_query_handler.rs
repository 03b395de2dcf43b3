use cqrs_core::prelude::*;

#[derive(Query, Debug, Clone, Hash, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[query(output = u64)]
struct GetBalance {
    account: u64,
}

#[query_handler(GetBalance)]
#[exclusive(key = account)]
struct GetBalanceHandler;

impl QueryHandler<GetBalance> for GetBalanceHandler {
    async fn handle(&self, _q: GetBalance, _cx: &QueryContext) -> Result<u64, Error> {
        Ok(0)
    }
}

fn main() {}
