//! `#[command_handler(C, ..)]`, `#[query_handler(Q, ..)]`, `#[event_handler(E, ..)]`.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ItemStruct, LitStr, Type};

use crate::attr::{self, Kind, Leading, Positional, opt};
use crate::errors::Errors;
use crate::expand::call_site;
use crate::item::{self, Target};

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandlerKind {
    Command,
    Query,
    Event,
}

impl HandlerKind {
    fn attribute(self) -> &'static str {
        match self {
            HandlerKind::Command => "command_handler",
            HandlerKind::Query => "query_handler",
            HandlerKind::Event => "event_handler",
        }
    }
    fn message(self) -> &'static str {
        match self {
            HandlerKind::Command => "command",
            HandlerKind::Query => "query",
            HandlerKind::Event => "event",
        }
    }
    fn example(self) -> &'static str {
        match self {
            HandlerKind::Command => "RegisterUser",
            HandlerKind::Query => "GetUser",
            HandlerKind::Event => "UserRegistered",
        }
    }
    fn specs(self) -> &'static [attr::Spec] {
        const COMMAND: &[attr::Spec] = &[
            opt("timeout", Kind::Duration),
            opt("invalidates", Kind::Types),
            opt("reads_queries", Kind::Str),
            opt("emits", Kind::Types),
            opt("sends", Kind::Types),
        ];
        const QUERY: &[attr::Spec] = &[opt("timeout", Kind::Duration)];
        const EVENT: &[attr::Spec] = &[opt("timeout", Kind::Duration), opt("sends", Kind::Types)];
        match self {
            HandlerKind::Command => COMMAND,
            HandlerKind::Query => QUERY,
            HandlerKind::Event => EVENT,
        }
    }
}

/// The message a handler attribute names.
enum Message {
    Named(Box<Type>),
    /// Not named: the error becomes part of the message type (`[(); compile_error!(..)]`, a
    /// type rustc knows is erroneous), so the code that depends on it adds no errors.
    Missing(syn::Error),
}

pub(crate) fn expand(args: TokenStream, input: TokenStream, kind: HandlerKind) -> TokenStream {
    let attribute = kind.attribute();
    let mut errors = Errors::default();
    let mut args = attr::parse(
        args,
        attribute,
        Leading::Types(kind.example()),
        kind.specs(),
        &mut errors,
    );
    let message = message_type(&args.positional, kind, &mut errors);

    let mut item = match item::target(input, attribute, &mut errors) {
        Target::Struct(item) => item,
        Target::Rejected(item) => {
            let mut out = errors.to_compile_errors();
            if let Message::Missing(e) = &message {
                out.extend(e.to_compile_error());
            }
            out.extend(item);
            return out;
        }
    };
    item::remove_clashing(&mut item, attribute, &mut errors);

    let timeout = args.duration("timeout");
    if let Some((d, span)) = timeout {
        if d.is_zero() {
            errors.at(
                span,
                "a timeout of zero would fail every dispatch; give a positive duration",
            );
        }
        if let Some(second) = item::attribute(&item, "timeout") {
            errors.spanned(
                second.path(),
                format!(
                    "the timeout is given twice: here and in `#[{attribute}(.., timeout = ..)]`; keep one"
                ),
            );
        }
    }
    let invalidates = args.types("invalidates").unwrap_or_default();
    let flow = Flow {
        emits: args.types("emits").unwrap_or_default(),
        sends: args.types("sends").unwrap_or_default(),
    };
    let reads_queries = args.str("reads_queries");
    if let Some(reason) = reads_queries
        .as_ref()
        .filter(|r| r.value().trim().is_empty())
    {
        errors.spanned(
            reason,
            "`reads_queries` documents why this command handler reads the query side: say why, e.g. `reads_queries = \"look up the user id by email\"`",
        );
    }
    check_segregation(&item, kind, &message, reads_queries.is_some(), &mut errors);

    let build = build_fields(&mut item, &mut errors);
    let options = Options {
        timeout: timeout.map(|(d, _)| d),
        invalidates,
        flow,
        reads_queries,
    };
    let generated = generate(&item, kind, &message, &options, build);
    let mut out = errors.to_compile_errors();
    out.extend(item.to_token_stream());
    out.extend(generated);
    out
}

