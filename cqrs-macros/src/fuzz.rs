//! The fuzz campaign over every macro's input: generated attribute arguments and items, each of
//! which must be answered without a panic, by output that parses as Rust items (the item given
//! back, with a `compile_error!` when the input was refused).
//!
//! ```sh
//! CQRS_FUZZ_CASES=1000000 cargo test -p cqrs-macros --release fuzz -- --ignored --nocapture
//! ```
//!
//! Inputs come from a small grammar of what users write: option names of every macro, values of
//! every kind (durations, numbers at the edges of their types, strings, paths, lists), stray
//! punctuation, nested groups, and items that are and are not handler structs. A seed
//! (`CQRS_FUZZ_SEED`) makes a run repeatable; the corpus is the grammar, nothing is stored.

use std::panic::{AssertUnwindSafe, catch_unwind};

use proc_macro2::TokenStream;

use crate::ast::{
    AuthorizeOptions, CacheOptions, ExclusiveOptions, HandlerKind, MessageKind, RetryOptions,
    TimeoutOption, TransactionalOptions,
};
use crate::expand::decorator::decorator_attribute;
use crate::expand::handler::handler_attribute;
use crate::expand::message::derive_message;

const WORDS: &[&str] = &[
    "timeout",
    "invalidates",
    "emits",
    "sends",
    "reads_queries",
    "max_attempts",
    "delay",
    "backoff",
    "max_delay",
    "jitter",
    "on",
    "ttl",
    "vary_by",
    "cache_none",
    "max_entries",
    "public",
    "permissions",
    "roles",
    "resource",
    "admin_override",
    "isolation",
    "rollback_on",
    "key",
    "output",
    "name",
    "Conflict",
    "Unavailable",
    "Validation",
    "NoHandler",
    "Internal",
    "true",
    "false",
    "GetUser",
    "RegisterUser",
    "u64",
    "Option",
    "String",
    "Vec",
    "self",
    "crate",
    "super",
    "r#type",
    "id",
    "user_id",
    "a",
    "_",
    "inject",
    "default",
    "serializable",
];
const LITERALS: &[&str] = &[
    "\"5m\"",
    "\"15s\"",
    "\"0s\"",
    "\"250ms\"",
    "\"1m30s\"",
    "\"5 minutes\"",
    "\"\"",
    "\"abc\"",
    "\"serializable\"",
    "\"read_committed\"",
    "\"user:create\"",
    "\"99999999999999999999d\"",
    "0",
    "1",
    "3",
    "-1",
    "2.0",
    "0.5",
    "1e309",
    "-0.0",
    "18446744073709551616",
    "4294967296",
    "'c'",
    "b\"x\"",
    "1u8",
    "0x10",
];
const PUNCT: &[&str] = &[
    "=", ",", "::", "<", ">", "-", "!", "#", "&", ";", ".", "?", "+", "*", "@",
];
const ITEMS: &[&str] = &[
    "struct H;",
    "pub struct H { a: std::sync::Arc<u32>, #[inject(default)] b: u32 }",
    "struct H(u32);",
    "struct H<T>(T);",
    "pub(crate) struct H { #[inject(nonsense)] a: u32 }",
    "enum H { A }",
    "union H { a: u32 }",
    "fn h() {}",
    "impl H {}",
    "#[retry] struct H;",
    "#[cached_query(ttl = \"5m\")] #[timeout(\"1s\")] struct H;",
];

/// xorshift64*: enough randomness for a grammar, and repeatable from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
}

/// Arguments: mostly `name = value` lists, with everything else mixed in.
fn arguments(rng: &mut Rng, depth: u32, out: &mut String) {
    let n = rng.below(6);
    for i in 0..n {
        if i > 0 && rng.below(8) != 0 {
            out.push_str(", ");
        }
        match rng.below(10) {
            0..=4 => {
                out.push_str(rng.pick(WORDS));
                if rng.below(5) != 0 {
                    out.push_str(" = ");
                    value(rng, depth, out);
                }
            }
            5 => out.push_str(rng.pick(WORDS)),
            6 => value(rng, depth, out),
            7 => out.push_str(rng.pick(PUNCT)),
            _ => {
                out.push_str(rng.pick(WORDS));
                out.push_str("::");
                out.push_str(rng.pick(WORDS));
            }
        }
        out.push(' ');
    }
}

