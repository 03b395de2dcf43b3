use cqrs_core::prelude::*;

#[derive(Query, Debug, Clone, PartialEq)]
#[query(output = Vec<String>)]
struct SearchUsers {
    text: String,
    min_score: f64,
}

#[query_handler(SearchUsers)]
#[cached_query(ttl = "1m", vary_by = [text, min_score])]
struct SearchUsersHandler;

impl QueryHandler<SearchUsers> for SearchUsersHandler {
    async fn handle(&self, _q: SearchUsers, _cx: &QueryContext) -> Result<Vec<String>, Error> {
        Ok(Vec::new())
    }
}

fn main() {}
