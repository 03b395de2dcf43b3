//! Code generation, one module per macro, from the checked model (`crate::ast`).
//!
//! Each macro's entry function runs the phases in order: read the model, check it, generate.
//! Generated code names only `::cqrs_core::__private` and `::core`, and mentions only the
//! options the user wrote: `cqrs-core` decides every default.

pub(crate) mod authorize;
pub(crate) mod cached_query;
pub(crate) mod decorator;
pub(crate) mod exclusive;
pub(crate) mod handler;
pub(crate) mod message;
pub(crate) mod retry;
pub(crate) mod timeout;
pub(crate) mod tokens;
pub(crate) mod transactional;
