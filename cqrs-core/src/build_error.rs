//! Everything `build()` found wrong, all at once.

use std::fmt;

use crate::location::Location;
use crate::message::MessageKind;

/// Why the bus could not be built: every problem found, each saying where and how to fix it.
///
/// ```text
/// the bus cannot be built: 2 problems
///   1. command `RegisterUser` has two handlers: `RegisterUserHandler` (src/users.rs:40) and
///      `LegacyRegisterUser` (src/legacy.rs:12); keep exactly one
///   2. `SendWelcomeMail` (src/mail.rs:8) needs field `mailer: Arc<Mailer>`, which the bus does
///      not provide: add `.provide(..)` with a value of type `Arc<Mailer>`, or mark the field
///      `#[inject(default)]`
/// ```
#[derive(Clone)]
pub struct BuildError {
    problems: Vec<BuildProblem>,
}

impl BuildError {
    pub(crate) fn new(problems: Vec<BuildProblem>) -> Self {
        BuildError { problems }
    }

    /// Every problem found.
    pub fn problems(&self) -> &[BuildProblem] {
        &self.problems
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.as_slice() {
            [one] => write!(f, "the bus cannot be built: {one}"),
            many => {
                write!(f, "the bus cannot be built: {} problems", many.len())?;
                for (i, p) in many.iter().enumerate() {
                    write!(f, "\n  {}. {p}", i + 1)?;
                }
                Ok(())
            }
        }
    }
}

/// Prints the same as `Display`: `fn main() -> Result<(), Box<dyn Error>>` shows the problems
/// the way people read them. Use [`BuildError::problems`] to inspect them.
impl fmt::Debug for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for BuildError {}

/// One thing `build()` found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildProblem {
    /// Two handlers claim one command or query.
    DuplicateHandler {
        /// Command or query.
        kind: MessageKind,
        /// The message.
        message: &'static str,
        /// The first handler and where it is declared.
        first: (&'static str, Location),
        /// The second handler and where it is declared.
        second: (&'static str, Location),
    },
    /// A handler's field has no provided value of its type.
    MissingDependency {
        /// The handler.
        handler: &'static str,
        /// Where it is declared.
        location: Location,
        /// The field.
        field: &'static str,
        /// The field's type, as written.
        type_name: &'static str,
    },
    /// A command or query has no handler (only an error under [`strict`](crate::BusBuilder::strict)).
    NoHandler {
        /// Command or query.
        kind: MessageKind,
        /// The message.
        message: &'static str,
        /// Where it is declared.
        location: Option<Location>,
    },
    /// A decorator needs something the bus was not given.
    MissingBackend {
        /// The handler.
        handler: &'static str,
        /// Where it is declared.
        location: Location,
        /// The decorator, e.g. `#[transactional]`.
        decorator: &'static str,
        /// What is missing and how to add it.
        needs: &'static str,
    },
    /// A decorator is used on a handler it does not apply to (possible when a handler is
    /// registered by hand; the macros reject it at compile time).
    MisplacedDecorator {
        /// The handler.
        handler: &'static str,
        /// Where it is declared.
        location: Location,
        /// The decorator.
        decorator: &'static str,
        /// What it applies to.
        applies_to: &'static str,
    },
    /// The same concern is configured twice for one handler.
    ConflictingDecorators {
        /// The handler.
        handler: &'static str,
        /// Where it is declared.
        location: Location,
        /// What is configured twice.
        what: &'static str,
    },
    /// `invalidates = [Query(field = command_field)]` names a query whose answers it cannot
    /// target: the query is not cached, or the fields are not exactly its `vary_by` fields.
    InvalidationTarget {
        /// The command handler.
        handler: &'static str,
        /// Where it is declared.
        location: Location,
        /// The query.
        query: &'static str,
        /// What is wrong and how to fix it.
        problem: String,
    },
    /// Two message types of one kind have the same name (names key logs, caches and stores).
    DuplicateMessageName {
        /// Command, query or event.
        kind: MessageKind,
        /// The name.
        name: &'static str,
        /// The two types.
        types: (&'static str, &'static str),
    },
    /// A backend (a database, a broker) is configured in a way that cannot work.
    Backend {
        /// The backend, e.g. `nats`.
        backend: &'static str,
        /// What is wrong and how to fix it.
        problem: String,
    },
}

impl fmt::Display for BuildProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildProblem::DuplicateHandler {
                kind,
                message,
                first,
                second,
            } => write!(
                f,
                "{kind} `{message}` has two handlers: `{}` ({}) and `{}` ({}); a {kind} has exactly one handler, keep one",
                first.0, first.1, second.0, second.1
            ),
            BuildProblem::MissingDependency {
                handler,
                location,
                field,
                type_name,
            } => write!(
                f,
                "`{handler}` ({location}) needs field `{field}: {type_name}`, which the bus does not provide: add `.provide(..)` with a value of type `{type_name}`, or mark the field `#[inject(default)]`"
            ),
            BuildProblem::NoHandler {
                kind,
                message,
                location,
            } => {
                write!(f, "{kind} `{message}`")?;
                if let Some(at) = location {
                    write!(f, " ({at})")?;
                }
                write!(
                    f,
                    " has no handler: add `#[{kind}_handler({message})]` to a handler struct (this is an error because the bus is strict)"
                )
            }
            BuildProblem::MissingBackend {
                handler,
                location,
                decorator,
                needs,
            } => write!(f, "`{handler}` ({location}) is `{decorator}` but {needs}"),
            BuildProblem::MisplacedDecorator {
                handler,
                location,
                decorator,
                applies_to,
            } => write!(
                f,
                "`{decorator}` on `{handler}` ({location}) does not apply: it is for {applies_to}"
            ),
            BuildProblem::ConflictingDecorators {
                handler,
                location,
                what,
            } => write!(
                f,
                "`{handler}` ({location}) configures {what} twice; keep one"
            ),
            BuildProblem::InvalidationTarget {
                handler,
                location,
                query,
                problem,
            } => write!(
                f,
                "`{handler}` ({location}) invalidates `{query}` by field, but {problem}"
            ),
            BuildProblem::DuplicateMessageName { kind, name, types } => write!(
                f,
                "two {kind}s are named `{name}`: `{}` and `{}`; names key logs, caches and stores, so give one of them `#[{kind}(name = \"..\")]`",
                types.0, types.1
            ),
            BuildProblem::Backend { backend, problem } => write!(f, "{backend}: {problem}"),
        }
    }
}
