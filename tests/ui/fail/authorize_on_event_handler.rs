use cqrs_core::prelude::*;

#[derive(Event, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct UserRegistered {
    id: u64,
}

#[event_handler(UserRegistered)]
#[authorize(permissions = ["mail:send"])]
struct SendWelcomeMail;

impl EventHandler<UserRegistered> for SendWelcomeMail {
    async fn handle(&self, _e: &UserRegistered, _cx: &mut EventContext) -> Result<(), Error> {
        Ok(())
    }
}

fn main() {}
