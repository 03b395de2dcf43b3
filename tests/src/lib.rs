//! Behaviour and compile-fail tests of cqrs, through its public API.