fn message_type(positional: &[Positional], kind: HandlerKind, errors: &mut Errors) -> Message {
    let attribute = kind.attribute();
    let mut types = positional.iter().filter_map(|p| match p {
        Positional::Type(t) => Some(&**t),
        Positional::Str(_) => None,
    });
    let Some(first) = types.next() else {
        return Message::Missing(syn::Error::new(
            Span::call_site(),
            format!(
                "`#[{attribute}]` needs the {} it handles: `#[{attribute}({})]`",
                kind.message(),
                kind.example()
            ),
        ));
    };
    for extra in types {
        errors.spanned(
            extra,
            format!(
                "`#[{attribute}]` handles exactly one {}; this is a second one: declare another handler struct for it",
                kind.message()
            ),
        );
    }
    Message::Named(Box::new(first.clone()))
}

/// DESIGN §3: a command handler does not read the query side unless it says why; a query
/// handler never holds the whole bus (it could send commands).
fn check_segregation(
    item: &ItemStruct,
    kind: HandlerKind,
    message: &Message,
    documented: bool,
    errors: &mut Errors,
) {
    let command = match message {
        Message::Named(ty) => ty.to_token_stream().to_string().replace(' ', ""),
        Message::Missing(_) => kind.example().to_owned(),
    };
    for (name, field) in item::fields(item) {
        match kind {
            HandlerKind::Command if !documented => {
                if let Some(bus) = item::mentions(&field.ty, &["QueryBus", "Bus"]) {
                    // The whole bus is also how one would send commands: say how to do that.
                    let sends = if bus == "Bus" {
                        ". To send commands, a handler needs no field: `cx.send(..)` sends them as children of this one"
                    } else {
                        ""
                    };
                    errors.spanned(
                        &field.ty,
                        format!(
                            "a command handler must not ask queries, and field `{name}` holds a `{bus}`: \
                             load what the command needs in its transaction (a repository, the event store) or carry it in the command. \
                             If this handler must ask queries, say why: \
                             `#[command_handler({command}, reads_queries = \"look up the user id by email\")]`{sends}"
                        ),
                    );
                }
            }
            HandlerKind::Query if item::mentions(&field.ty, &["Bus"]).is_some() => {
                errors.spanned(
                    &field.ty,
                    format!(
                        "a query handler must not hold the `Bus` (field `{name}`): with it, it could send commands. \
                         Hold a `QueryBus` to ask other queries"
                    ),
                );
            }
            _ => {}
        }
    }
}