fn value(rng: &mut Rng, depth: u32, out: &mut String) {
    match rng.below(if depth > 2 { 3 } else { 6 }) {
        0 => out.push_str(rng.pick(LITERALS)),
        1 => out.push_str(rng.pick(WORDS)),
        2 => {
            out.push_str(rng.pick(WORDS));
            out.push('<');
            out.push_str(rng.pick(WORDS));
            out.push('>');
        }
        3 => {
            out.push('[');
            arguments(rng, depth + 1, out);
            out.push(']');
        }
        4 => {
            out.push('(');
            arguments(rng, depth + 1, out);
            out.push(')');
        }
        _ => {
            out.push('{');
            arguments(rng, depth + 1, out);
            out.push('}');
        }
    }
}

fn tokens(source: &str) -> Option<TokenStream> {
    source.parse().ok()
}

/// One generated case through one macro; `None` when the generated text does not even lex
/// (rustc would not call the macro).
fn one_case(rng: &mut Rng) -> Option<(usize, TokenStream)> {
    let mut args = String::new();
    if rng.below(3) != 0 {
        // Handler attributes lead with the message type.
        args.push_str(rng.pick(WORDS));
        args.push_str(", ");
    }
    arguments(rng, 0, &mut args);
    let args = tokens(&args)?;
    let item = tokens(rng.pick(ITEMS))?;
    let which = rng.below(12);
    let output = match which {
        0 => handler_attribute(args, item, HandlerKind::Command),
        1 => handler_attribute(args, item, HandlerKind::Query),
        2 => handler_attribute(args, item, HandlerKind::Event),
        3 => decorator_attribute::<RetryOptions>(args, item),
        4 => decorator_attribute::<CacheOptions>(args, item),
        5 => decorator_attribute::<AuthorizeOptions>(args, item),
        6 => decorator_attribute::<TimeoutOption>(args, item),
        7 => decorator_attribute::<TransactionalOptions>(args, item),
        11 => decorator_attribute::<ExclusiveOptions>(args, item),
        kind => {
            let (attribute, kind) = match kind {
                8 => ("command", MessageKind::Command),
                9 => ("query", MessageKind::Query),
                _ => ("event", MessageKind::Event),
            };
            let derive = tokens(&format!(
                "#[{attribute}({args})] {}",
                [
                    "pub struct M { a: u32 }",
                    "struct M;",
                    "enum M { A }",
                    "union M { a: u32 }"
                ][rng.below(4)]
            ))?;
            derive_message(derive, kind).unwrap_or_else(syn::Error::into_compile_error)
        }
    };
    Some((which, output))
}

#[test]
#[ignore = "the fuzz campaign: CQRS_FUZZ_CASES=1000000 cargo test -p cqrs-macros --release fuzz -- --ignored"]
fn fuzz_every_macro_input() {
    let cases: u64 = std::env::var("CQRS_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let seed: u64 = std::env::var("CQRS_FUZZ_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0x00c0_ffee);
    let mut rng = Rng(seed | 1);
    let (mut lexed, mut refused, mut accepted) = (0u64, 0u64, 0u64);
    for case in 0..cases {
        let state = rng.0;
        let result = catch_unwind(AssertUnwindSafe(|| one_case(&mut rng)));
        let Ok(result) = result else {
            panic!("case {case} (rng state {state:#x}) panicked");
        };
        let Some((which, output)) = result else {
            continue;
        };
        lexed += 1;
        if let Err(error) = syn::parse2::<syn::File>(output.clone()) {
            panic!(
                "case {case} (macro {which}, rng state {state:#x}): output is not Rust items ({error}):\n{output}"
            );
        }
        if output.to_string().contains("compile_error") {
            refused += 1;
        } else {
            accepted += 1;
        }
    }
    println!(
        "{cases} generated, {lexed} lexed and expanded: {accepted} accepted, {refused} answered with compile errors, 0 panics"
    );
    assert!(
        accepted > 0 && refused > 0,
        "the grammar reaches both outcomes"
    );
}
