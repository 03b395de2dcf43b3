use cqrs_core::prelude::*;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct DeleteDocument {
    owner_id: u64,
}

#[command_handler(DeleteDocument)]
#[authorize(resource = "owner_id")]
struct DeleteDocumentHandler;

impl CommandHandler<DeleteDocument> for DeleteDocumentHandler {
    async fn handle(&self, _cmd: DeleteDocument, _cx: &mut CommandContext) -> Result<(), Error> {
        Ok(())
    }
}

fn main() {}
