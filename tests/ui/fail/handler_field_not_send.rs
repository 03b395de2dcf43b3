use std::cell::RefCell;
use std::rc::Rc;

use cqrs_core::prelude::*;

#[derive(Command, Debug, Clone, serde::Serialize, serde::Deserialize)]
struct RegisterUser {
    email: String,
}

#[command_handler(RegisterUser)]
struct RegisterUserHandler {
    seen: Rc<RefCell<Vec<String>>>,
}

impl CommandHandler<RegisterUser> for RegisterUserHandler {
    async fn handle(&self, cmd: RegisterUser, _cx: &mut CommandContext) -> Result<(), Error> {
        self.seen.borrow_mut().push(cmd.email);
        Ok(())
    }
}

fn main() {}
