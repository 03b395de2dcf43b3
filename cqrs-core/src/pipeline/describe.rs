//! How layers print themselves in `describe()` and in error messages.

use std::time::Duration;

/// A duration the way the attributes take it: `250ms`, `15s`, `5m`, `2h`, `1m30s`.
pub(crate) fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return format!("{}us", d.as_micros());
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

/// `[a, b]` for a list of names.
pub(crate) fn list<T: std::fmt::Display>(items: &[T]) -> String {
    let inner: Vec<String> = items.iter().map(ToString::to_string).collect();
    format!("[{}]", inner.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_like_the_attributes() {
        assert_eq!(duration(Duration::from_millis(250)), "250ms");
        assert_eq!(duration(Duration::from_secs(15)), "15s");
        assert_eq!(duration(Duration::from_secs(300)), "5m");
        assert_eq!(duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(duration(Duration::from_micros(5)), "5us");
    }
}
