//! The layout on the server: subjects, consumer names, partitions. A consumer written in
//! another language finds events with these rules (the guide states them):
//!
//! - events: `<prefix>.ev.<event>.<partition>`, where `<event>` is the event's stable name
//!   escaped and `<partition>` is `FNV-1a-32(partition key) mod partitions`, in decimal; an
//!   event without a key is placed by its id (as text);
//! - redeliveries to one handler: `<prefix>.rd.<group>`;
//! - dead letters: `<prefix>.dlq.<group>`, in stream `<stream>_DLQ`;
//! - consumers: `<service>_<group>_<partition>`, and `<service>_<group>_rd` for redeliveries,
//!   where `<group>` is the handler's name unless `group = ".."` says otherwise.
//!
//! Escaping keeps ASCII letters, digits and `_`, and writes any other byte as `-` followed by
//! its two hex digits in upper case: `orders.event` is `orders-2Eevent`, `a-b` is `a-2Db`. It
//! is reversible, and gives a valid subject token and consumer name.

use std::fmt::Write;

/// `name` as one subject token (or part of a consumer name).
pub(crate) fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "-{byte:02X}");
        }
    }
    out
}

/// 32-bit FNV-1a: a hash any language computes the same way.
pub(crate) fn fnv1a(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for &b in bytes {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// The partition of an event with this key (or, without one, this id).
pub(crate) fn partition(key: Option<&str>, id: &uuid::Uuid, partitions: u32) -> u32 {
    let hash = match key {
        Some(key) => fnv1a(key.as_bytes()),
        None => fnv1a(id.to_string().as_bytes()),
    };
    hash % partitions.max(1)
}

/// The subject an event is published on.
pub(crate) fn event_subject(prefix: &str, event: &str, partition: u32) -> String {
    format!("{prefix}.ev.{}.{partition}", escape(event))
}

/// The subject of redeliveries to one handler (group).
pub(crate) fn redeliver_subject(prefix: &str, group: &str) -> String {
    format!("{prefix}.rd.{}", escape(group))
}

/// The subject of one handler's (group's) dead letters.
pub(crate) fn dead_letter_subject(prefix: &str, group: &str) -> String {
    format!("{prefix}.dlq.{}", escape(group))
}

/// The dead-letter stream of an event stream.
pub(crate) fn dead_letter_stream(stream: &str) -> String {
    format!("{stream}_DLQ")
}

/// The durable consumer of a handler (group) on one partition.
pub(crate) fn consumer_name(service: &str, group: &str, partition: u32) -> String {
    format!("{}_{}_{partition}", escape(service), escape(group))
}

/// The durable consumer of a handler's (group's) redeliveries.
pub(crate) fn redeliver_consumer_name(service: &str, group: &str) -> String {
    format!("{}_{}_rd", escape(service), escape(group))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_is_reversible_and_valid() {
        assert_eq!(escape("orders.event"), "orders-2Eevent");
        assert_eq!(escape("a-b"), "a-2Db");
        assert_eq!(escape("a.b"), "a-2Eb");
        assert_eq!(escape("order_summaries"), "order_summaries");
        assert_ne!(escape("a-2Eb"), escape("a.b"));
        assert_eq!(escape("é"), "-C3-A9");
        assert!(
            escape("x.*>\t y")
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }

    #[test]
    fn partitions_are_stable_across_runs_and_languages() {
        // FNV-1a 32 of "a" is 0xe40c292c (the published test vector).
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a(b""), 0x811c_9dc5);
        let id = uuid::Uuid::nil();
        assert_eq!(partition(Some("order/1"), &id, 8), fnv1a(b"order/1") % 8);
        assert!(partition(None, &id, 8) < 8);
        assert_eq!(
            event_subject("cqrs", "orders.event", 3),
            "cqrs.ev.orders-2Eevent.3"
        );
        assert_eq!(
            consumer_name("shop", "order_summaries", 0),
            "shop_order_summaries_0"
        );
    }
}
