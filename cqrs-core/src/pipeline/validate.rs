//! Layer 5: the message's field rules.
//!
//! Rules are declared on the message with the `validator` crate (`#[derive(Validate)]` and
//! `#[validate(..)]` on fields); the message derive notices them and implements
//! [`Message::validate_message`](crate::Message::validate_message), which this layer calls.
//! A message without rules keeps the default, which the compiler removes entirely.
//! Validation runs after authorization and before idempotency, the cache and any retry: a
//! message that breaks its rules never reaches the handler, and is never retried.
//!
//! Why `validator` rather than `garde`: both are maintained, but `validator`'s attribute is the
//! `#[validate(..)]` the message derives document, it is the one most Rust web services already use (with
//! axum and serde, so users meet no new syntax), and its errors carry a rule code and its
//! parameters per field, which map one to one onto [`FieldError`] (`field`, `code`, `message`)
//! with readable default messages. `garde` (`#[garde(..)]`) reports a path and a message per
//! failure, with no rule code to put in `FieldError::code`, and every field must carry a rule
//! (or `skip`), which is heavier on messages that check one field of many. The dependency sits
//! behind the default feature `validator`.

#[cfg(feature = "validator")]
use crate::Error;
#[cfg(feature = "validator")]
use crate::error::FieldError;

/// Turns `validator`'s errors into [`Error::Validation`], one [`FieldError`] per failing rule,
/// with nested fields as `address.city` and list items as `items[2].name`.
#[cfg(feature = "validator")]
pub(crate) fn from_validator(errors: &validator::ValidationErrors) -> Error {
    let mut fields = Vec::new();
    collect(errors, "", &mut fields);
    fields.sort_by(|a, b| a.field.cmp(&b.field));
    Error::validation(fields)
}

#[cfg(feature = "validator")]
fn collect(errors: &validator::ValidationErrors, prefix: &str, out: &mut Vec<FieldError>) {
    use validator::ValidationErrorsKind;
    for (field, kind) in errors.errors() {
        let path = match (prefix.is_empty(), field.as_ref()) {
            (_, "__all__") => prefix.to_owned(),
            (true, f) => f.to_owned(),
            (false, f) => format!("{prefix}.{f}"),
        };
        match kind {
            ValidationErrorsKind::Field(list) => {
                for e in list {
                    let message = e
                        .message
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_else(|| default_message(&e.code, e));
                    out.push(FieldError::new(path.clone(), e.code.to_string(), message));
                }
            }
            ValidationErrorsKind::Struct(inner) => collect(inner, &path, out),
            ValidationErrorsKind::List(items) => {
                for (index, inner) in items {
                    collect(inner, &format!("{path}[{index}]"), out);
                }
            }
        }
    }
}

#[cfg(feature = "validator")]
fn default_message(code: &str, e: &validator::ValidationError) -> String {
    let param = |name: &str| e.params.get(name).map(ToString::to_string);
    match code {
        "email" => "must be an email address".to_owned(),
        "url" => "must be a URL".to_owned(),
        "required" => "is required".to_owned(),
        "length" => match (param("min"), param("max"), param("equal")) {
            (_, _, Some(eq)) => format!("must have length {eq}"),
            (Some(min), Some(max), _) => format!("must have length between {min} and {max}"),
            (Some(min), None, _) => format!("must have length at least {min}"),
            (None, Some(max), _) => format!("must have length at most {max}"),
            _ => "has the wrong length".to_owned(),
        },
        "range" => match (param("min"), param("max")) {
            (Some(min), Some(max)) => format!("must be between {min} and {max}"),
            (Some(min), None) => format!("must be at least {min}"),
            (None, Some(max)) => format!("must be at most {max}"),
            _ => "is out of range".to_owned(),
        },
        "must_match" => format!(
            "must match `{}`",
            param("other").unwrap_or_default().trim_matches('"')
        ),
        "contains" => format!("must contain {}", param("needle").unwrap_or_default()),
        "regex" => "has an invalid format".to_owned(),
        other => format!("failed the `{other}` rule"),
    }
}

#[cfg(all(test, feature = "validator"))]
mod tests {
    use super::*;
    use crate::Status;

    #[test]
    fn nested_errors_get_paths() {
        let mut inner = validator::ValidationErrors::new();
        inner.add("city", validator::ValidationError::new("required"));
        let mut outer = validator::ValidationErrors::new();
        outer.add("email", validator::ValidationError::new("email"));
        let mut length = validator::ValidationError::new("length");
        length.add_param("min".into(), &8);
        outer.add("password", length);
        outer.merge_self("address", Err(inner));
        let e = from_validator(&outer);
        assert_eq!(e.status(), Status::Validation);
        let got: Vec<_> = e
            .fields()
            .iter()
            .map(|f| (f.field.as_str(), f.message.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("address.city", "is required"),
                ("email", "must be an email address"),
                ("password", "must have length at least 8"),
            ]
        );
    }
}
