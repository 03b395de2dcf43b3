//! `invalidates = [..]` mixing whole queries and field mappings, with a query from another
//! module and a generic command field type.
use cqrs_core::prelude::*;

mod catalogue {
    use cqrs_core::prelude::*;

    #[derive(Query, Debug, Clone)]
    #[query(output = u64)]
    pub struct GetProduct {
        pub id: u64,
        pub region: String,
    }

    #[derive(Query, Debug, Clone, Hash, PartialEq, Eq)]
    #[query(output = Vec<u64>)]
    pub struct ListProducts;
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = ())]
struct SetPrice {
    product_id: u64,
    region: String,
}

#[command_handler(
    SetPrice,
    invalidates = [catalogue::ListProducts, catalogue::GetProduct(id = product_id, region = region)]
)]
struct SetPriceHandler;

impl CommandHandler<SetPrice> for SetPriceHandler {
    async fn handle(&self, _cmd: SetPrice, _cx: &mut CommandContext) -> Result<(), Error> {
        Ok(())
    }
}

fn main() {}
