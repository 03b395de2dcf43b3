//! Where something was declared in the user's source: what `describe()` and every build
//! problem point at.

use std::fmt;

/// Where something was declared in the user's source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Location {
    /// The file, as `file!()` gives it.
    pub file: &'static str,
    /// The line.
    pub line: u32,
    /// The column.
    pub column: u32,
}

impl Location {
    /// A location from its parts (the macros pass `file!()`, `line!()`, `column!()`).
    pub const fn new(file: &'static str, line: u32, column: u32) -> Self {
        Location { file, line, column }
    }

    /// The location of the caller of the function this is called in.
    #[track_caller]
    pub fn caller() -> Self {
        let at = std::panic::Location::caller();
        Location::new(at.file(), at.line(), at.column())
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}
