//! Code generation, one module per macro.

pub(crate) mod authorize;
pub(crate) mod cached_query;
pub(crate) mod decorator;
pub(crate) mod handler;
pub(crate) mod message;
pub(crate) mod retry;
pub(crate) mod timeout;
pub(crate) mod transactional;

/// A variable of generated code, named at the call site.
///
/// Generated code is often spanned on a user's token (a field name, a type) so that the
/// compiler reports a mistake right under it. A span also carries hygiene: when the token comes
/// from a `macro_rules!`, a variable written with its span resolves in that macro's context,
/// where the generated function's own parameters do not exist. Such variables are built here
/// and interpolated instead.
pub(crate) fn call_site(name: &str) -> proc_macro2::Ident {
    proc_macro2::Ident::new(name, proc_macro2::Span::call_site())
}
