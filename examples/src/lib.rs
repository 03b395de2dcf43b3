//! Runnable examples of cqrs. The main one is [`shop`], a small HTTP service
//! (`cargo run -p cqrs-examples --bin shop`); `src/bin/quickstart.rs` is the shortest tour.

pub mod shop;
