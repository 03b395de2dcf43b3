//! `#[timeout("2s")]`: the handler's overall deadline, retries included.

use quote::quote;
use syn::ItemStruct;

use crate::ast::TimeoutOption;
use crate::attr::{Args, Leading};
use crate::check;
use crate::errors::Errors;
use crate::expand::decorator::{DecoratorAttribute, Generated, Handler};
use crate::expand::tokens;

impl DecoratorAttribute for TimeoutOption {
    const ATTRIBUTE: &'static str = TimeoutOption::ATTRIBUTE;
    const ACCEPTS: &'static str = "AcceptsTimeout";
    const LEADING: Leading = TimeoutOption::LEADING;

    fn read(args: Args, errors: &mut Errors) -> Option<Self> {
        TimeoutOption::from_args(args, errors)
    }

    fn check(&mut self, item: &ItemStruct, errors: &mut Errors) {
        check::timeout(self, item, errors);
    }

    fn generate(&self, _handler: &Handler<'_>) -> Generated {
        let d = tokens::duration(self.duration);
        Generated {
            items: Default::default(),
            decorator: quote!(::cqrs_core::__private::Decorator::Timeout(#d)),
        }
    }
}
