//! Collecting every mistake of one attribute before reporting, so that one compile shows them
//! all rather than one per attempt.

use proc_macro2::{Span, TokenStream};
use std::fmt::Display;

/// The errors found so far.
#[derive(Default)]
pub(crate) struct Errors {
    first: Option<syn::Error>,
}

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.first {
            Some(first) => first.combine(error),
            None => self.first = Some(error),
        }
    }

    pub(crate) fn at(&mut self, span: Span, message: impl Display) {
        self.push(syn::Error::new(span, message));
    }

    pub(crate) fn spanned(&mut self, tokens: impl quote::ToTokens, message: impl Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    /// Whether any error was found.
    pub(crate) fn any(&self) -> bool {
        self.first.is_some()
    }

    /// Adds the errors of `other`.
    pub(crate) fn extend(&mut self, other: Errors) {
        if let Some(e) = other.first {
            self.push(e);
        }
    }

    /// Removes the first error found and returns it.
    pub(crate) fn take_first(&mut self) -> Option<syn::Error> {
        let mut all = self.first.take()?.into_iter();
        let first = all.next();
        for rest in all {
            self.push(rest);
        }
        first
    }

    /// The errors as `compile_error!`s (nothing when there are none).
    pub(crate) fn to_compile_errors(&self) -> TokenStream {
        self.first
            .as_ref()
            .map(syn::Error::to_compile_error)
            .unwrap_or_default()
    }

    /// Every message, in order (for tests).
    #[cfg(test)]
    pub(crate) fn messages(&self) -> Vec<String> {
        self.first
            .clone()
            .into_iter()
            .flatten()
            .map(|e| e.to_string())
            .collect()
    }
}