/// Strips `#[inject(..)]` from the fields and returns the body of `Handler::build`.
fn build_fields(item: &mut ItemStruct, errors: &mut Errors) -> TokenStream {
    let p = quote!(::cqrs_core::__private);
    let mut lets = Vec::new();
    let mut inits = Vec::new();
    for (index, field) in item.fields.iter_mut().enumerate() {
        let mut default = false;
        field.attrs.retain(|a| {
            if !a.path().is_ident("inject") {
                return true;
            }
            match inject_options(a) {
                Ok(()) => default = true,
                Err(e) => errors.push(e),
            }
            false
        });
        if let Some(what) = item::thread_unsafe(&field.ty) {
            // The field's type becomes an erroneous one carrying the message, so rustc adds
            // none of its `Send`/`Sync` errors about the struct, its impls and their futures.
            let name = field
                .ident
                .as_ref()
                .map_or_else(|| index.to_string(), ToString::to_string);
            let error = syn::Error::new_spanned(
                &field.ty,
                format!(
                    "field `{name}` holds {what}, which cannot be shared between threads, and a handler serves many requests at once: \
                     use `Arc` (and `Mutex` or `RwLock` in place of `RefCell` or `Cell`)"
                ),
            )
            .to_compile_error();
            let original = &field.ty;
            field.ty = Type::Verbatim(quote!([#original; #error]));
        }
        let var = syn::Ident::new(&format!("__cqrs_field_{index}"), Span::call_site());
        let ty = &field.ty;
        let (member, label) = match &field.ident {
            Some(i) => (quote!(#i), i.to_string()),
            None => {
                let idx = syn::Index::from(index);
                (quote!(#idx), index.to_string())
            }
        };
        let written = quote!(#ty)
            .to_string()
            .replace(" < ", "<")
            .replace(" >", ">")
            .replace("< ", "<")
            .replace(" ,", ",");
        let written = LitStr::new(&written, ty.span());
        // Spanned on the field's type: a type that cannot be injected is reported there. The
        // resolver variable is not (see `expand::call_site`).
        let resolver = call_site("__cqrs_resolver");
        let resolve = if default {
            quote_spanned!(ty.span()=> ::cqrs_core::__private::resolve_or_default::<#ty>(#resolver, #label))
        } else {
            quote_spanned!(ty.span()=> #resolver.resolve::<#ty>(#label, #written))
        };
        lets.push(quote!(let #var: #p::Option<#ty> = #resolve;));
        inits.push(quote!(#member: #var?));
    }
    let construct = match &item.fields {
        syn::Fields::Unit => quote!(Self),
        _ => quote!(Self { #(#inits),* }),
    };
    quote! {
        #(#lets)*
        #p::Some(#construct)
    }
}

/// `#[inject(default)]` is the only form.
fn inject_options(attr: &syn::Attribute) -> syn::Result<()> {
    let only = "its only option is `default`: `#[inject(default)]` falls back to `Default` when the bus has no value of the field's type";
    let list = match &attr.meta {
        syn::Meta::List(list) => list,
        other => {
            return Err(syn::Error::new_spanned(
                other,
                format!("`#[inject]` needs an option; {only}"),
            ));
        }
    };
    list.parse_args_with(|input: syn::parse::ParseStream<'_>| {
        if input.is_empty() {
            return Err(syn::Error::new(
                list.delimiter.span().join(),
                format!("`#[inject]` needs an option; {only}"),
            ));
        }
        let word: syn::Ident = input.parse()?;
        if word != "default" {
            return Err(syn::Error::new(
                word.span(),
                format!("unknown option `{word}` for `#[inject]`; {only}"),
            ));
        }
        if !input.is_empty() {
            return Err(input.error(format!("unexpected tokens after `default`; {only}")));
        }
        Ok(())
    })
}

/// The events a handler says it emits and the commands it says it sends (`describe()` draws
/// the message flow from them).
struct Flow {
    emits: Vec<Type>,
    sends: Vec<Type>,
}

/// The options a handler attribute registers.
struct Options {
    timeout: Option<std::time::Duration>,
    invalidates: Vec<Type>,
    flow: Flow,
    reads_queries: Option<LitStr>,
}

impl Options {
    fn to_tokens(&self) -> TokenStream {
        let p = quote!(::cqrs_core::__private);
        let mut options = quote!(#p::HandlerOptions::new());
        if let Some(t) = self.timeout {
            let t = attr::duration_tokens(t);
            options = quote!(#options.timeout(#t));
        }
        let infos = |types: &[Type], info: TokenStream| {
            let infos = types
                .iter()
                .map(|t| quote_spanned!(t.span()=> #p::#info::<#t> as fn() -> #p::MessageInfo));
            quote!(&[#(#infos),*])
        };
        if !self.invalidates.is_empty() {
            let list = infos(&self.invalidates, quote!(query_info));
            options = quote!(#options.invalidates(#list));
        }
        if let Some(reason) = &self.reads_queries {
            options = quote!(#options.reads_queries(#reason));
        }
        if !self.flow.emits.is_empty() {
            let list = infos(&self.flow.emits, quote!(event_info));
            options = quote!(#options.emits(#list));
        }
        if !self.flow.sends.is_empty() {
            let list = infos(&self.flow.sends, quote!(command_info));
            options = quote!(#options.sends(#list));
        }
        options
    }
}

/// Gives every token the same span, so that the errors rustc reports on them are identical
/// (and merged) wherever the tokens are used.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tt| {
            if let proc_macro2::TokenTree::Group(g) = &tt {
                let mut group = proc_macro2::Group::new(g.delimiter(), respan(g.stream(), span));
                group.set_span(span);
                tt = proc_macro2::TokenTree::Group(group);
            } else {
                tt.set_span(span);
            }
            tt
        })
        .collect()
}

fn generate(
    item: &ItemStruct,
    kind: HandlerKind,
    message: &Message,
    options: &Options,
    build: TokenStream,
) -> TokenStream {
    let p = quote!(::cqrs_core::__private);
    let ident = &item.ident;
    let handler_name = ident.to_string();
    let location = quote_spanned!(ident.span()=> #p::Location::new(::core::file!(), ::core::line!(), ::core::column!()));
    let options = options.to_tokens();

    let (is_kind, assoc, handles) = match kind {
        HandlerKind::Command => (quote!(IsCommand), quote!(Command), quote!(HandlesCommand)),
        HandlerKind::Query => (quote!(IsQuery), quote!(Query), quote!(HandlesQuery)),
        HandlerKind::Event => (quote!(IsEvent), quote!(Event), quote!(HandlesEvent)),
    };
    // The message, named through its kind: a message of another kind is one error, on its
    // token, and everything that depends on it stays silent (see `__private::IsCommand`).
    let (alias, message) = match message {
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
    let accepts: &[&str] = match kind {
        HandlerKind::Command => &[
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
        HandlerKind::Event => &["AcceptsRetry", "AcceptsTimeout"],
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
