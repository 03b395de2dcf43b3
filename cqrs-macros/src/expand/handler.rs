//! `#[command_handler(C, ..)]`, `#[query_handler(Q, ..)]`, `#[event_handler(E, ..)]`.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{LitStr, Type};

use crate::ast::{HandlerAttr, HandlerKind, HandlerStruct, Message};
use crate::attr::QueryTarget;
use crate::check;
use crate::errors::Errors;
use crate::expand::tokens::{self, call_site, respan};
use crate::item::{self, Target};

/// The whole of a handler attribute: the struct, the errors, and the impls that declare and
/// register the handler.
pub(crate) fn handler_attribute(
    args: TokenStream,
    input: TokenStream,
    kind: HandlerKind,
) -> TokenStream {
    let mut errors = Errors::default();
    let attr = HandlerAttr::parse(args, kind, &mut errors);
    let mut item = match item::target(input, kind.attribute(), &mut errors) {
        Target::Struct(item) => item,
        Target::Rejected(item) => {
            let mut out = errors.to_compile_errors();
            if let Message::Missing(e) = &attr.message {
                out.extend(e.to_compile_error());
            }
            out.extend(item);
            return out;
        }
    };
    check::clashing_attributes(&mut item, kind.attribute(), &mut errors);
    let mut handler = HandlerStruct::parse(*item, &mut errors);
    check::handler(&attr, &mut handler, &mut errors);
    let mut out = errors.to_compile_errors();
    out.extend(generate(&attr, handler));
    out
}

