//! Durations in attributes: `"250ms"`, `"15s"`, `"5m"`, `"2h"`, `"1d"`, `"1m30s"`.

use std::time::Duration;

const HINT: &str = "A duration is an integer and a unit with no space between (`ms`, `s`, `m`, `h`, `d`), e.g. \"250ms\", \"15s\", \"1m30s\"";

/// Parses a duration: one or more `<integer><unit>` with no spaces, units `ms`, `s`, `m`, `h`,
/// `d` (and `us`, `ns` for completeness). The error says what to write instead when it can
/// guess (`"5 minutes"` → `"5m"`).
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    strict(text).map_err(|problem| match suggest(text) {
        Some(fix) => format!("unparsable duration \"{text}\": did you mean \"{fix}\"? {HINT}"),
        None => format!("unparsable duration \"{text}\": {problem}. {HINT}"),
    })
}

fn strict(text: &str) -> Result<Duration, String> {
    if text.is_empty() {
        return Err("it is empty".to_owned());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            let bad = rest.chars().next().unwrap_or(' ');
            return Err(if bad.is_whitespace() {
                "it has a space".to_owned()
            } else {
                format!("`{bad}` is not a digit")
            });
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| "the number is too large".to_owned())?;
        rest = &rest[digits..];
        let unit_len = rest.chars().take_while(char::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "" => {
                return Err(match rest.chars().next() {
                    Some(c) if c.is_whitespace() => "it has a space".to_owned(),
                    Some(c) => format!("`{c}` is not a unit"),
                    None => "the number has no unit".to_owned(),
                });
            }
            other => unit_duration(value, other).ok_or_else(|| match known_unit(other) {
                Some(_) => "it is too large".to_owned(),
                None => format!("`{other}` is not a unit"),
            })?,
        };
        total = total
            .checked_add(part)
            .ok_or_else(|| "it is too large".to_owned())?;
    }
    Ok(total)
}

/// The canonical unit a spelling stands for.
fn known_unit(unit: &str) -> Option<&'static str> {
    Some(match unit {
        "ns" => "ns",
        "us" | "µs" => "us",
        "ms" => "ms",
        "s" => "s",
        "m" => "m",
        "h" => "h",
        "d" => "d",
        _ => return None,
    })
}

fn unit_duration(value: u64, unit: &str) -> Option<Duration> {
    let seconds = |factor: u64| value.checked_mul(factor).map(Duration::from_secs);
    match known_unit(unit)? {
        "ns" => Some(Duration::from_nanos(value)),
        "us" => Some(Duration::from_micros(value)),
        "ms" => Some(Duration::from_millis(value)),
        "s" => seconds(1),
        "m" => seconds(60),
        "h" => seconds(3600),
        "d" => seconds(86_400),
        _ => None,
    }
}

/// What the user probably meant, written the way `parse` accepts: `"5 minutes"` → `"5m"`,
/// `"2 sec"` → `"2s"`, `"1.5s"` → `"1500ms"`.
fn suggest(text: &str) -> Option<String> {
    let long = |word: &str| -> Option<&'static str> {
        Some(match word.to_ascii_lowercase().as_str() {
            "ns" | "nanosecond" | "nanoseconds" | "nanos" => "ns",
            "us" | "microsecond" | "microseconds" | "micros" => "us",
            "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" | "millis" => "ms",
            "s" | "sec" | "secs" | "second" | "seconds" => "s",
            "m" | "min" | "mins" | "minute" | "minutes" => "m",
            "h" | "hr" | "hrs" | "hour" | "hours" => "h",
            "d" | "day" | "days" => "d",
            _ => return None,
        })
    };
    // Split into numbers and words, whatever the spacing: "1 h 30 min" → [1, h, 30, min].
    let mut parts: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut numeric = false;
    for c in text.trim().chars() {
        let is_num = c.is_ascii_digit() || c == '.';
        if c.is_whitespace() || c == ',' {
            if !current.is_empty() {
                parts.push(std::mem::take(&mut current));
            }
            continue;
        }
        if !current.is_empty() && is_num != numeric {
            parts.push(std::mem::take(&mut current));
        }
        numeric = is_num;
        current.push(c);
    }
    if !current.is_empty() {
        parts.push(current);
    }
    if parts.is_empty() || !parts.len().is_multiple_of(2) {
        return None;
    }
    let mut total = Duration::ZERO;
    for pair in parts.chunks(2) {
        let unit = long(&pair[1])?;
        let one = unit_duration(1, unit)?;
        let value: f64 = pair[0].parse().ok()?;
        if !value.is_finite() || value < 0.0 {
            return None;
        }
        total = total.checked_add(Duration::try_from_secs_f64(one.as_secs_f64() * value).ok()?)?;
    }
    let fix = format_duration(total);
    (fix != text && strict(&fix).is_ok()).then_some(fix)
}

/// The shortest way `parse` accepts to write `d` (whole milliseconds and up).
fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 || !d.subsec_nanos().is_multiple_of(1_000_000) {
        return format!("{}ns", d.as_nanos());
    }
    let mut rest = ms;
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn suggests_what_was_meant() {
        let err = |text: &str| parse(text).unwrap_err();
        assert!(
            err("5 minutes").starts_with("unparsable duration \"5 minutes\": did you mean \"5m\"?")
        );
        assert!(err("5 m").contains("did you mean \"5m\"?"));
        assert!(err("2sec").contains("did you mean \"2s\"?"));
        assert!(err("1.5s").contains("did you mean \"1s500ms\"?"));
        assert!(err("1 hour 30 min").contains("did you mean \"1h30m\"?"));
        assert!(err("90 seconds").contains("did you mean \"1m30s\"?"));
    }

    #[test]
    fn explains_what_it_cannot_guess() {
        let err = |text: &str| parse(text).unwrap_err();
        assert!(err("").contains("it is empty"));
        assert!(err("5").contains("the number has no unit"));
        assert!(err("s").contains("`s` is not a digit"));
        assert!(err("5 fortnights").contains("it has a space"));
        assert!(err("5x").contains("`x` is not a unit"));
        assert!(err("99999999999999999999s").contains("too large"));
        assert!(err("999999999999999d").contains("too large"));
    }
}
