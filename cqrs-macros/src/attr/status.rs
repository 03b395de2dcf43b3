//! The statuses that `on = [..]` and `rollback_on = [..]` name.

use syn::Ident;

use super::suggest::{closest, unknown};
use crate::errors::Errors;

/// The statuses `on = [..]` and `rollback_on = [..]` may name.
pub(crate) const STATUSES: &[&str] = &[
    "Validation",
    "Unauthenticated",
    "Forbidden",
    "NotFound",
    "Conflict",
    "Timeout",
    "Unavailable",
    "Internal",
    "NoHandler",
];

/// Checks a list of statuses, reporting unknown ones on their token.
pub(crate) fn statuses(list: &[Ident], option: &str, errors: &mut Errors) -> Vec<Ident> {
    let mut seen = Vec::<String>::new();
    let mut out = Vec::new();
    for status in list {
        let name = status.to_string();
        if !STATUSES.contains(&name.as_str()) {
            let all: Vec<String> = STATUSES.iter().map(|s| format!("`{s}`")).collect();
            let guess = closest(&name, STATUSES.iter().copied());
            errors.spanned(
                status,
                unknown(
                    "status",
                    &name,
                    &format!("in `{option}`"),
                    guess,
                    &all.join(", "),
                ),
            );
        } else if seen.contains(&name) {
            errors.spanned(status, format!("`{name}` is listed twice in `{option}`"));
        } else {
            seen.push(name);
            out.push(status.clone());
        }
    }
    out
}
