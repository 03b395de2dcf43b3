//! `#[transactional(isolation = "serializable", rollback_on = [..])]` on command and event handlers.

use quote::quote;
use syn::ItemStruct;

use crate::ast::TransactionalOptions;
use crate::attr::{Args, Spec};
use crate::check;
use crate::errors::Errors;
use crate::expand::decorator::{DecoratorAttribute, Generated, Handler};

impl DecoratorAttribute for TransactionalOptions {
    const ATTRIBUTE: &'static str = TransactionalOptions::ATTRIBUTE;
    const ACCEPTS: &'static str = "AcceptsTransactional";
    const SPECS: &'static [Spec] = TransactionalOptions::SPECS;

    fn read(args: Args, errors: &mut Errors) -> Option<Self> {
        Some(TransactionalOptions::from_args(args, errors))
    }

    fn check(&mut self, _item: &ItemStruct, errors: &mut Errors) {
        check::transactional(self, errors);
    }

    fn generate(&self, _handler: &Handler<'_>) -> Generated {
        let p = quote!(::cqrs_core::__private);
        let mut layer = quote!(#p::TransactionLayer::new());
        if let Some(variant) = &self.isolation {
            layer = quote!(#layer.isolation(#p::Isolation::#variant));
        }
        if let Some(on) = &self.rollback_on {
            layer = quote!(#layer.rollback_on(&[#(#p::Status::#on),*]));
        }
        Generated {
            items: Default::default(),
            decorator: quote!(#p::Decorator::Transactional(#layer)),
        }
    }
}
