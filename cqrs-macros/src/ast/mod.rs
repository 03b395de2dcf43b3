//! The typed model of each macro's input: what the user wrote, read from the tokens, with the
//! span of each part for error messages.
//!
//! Reading reports what cannot be read (an unknown option, a value of the wrong kind); what
//! spans several options or attributes is checked in `crate::check`, and `crate::expand`
//! generates code from the checked model.

pub(crate) mod decorator;
pub(crate) mod handler;
pub(crate) mod message;

pub(crate) use self::decorator::{
    AuthorizeOptions, CacheOptions, ExclusiveOptions, Jitter, RetryOptions, TimeoutOption,
    TransactionalOptions,
};
pub(crate) use self::handler::{HandlerAttr, HandlerKind, HandlerStruct, Message};
pub(crate) use self::message::{MessageInput, MessageKind};
