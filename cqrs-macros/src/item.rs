//! The struct under a handler or decorator attribute, and the attributes beside it.

use proc_macro2::{TokenStream, TokenTree};
use syn::spanned::Spanned;
use syn::{Attribute, Fields, Ident, Item, ItemStruct, Type};

use crate::errors::Errors;

/// The handler attributes.
pub(crate) const HANDLER_ATTRIBUTES: &[&str] =
    &["command_handler", "query_handler", "event_handler"];

/// The decorator attributes.
pub(crate) const DECORATOR_ATTRIBUTES: &[&str] = &[
    "authorize",
    "cached_query",
    "exclusive",
    "retry",
    "timeout",
    "transactional",
];

/// What an attribute is on.
pub(crate) enum Target {
    /// A non-generic struct: the attribute does its work.
    Struct(Box<ItemStruct>),
    /// Something it cannot go on, given back as it should be emitted (with the other attributes
    /// of this crate removed, so that the mistake is reported once).
    Rejected(TokenStream),
}

/// Parses the item `attribute` is on. Handlers are non-generic structs; anything else is
/// reported (once, by the outermost attribute of this crate; see [`Target::Rejected`]).
pub(crate) fn target(input: TokenStream, attribute: &str, errors: &mut Errors) -> Target {
    let mut item: Item = match syn::parse2(input.clone()) {
        Ok(item) => item,
        Err(e) => {
            errors.push(e);
            return Target::Rejected(input);
        }
    };
    let generic = matches!(&item, Item::Struct(s) if !s.generics.params.is_empty() || s.generics.where_clause.is_some());
    if let Item::Struct(s) = item {
        if !generic {
            return Target::Struct(Box::new(s));
        }
        item = Item::Struct(s);
    }
    let is_handler = HANDLER_ATTRIBUTES.contains(&attribute);
    // A decorator leaves the report to a handler attribute below it, whose message is the more
    // useful one (what a handler is, how to register a generic one).
    if !is_handler && attrs_of(&item).iter().any(is_handler_attribute) {
        return Target::Rejected(quote::quote!(#item));
    }
    report(&item, attribute, is_handler, errors);
    strip_ours(&mut item);
    Target::Rejected(quote::quote!(#item))
}

fn report(item: &Item, attribute: &str, is_handler: bool, errors: &mut Errors) {
    let fix = "handlers are structs whose fields are their dependencies, e.g. `struct RegisterUserHandler { users: Arc<dyn Users> }`";
    match item {
        Item::Struct(s) => {
            let how = if is_handler {
                format!(
                    "implement the handler trait for the generic struct and register an instance by hand: \
                     `Bus::builder().{attribute}({}::<MyRepository> {{ .. }})`",
                    s.ident
                )
            } else {
                "put the decorator on a concrete handler struct".to_owned()
            };
            errors.spanned(
                &s.generics,
                format!(
                    "`#[{attribute}]` cannot go on a generic struct: the bus builds and registers one concrete type. \
                     Declare a concrete struct (a field such as `Arc<dyn Trait>` keeps it flexible), or {how}"
                ),
            );
        }
        Item::Enum(e) => errors.spanned(
            e.enum_token,
            format!("`#[{attribute}]` does not go on an enum: {fix}"),
        ),
        Item::Union(u) => errors.spanned(
            u.union_token,
            format!("`#[{attribute}]` does not go on a union: {fix}"),
        ),
        Item::Fn(f) => errors.spanned(
            f.sig.fn_token,
            format!(
                "`#[{attribute}]` does not go on a function: {fix}; the function becomes `handle` in the handler trait's `impl`"
            ),
        ),
        Item::Impl(i) => {
            let on = match &*i.self_ty {
                Type::Path(p) => p.path.segments.last().map_or_else(
                    || "the struct".to_owned(),
                    |s| format!("`struct {}`", s.ident),
                ),
                _ => "the struct".to_owned(),
            };
            errors.spanned(
                i.impl_token,
                format!("`#[{attribute}]` goes on the handler struct, not on its `impl`: move it to {on}"),
            );
        }
        other => errors.at(
            other.span(),
            format!("`#[{attribute}]` goes on a struct: {fix}"),
        ),
    }
}

fn attrs_of(item: &Item) -> &[Attribute] {
    match item {
        Item::Struct(s) => &s.attrs,
        Item::Enum(e) => &e.attrs,
        Item::Union(u) => &u.attrs,
        Item::Fn(f) => &f.attrs,
        Item::Impl(i) => &i.attrs,
        _ => &[],
    }
}

/// Removes the attributes of this crate from a rejected item: the outermost one has reported
/// the mistake, the others would only repeat it.
fn strip_ours(item: &mut Item) {
    let attrs = match item {
        Item::Struct(s) => &mut s.attrs,
        Item::Enum(e) => &mut e.attrs,
        Item::Union(u) => &mut u.attrs,
        Item::Fn(f) => &mut f.attrs,
        Item::Impl(i) => &mut i.attrs,
        _ => return,
    };
    attrs.retain(|a| !is_ours(a));
    if let Item::Struct(s) = item {
        for field in s.fields.iter_mut() {
            field.attrs.retain(|a| !a.path().is_ident("inject"));
        }
    }
}

/// The last segment of an attribute's path (`cqrs_core::retry` → `retry`).
pub(crate) fn attribute_name(attr: &Attribute) -> Option<String> {
    attr.path().segments.last().map(|s| s.ident.to_string())
}

fn is_handler_attribute(attr: &Attribute) -> bool {
    attribute_name(attr).is_some_and(|n| HANDLER_ATTRIBUTES.contains(&n.as_str()))
}

fn is_ours(attr: &Attribute) -> bool {
    attribute_name(attr).is_some_and(|n| {
        HANDLER_ATTRIBUTES.contains(&n.as_str()) || DECORATOR_ATTRIBUTES.contains(&n.as_str())
    })
}

/// The option `name = ..` written in a handler attribute on `item`, if any (its name's token).
pub(crate) fn handler_option(item: &ItemStruct, name: &str) -> Option<Ident> {
    item.attrs
        .iter()
        .filter(|a| is_handler_attribute(a))
        .find_map(|a| {
            let list = a.meta.require_list().ok()?;
            top_level_option(list.tokens.clone(), name)
        })
}

/// The first `name` followed by `=` at the top level of an attribute's arguments.
fn top_level_option(tokens: TokenStream, name: &str) -> Option<Ident> {
    let tokens: Vec<TokenTree> = tokens.into_iter().collect();
    let mut at_start = true;
    for (i, tt) in tokens.iter().enumerate() {
        match tt {
            TokenTree::Ident(ident) if at_start && ident == name => {
                if matches!(tokens.get(i + 1), Some(TokenTree::Punct(p)) if p.as_char() == '=') {
                    return Some(ident.clone());
                }
                at_start = false;
            }
            TokenTree::Punct(p) if p.as_char() == ',' => at_start = true,
            _ => at_start = false,
        }
    }
    None
}

/// The attribute `name` on `item`, if any.
pub(crate) fn attribute<'a>(item: &'a ItemStruct, name: &str) -> Option<&'a Attribute> {
    item.attrs
        .iter()
        .find(|a| attribute_name(a).as_deref() == Some(name))
}

/// Which of `names` a type mentions anywhere (`Arc<QueryBus>`, `Option<Bus>`), if any.
pub(crate) fn mentions(ty: &Type, names: &[&'static str]) -> Option<&'static str> {
    match ty {
        Type::Path(p) => p.path.segments.iter().find_map(|seg| {
            names
                .iter()
                .copied()
                .find(|n| seg.ident == n)
                .or_else(|| match &seg.arguments {
                    syn::PathArguments::AngleBracketed(args) => {
                        args.args.iter().find_map(|a| match a {
                            syn::GenericArgument::Type(t) => mentions(t, names),
                            _ => None,
                        })
                    }
                    _ => None,
                })
        }),
        Type::Reference(r) => mentions(&r.elem, names),
        Type::Paren(p) => mentions(&p.elem, names),
        Type::Group(g) => mentions(&g.elem, names),
        Type::Tuple(t) => t.elems.iter().find_map(|t| mentions(t, names)),
        Type::Array(a) => mentions(&a.elem, names),
        Type::Slice(s) => mentions(&s.elem, names),
        _ => None,
    }
}

/// What in a field's type keeps it from being shared between threads, by name: an `Rc`, a
/// `Cell` or `RefCell` outside a lock, a raw pointer. A handler serves many requests at once,
/// so such a field can never work; naming the culprit beats rustc's `Send`/`Sync` errors.
pub(crate) fn thread_unsafe(ty: &Type) -> Option<&'static str> {
    thread_unsafe_in(ty, false)
}

fn thread_unsafe_in(ty: &Type, locked: bool) -> Option<&'static str> {
    const LOCKS: &[&str] = &["Mutex", "RwLock", "ReentrantMutex"];
    match ty {
        Type::Path(p) => {
            let segments: Vec<String> = p
                .path
                .segments
                .iter()
                .map(|s| s.ident.to_string())
                .collect();
            let last = segments.last().map(String::as_str);
            let found = match last {
                Some("Rc") => Some("an `Rc`"),
                Some("Weak") if segments.iter().any(|s| s == "rc") => Some("an `rc::Weak`"),
                Some("RefCell") if !locked => Some("a `RefCell`"),
                Some("Cell") if !locked => Some("a `Cell`"),
                Some("UnsafeCell") if !locked => Some("an `UnsafeCell`"),
                _ => None,
            };
            found.or_else(|| {
                let locked = locked || last.is_some_and(|l| LOCKS.contains(&l));
                p.path.segments.last().and_then(|seg| match &seg.arguments {
                    syn::PathArguments::AngleBracketed(args) => {
                        args.args.iter().find_map(|a| match a {
                            syn::GenericArgument::Type(t) => thread_unsafe_in(t, locked),
                            _ => None,
                        })
                    }
                    _ => None,
                })
            })
        }
        Type::Ptr(_) => Some("a raw pointer"),
        Type::Reference(r) => thread_unsafe_in(&r.elem, locked),
        Type::Paren(p) => thread_unsafe_in(&p.elem, locked),
        Type::Group(g) => thread_unsafe_in(&g.elem, locked),
        Type::Tuple(t) => t.elems.iter().find_map(|t| thread_unsafe_in(t, locked)),
        Type::Array(a) => thread_unsafe_in(&a.elem, locked),
        Type::Slice(s) => thread_unsafe_in(&s.elem, locked),
        _ => None,
    }
}

/// The fields of a struct, in order, with their names (`users`, or `0` for a tuple struct).
pub(crate) fn fields(item: &ItemStruct) -> Vec<(String, &syn::Field)> {
    match &item.fields {
        Fields::Named(named) => named
            .named
            .iter()
            .filter_map(|f| f.ident.as_ref().map(|i| (i.to_string(), f)))
            .collect(),
        Fields::Unnamed(unnamed) => unnamed
            .unnamed
            .iter()
            .enumerate()
            .map(|(i, f)| (i.to_string(), f))
            .collect(),
        Fields::Unit => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    #[test]
    fn finds_top_level_options_only() {
        let found = |t: TokenStream| top_level_option(t, "timeout").map(|i| i.to_string());
        assert_eq!(found(quote!(Cmd, timeout = "1s")), Some("timeout".into()));
        assert_eq!(found(quote!(Cmd, reads_queries = "timeout")), None);
        assert_eq!(found(quote!(Timeout)), None);
        assert_eq!(found(quote!(timeout::Cmd)), None);
        assert_eq!(found(quote!(Cmd, invalidates = [timeout])), None);
    }

    #[test]
    fn finds_bus_fields() {
        let ty: Type = syn::parse_quote!(Option<Arc<QueryBus>>);
        assert_eq!(mentions(&ty, &["QueryBus", "Bus"]), Some("QueryBus"));
        let ty: Type = syn::parse_quote!(Arc<dyn Users>);
        assert_eq!(mentions(&ty, &["QueryBus", "Bus"]), None);
    }

    #[test]
    fn finds_what_cannot_cross_threads() {
        let found = |ty: Type| thread_unsafe(&ty);
        assert_eq!(found(syn::parse_quote!(Rc<Users>)), Some("an `Rc`"));
        assert_eq!(
            found(syn::parse_quote!(std::rc::Rc<Users>)),
            Some("an `Rc`")
        );
        assert_eq!(
            found(syn::parse_quote!(Arc<RefCell<Vec<u8>>>)),
            Some("a `RefCell`")
        );
        assert_eq!(
            found(syn::parse_quote!(std::rc::Weak<u8>)),
            Some("an `rc::Weak`")
        );
        assert_eq!(found(syn::parse_quote!(*const u8)), Some("a raw pointer"));
        assert_eq!(found(syn::parse_quote!(Arc<Mutex<RefCell<u8>>>)), None);
        assert_eq!(
            found(syn::parse_quote!(Arc<Mutex<Rc<u8>>>)),
            Some("an `Rc`")
        );
        assert_eq!(found(syn::parse_quote!(Arc<dyn Users>)), None);
        assert_eq!(found(syn::parse_quote!(std::sync::Weak<u8>)), None);
    }
}
