use cqrs_core::prelude::*;

#[derive(Query, Debug, Clone)]
#[query(output = u64)]
struct GetProduct {
    id: u64,
}

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
#[command(output = ())]
struct SetPrice {
    product_id: u32,
    sku: u64,
}

#[command_handler(SetPrice, invalidates = [GetProduct(id = product)])]
struct SetPriceHandler;

impl CommandHandler<SetPrice> for SetPriceHandler {
    async fn handle(&self, _cmd: SetPrice, _cx: &mut CommandContext) -> Result<(), Error> {
        Ok(())
    }
}

fn main() {}
