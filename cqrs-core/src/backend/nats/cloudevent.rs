//! An event on the wire: a CloudEvent in the binary content mode of the NATS protocol binding
//! (CloudEvents 1.0; the NATS binding as drafted for 1.0.3). The data is the event as JSON in
//! the message body (`content-type: application/json`); every attribute is a header:
//!
//! | header | holds |
//! |---|---|
//! | `ce-specversion` | `1.0` |
//! | `ce-id` | the event id (a UUID), also `Nats-Msg-Id`, so a second publish is dropped |
//! | `ce-type` | the event's stable name (`Event::NAME`) |
//! | `ce-source` | `/cqrs/<service>`: the service that published it |
//! | `ce-time` | when it was written to the outbox, RFC 3339 |
//! | `ce-correlationid`, `ce-causationid`, `ce-sagaid` | the metadata of the same names |
//! | `ce-principalid` | the id of the principal whose command emitted it |
//! | `ce-aggregatetype`, `ce-aggregateid`, `ce-aggregateversion` | the aggregate it was saved for |
//! | `ce-partitionkey` | the key whose events keep their order |
//! | `traceparent` | W3C trace context: trace id = the correlation id, parent id = from the causing message's id |
//!
//! Extension names are lowercase letters and digits, as the specification requires.
//!
//! In the receiving process, `cx.principal()` is a [`Principal`] with the sender's id and no
//! roles or permissions: a message on the broker is a record of who caused the event, not a
//! credential. Commands the handler sends (`cx.send`) are authorized as that principal, so a
//! command that requires a role or permission is refused there; authorize such work inside
//! the handler, or send commands that need no role.

use async_nats::HeaderMap;
use uuid::Uuid;

use crate::envelope::{AggregateVersion, Metadata, Principal};
use crate::pipeline::transport::OutgoingEvent;

/// The headers of `event`, published by `service`.
pub(crate) fn headers(event: &OutgoingEvent<'_>, service: &str) -> HeaderMap {
    let m = event.metadata;
    let mut h = HeaderMap::new();
    h.insert("Nats-Msg-Id", event.id.to_string().as_str());
    h.insert("content-type", "application/json");
    h.insert("ce-specversion", "1.0");
    h.insert("ce-id", event.id.to_string().as_str());
    h.insert("ce-type", event.name);
    h.insert("ce-source", format!("/cqrs/{service}").as_str());
    h.insert("ce-time", rfc3339(event.created_at_ms).as_str());
    h.insert("ce-correlationid", m.correlation_id().to_string().as_str());
    if let Some(causation) = m.causation_id() {
        h.insert("ce-causationid", causation.to_string().as_str());
    }
    if let Some(saga) = m.saga_id() {
        h.insert("ce-sagaid", saga);
    }
    if let Some(principal) = m.principal() {
        h.insert("ce-principalid", principal.id());
    }
    if let Some(aggregate) = m.aggregate() {
        h.insert("ce-aggregatetype", aggregate.aggregate.as_str());
        h.insert("ce-aggregateid", aggregate.id.as_str());
        h.insert(
            "ce-aggregateversion",
            aggregate.version.to_string().as_str(),
        );
    }
    if let Some(key) = event.partition_key {
        h.insert("ce-partitionkey", key);
    }
    h.insert("traceparent", traceparent(m).as_str());
    h
}

/// `00-<trace id>-<parent id>-01`: the correlation id is the trace id (both are 128 bits, and
/// the spans of every message carry it as `correlation_id`), the low 64 bits of the causing
/// message's id (or of the event's) the parent id.
fn traceparent(m: &Metadata) -> String {
    let trace = m.correlation_id().simple().to_string();
    let parent = m.causation_id().unwrap_or_else(|| m.message_id());
    let low = parent.as_u128() as u64;
    format!("00-{trace}-{:016x}-01", low.max(1))
}