/// The struct as declared, with each field whose type cannot be shared between threads given
/// an erroneous type carrying the message, so that rustc adds none of its `Send`/`Sync` errors
/// about the struct, its impls and their futures; and the body of `Handler::build`.
fn build_fields(handler: &mut HandlerStruct) -> TokenStream {
    let p = quote!(::cqrs_core::__private);
    let mut lets = Vec::new();
    let mut inits = Vec::new();
    let fields = handler.item.fields.iter_mut();
    for (index, (field, dependency)) in fields.zip(&handler.dependencies).enumerate() {
        if let Some(error) = &dependency.unshareable {
            let error = error.to_compile_error();
            let original = &field.ty;
            field.ty = Type::Verbatim(quote!([#original; #error]));
        }
        let var = syn::Ident::new(&format!("__cqrs_field_{index}"), Span::call_site());
        let ty = &field.ty;
        let member = &dependency.member;
        let label = member.to_token_stream().to_string();
        let written = quote!(#ty)
            .to_string()
            .replace(" < ", "<")
            .replace(" >", ">")
            .replace("< ", "<")
            .replace(" ,", ",");
        let written = LitStr::new(&written, ty.span());
        // Spanned on the field's type: a type that cannot be injected is reported there. The
        // resolver variable is not (see `tokens::call_site`).
        let resolver = call_site("__cqrs_resolver");
        let resolve = if dependency.or_default {
            quote_spanned!(ty.span()=> ::cqrs_core::__private::resolve_or_default::<#ty>(#resolver, #label))
        } else {
            quote_spanned!(ty.span()=> #resolver.resolve::<#ty>(#label, #written))
        };
        lets.push(quote!(let #var: #p::Option<#ty> = #resolve;));
        inits.push(quote!(#member: #var?));
    }
    let construct = match &handler.item.fields {
        syn::Fields::Unit => quote!(Self),
        _ => quote!(Self { #(#inits),* }),
    };
    quote! {
        #(#lets)*
        #p::Some(#construct)
    }
}

/// `HandlerOptions::new()` and the options written. `message`: the handled message's type.
fn handler_options(attr: &HandlerAttr, message: &TokenStream) -> TokenStream {
    let p = quote!(::cqrs_core::__private);
    let mut options = quote!(#p::HandlerOptions::new());
    if let Some((t, _)) = attr.timeout {
        let t = tokens::duration(t);
        options = quote!(#options.timeout(#t));
    }
    let infos = |types: &[Type], info: TokenStream| {
        let infos = types
            .iter()
            .map(|t| quote_spanned!(t.span()=> #p::#info::<#t> as fn() -> #p::MessageInfo));
        quote!(&[#(#infos),*])
    };
    let (whole, by_field): (Vec<&QueryTarget>, Vec<&QueryTarget>) =
        attr.invalidates.iter().partition(|t| t.fields.is_empty());
    if !whole.is_empty() {
        let queries: Vec<Type> = whole.iter().map(|t| t.query.clone()).collect();
        let list = infos(&queries, quote!(query_info));
        options = quote!(#options.invalidates(#list));
    }
    if !by_field.is_empty() {
        let targets = by_field.iter().map(|t| answer_target(t, message));
        options = quote!(#options.invalidates_answers(&[#(#targets),*]));
    }
    if let Some(reason) = &attr.reads_queries {
        options = quote!(#options.reads_queries(#reason));
    }
    if !attr.emits.is_empty() {
        let list = infos(&attr.emits, quote!(event_info));
        options = quote!(#options.emits(#list));
    }
    if !attr.sends.is_empty() {
        let list = infos(&attr.sends, quote!(command_info));
        options = quote!(#options.sends(#list));
    }
    if let Some(group) = &attr.group {
        options = quote!(#options.group(#group));
    }
    options
}

/// `AnswerTarget::new(query, fields, hash)` for `invalidates = [Query(field = command_field)]`:
/// `hash` hashes the command's field mapped to a query field, as the query's key hashes it.
/// Each field access is spanned on the user's field name, so that a field the command or the
/// query lacks is reported there, and a closure never called checks that the mapped fields
/// have one type (`SameFieldType`, spanned on the command's field).
fn answer_target(target: &QueryTarget, message: &TokenStream) -> TokenStream {
    let p = quote!(::cqrs_core::__private);
    let query = &target.query;
    let (command_var, query_var, hasher, field) = (
        call_site("command"),
        call_site("query"),
        call_site("hasher"),
        call_site("field"),
    );
    let names: Vec<String> = target.fields.iter().map(|(q, _)| q.to_string()).collect();
    let arms = target.fields.iter().zip(&names).map(|((_, c), name)| {
        let hash = quote_spanned!(c.span()=> #p::hash_key_field(&(*#command_var).#c, #hasher));
        quote!(#name => { #hash; true })
    });
    let checks = target.fields.iter().map(|(q, c)| {
        let query_field = quote_spanned!(q.span()=> &(*#query_var).#q);
        quote_spanned!(c.span()=> #p::same_field_type(&(*#command_var).#c, #query_field);)
    });
    let info = quote_spanned!(query.span()=> #p::query_info::<#query> as fn() -> #p::MessageInfo);
    quote!(#p::AnswerTarget::new(#info, &[#(#names),*], {
        fn __cqrs_answer_target(
            #command_var: &(dyn #p::Any + #p::Send + #p::Sync),
            #field: &::core::primitive::str,
            #hasher: &mut dyn #p::Hasher,
        ) -> ::core::primitive::bool {
            let #p::Some(#command_var) = #command_var.downcast_ref::<#message>() else {
                return false;
            };
            let _check = |#query_var: &#query| { #(#checks)* };
            match #field {
                #(#arms)*
                _ => false,
            }
        }
        __cqrs_answer_target
    }))
}

/// The struct and the impls that declare and register it.
fn generate(attr: &HandlerAttr, mut handler: HandlerStruct) -> TokenStream {
    let p = quote!(::cqrs_core::__private);
    let build = build_fields(&mut handler);
    let item = &handler.item;
    let kind = attr.kind;
    let ident = &item.ident;
    let handler_name = ident.to_string();
    let location = quote_spanned!(ident.span()=> #p::Location::new(::core::file!(), ::core::line!(), ::core::column!()));
    let (is_kind, assoc, handles) = match kind {
        HandlerKind::Command => (quote!(IsCommand), quote!(Command), quote!(HandlesCommand)),
        HandlerKind::Query => (quote!(IsQuery), quote!(Query), quote!(HandlesQuery)),
        HandlerKind::Event => (quote!(IsEvent), quote!(Event), quote!(HandlesEvent)),
    };
    // The message, named through its kind: a message of another kind is one error, on its
    // token, and everything that depends on it stays silent (see `__private::IsCommand`).
    let (alias, message) = match &attr.message {
        Message::Named(ty) => (
            TokenStream::new(),
            respan(quote!(<#ty as #p::#is_kind>::#assoc), ty.span()),
        ),
        Message::Missing(e) => {
            let error = e.to_compile_error();
            (
                quote!(type __CqrsMessage = [(); #error];),
                quote!(__CqrsMessage),
            )
        }
    };
    let options = handler_options(attr, &message);
    let accepts: &[&str] = match kind {
        HandlerKind::Command => &[
            "AcceptsExclusive",
            "AcceptsTransactional",
            "AcceptsAuthorize",
            "AcceptsRetry",
            "AcceptsTimeout",
        ],
        HandlerKind::Query => &[
            "AcceptsCachedQuery",
            "AcceptsAuthorize",
            "AcceptsRetry",
            "AcceptsTimeout",
        ],
        HandlerKind::Event => &["AcceptsTransactional", "AcceptsRetry", "AcceptsTimeout"],
    };
    let accepts = accepts.iter().map(|name| {
        let name = syn::Ident::new(name, Span::call_site());
        quote! {
            #[automatically_derived]
            impl #p::#name for #ident { type Message = #message; }
        }
    });
    let registration = quote_spanned! {ident.span()=>
        <#ident as #p::#handles<#message>>::REGISTRATION
    };
    quote! {
        #item
        #[doc(hidden)]
        const _: () = {
            #alias
            #[automatically_derived]
            impl #p::Declared for #ident {
                const NAME: &'static ::core::primitive::str = #handler_name;
                const LOCATION: #p::Location = #location;
                const OPTIONS: #p::HandlerOptions = #options;
            }
            #[automatically_derived]
            impl #p::Handler for #ident {
                type Message = #message;
                const REGISTRATION: #p::HandlerRegistration = #registration;
                fn build(__cqrs_resolver: &mut #p::Resolver<'_>) -> #p::Option<Self> {
                    #build
                }
            }
            #(#accepts)*
            #p::inventory::submit! {
                #registration
            }
        };
    }
}
