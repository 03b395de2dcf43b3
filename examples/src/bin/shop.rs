//! The shop service: `cargo run -p cqrs-examples --bin shop` (see `cqrs_examples::shop`).

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    cqrs_examples::shop::cli::main(std::env::args().skip(1)).await
}