/// Milliseconds since the Unix epoch, as RFC 3339 in UTC.
fn rfc3339(ms: i64) -> String {
    let time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    time.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// An event read from the wire.
#[derive(Debug)]
pub(crate) struct Incoming {
    pub(crate) id: Uuid,
    pub(crate) name: String,
    pub(crate) metadata: Metadata,
    pub(crate) data: serde_json::Value,
}

/// Reads a CloudEvent in binary mode; `Err` says what is missing or malformed (such an event
/// is parked at once: delivering it again would not make it readable).
pub(crate) fn read(headers: Option<&HeaderMap>, payload: &[u8]) -> Result<Incoming, String> {
    let headers = headers.ok_or("no headers: not a CloudEvent in binary mode")?;
    let get = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
    let required = |name: &str| get(name).ok_or_else(|| format!("no `{name}` header"));
    let uuid = |name: &str, text: String| {
        Uuid::parse_str(&text).map_err(|e| format!("`{name}` is not a UUID ({text:?}): {e}"))
    };
    let version = required("ce-specversion")?;
    if !version.starts_with("1.") {
        return Err(format!("unsupported CloudEvents version {version:?}"));
    }
    let id = uuid("ce-id", required("ce-id")?)?;
    let name = required("ce-type")?;
    let mut metadata = Metadata::new();
    metadata.set_message_id(id);
    match get("ce-correlationid") {
        Some(c) => metadata.set_correlation_id(uuid("ce-correlationid", c)?),
        None => {
            if let Some(trace) = get("traceparent").and_then(|t| trace_id(&t)) {
                metadata.set_correlation_id(trace);
            }
        }
    }
    if let Some(c) = get("ce-causationid") {
        metadata.set_causation_id(uuid("ce-causationid", c)?);
    }
    if let Some(s) = get("ce-sagaid") {
        metadata.set_saga_id(s);
    }
    if let Some(p) = get("ce-principalid") {
        metadata.set_principal(Principal::new(p));
    }
    if let (Some(aggregate), Some(agg_id)) = (get("ce-aggregatetype"), get("ce-aggregateid")) {
        let version = match get("ce-aggregateversion") {
            Some(v) => v
                .parse()
                .map_err(|e| format!("`ce-aggregateversion` is not a number ({v:?}): {e}"))?,
            None => 0,
        };
        metadata.set_aggregate(Some(std::sync::Arc::new(AggregateVersion {
            aggregate,
            id: agg_id,
            version,
        })));
    }
    let data = serde_json::from_slice(payload).map_err(|e| format!("the data is not JSON: {e}"))?;
    Ok(Incoming {
        id,
        name,
        metadata,
        data,
    })
}

/// The trace id of a `traceparent` header, as a UUID.
fn trace_id(traceparent: &str) -> Option<Uuid> {
    let mut parts = traceparent.split('-');
    let _version = parts.next()?;
    let trace = parts.next()?;
    (trace.len() == 32).then(|| Uuid::parse_str(trace).ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_reads_back_as_it_was_written() {
        let mut m = Metadata::new();
        let id = Uuid::now_v7();
        m.set_message_id(id);
        m.set_causation_id(Uuid::now_v7());
        m.set_principal(Principal::admin("alice"));
        m.set_saga_id("saga-1");
        m.set_aggregate(Some(std::sync::Arc::new(AggregateVersion {
            aggregate: "order".into(),
            id: "o-1".into(),
            version: 3,
        })));
        let event = OutgoingEvent {
            id,
            name: "orders.event",
            payload: r#"{"a":1}"#,
            metadata: &m,
            partition_key: Some("order/o-1"),
            created_at_ms: 1_700_000_000_123,
        };
        let h = headers(&event, "shop");
        assert_eq!(
            h.get("ce-time").unwrap().as_str(),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(h.get("ce-source").unwrap().as_str(), "/cqrs/shop");
        let tp = h.get("traceparent").unwrap().as_str().to_owned();
        assert_eq!(tp.len(), 55, "{tp}");
        assert!(tp.starts_with(&format!("00-{}-", m.correlation_id().simple())));

        let back = read(Some(&h), br#"{"a":1}"#).unwrap();
        assert_eq!(back.id, id);
        assert_eq!(back.name, "orders.event");
        assert_eq!(back.metadata.correlation_id(), m.correlation_id());
        assert_eq!(back.metadata.causation_id(), m.causation_id());
        assert_eq!(back.metadata.saga_id(), Some("saga-1"));
        let principal = back.metadata.principal().unwrap();
        assert_eq!(principal.id(), "alice");
        assert!(!principal.is_admin(), "roles do not cross the broker");
        assert_eq!(back.metadata.aggregate().unwrap().version, 3);
        assert_eq!(back.data, serde_json::json!({"a": 1}));
    }

    #[test]
    fn what_cannot_be_read_says_why() {
        assert!(read(None, b"{}").unwrap_err().contains("no headers"));
        let mut h = HeaderMap::new();
        h.insert("ce-specversion", "1.0");
        h.insert("ce-id", "nope");
        h.insert("ce-type", "x");
        assert!(read(Some(&h), b"{}").unwrap_err().contains("not a UUID"));
        h.insert("ce-id", Uuid::nil().to_string().as_str());
        assert!(read(Some(&h), b"{oops").unwrap_err().contains("not JSON"));
    }
}
