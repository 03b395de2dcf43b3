use cqrs_core::prelude::*;

#[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
#[query(output = u64)]
struct CountUsers;

#[query_handler(CountUsers)]
struct CountUsersHandler {
    bus: Bus,
}

impl QueryHandler<CountUsers> for CountUsersHandler {
    async fn handle(&self, _q: CountUsers, _cx: &QueryContext) -> Result<u64, Error> {
        Ok(0)
    }
}

fn main() {}
