//! `#[inject(default)]` falls back to `Default` when nothing of the field's type was provided.
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use cqrs_core::prelude::*;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Tick;

#[derive(Clone, Default)]
struct Settings {
    verbose: bool,
}

#[command_handler(Tick)]
struct TickHandler {
    #[inject(default)]
    settings: Settings,
    #[inject(default)]
    ticks: Arc<AtomicU64>,
    #[inject(default)]
    label: String,
}

impl CommandHandler<Tick> for TickHandler {
    async fn handle(&self, _cmd: Tick, _cx: &mut CommandContext) -> Result<(), Error> {
        let _ = (self.settings.verbose, &self.ticks, &self.label);
        Ok(())
    }
}

#[tokio::main]
async fn main() {
    let bus = Bus::builder()
        .discover(false)
        .register::<TickHandler>()
        .build()
        .expect("nothing provided: every field falls back to Default");
    bus.send(Tick).await.unwrap();
}
