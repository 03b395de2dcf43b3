//! "Did you mean": the known name closest to a misspelt one, and the message that offers it.

use super::Spec;

pub(crate) fn known_list(specs: &[Spec]) -> String {
    let names: Vec<String> = specs.iter().map(|s| format!("`{}`", s.name)).collect();
    names.join(", ")
}

/// The known name closest to a misspelt one, if it is close (edit distance at most 2, ignoring
/// case).
pub(crate) fn closest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    known
        .into_iter()
        .map(|k| (distance(&name, &k.to_ascii_lowercase()), k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// "unknown option `x` for `#[retry]`: did you mean `y`? The options are ..", where `place`
/// is "for `#[retry]`".
pub(crate) fn unknown(
    what: &str,
    name: &dyn std::fmt::Display,
    place: &str,
    guess: Option<&str>,
    known: &str,
) -> String {
    let plural = if what.ends_with('s') {
        format!("{what}es")
    } else {
        format!("{what}s")
    };
    match guess {
        Some(guess) => format!(
            "unknown {what} `{name}` {place}: did you mean `{guess}`? The {plural} are {known}"
        ),
        None => format!("unknown {what} `{name}` {place}; the {plural} are {known}"),
    }
}

fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}
