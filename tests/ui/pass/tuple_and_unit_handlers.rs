//! Tuple structs and unit structs are handlers too; tuple fields are injected by type.
use std::sync::Arc;

use cqrs_core::prelude::*;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Ping;

#[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Pinged;

struct Clock;

#[command_handler(Ping)]
struct PingHandler(Arc<Clock>, #[inject(default)] u64);

impl CommandHandler<Ping> for PingHandler {
    async fn handle(&self, _cmd: Ping, cx: &mut CommandContext) -> Result<(), Error> {
        let _clock = &self.0;
        let _count = self.1;
        cx.emit(Pinged);
        Ok(())
    }
}

#[event_handler(Pinged)]
struct OnPinged;

impl EventHandler<Pinged> for OnPinged {
    async fn handle(&self, _e: &Pinged, _cx: &mut EventContext) -> Result<(), Error> {
        Ok(())
    }
}

#[tokio::main]
async fn main() {
    let bus = Bus::builder()
        .provide(Arc::new(Clock))
        .build()
        .expect("the tuple fields resolved: Arc<Clock> provided, u64 by default");
    bus.send(Ping).await.unwrap();
}
