//! Code generation, one module per macro.

pub(crate) mod authorize;
pub(crate) mod cached_query;
pub(crate) mod decorator;
pub(crate) mod handler;
pub(crate) mod message;
pub(crate) mod retry;
pub(crate) mod timeout;
pub(crate) mod transactional;
