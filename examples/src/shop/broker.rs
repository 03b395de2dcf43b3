//! The shop on NATS JetStream: `shop --nats <url>` runs its event handlers through the broker
//! (each instance shares the work of every handler, and another service can consume the
//! shop's events), and the commands that look after the broker's dead letters and replays:
//!
//! ```text
//! shop dead-letters [--handler H]                       list the parked events
//! shop redeliver <event id> | --all --handler H         put parked events back to their handler
//! shop replay H --from start|<RFC 3339 time>|<sequence> deliver past events to H again
//! ```
//!
//! Each takes `--database` and `--nats` as `shop` does (the broker's default is
//! `nats://127.0.0.1:4222`).

use std::time::SystemTime;

use cqrs_core::{Bus, Error, Nats, Redeliver, ReplayFrom};

use super::{Db, bus_builder};

/// The service name the shop's consumers carry (`shop_<handler>_<partition>`).
pub const SERVICE: &str = "shop";
/// The broker the admin commands use unless `--nats` says otherwise.
pub const DEFAULT_NATS: &str = "nats://127.0.0.1:4222";

/// What to do with the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    DeadLetters { handler: Option<String> },
    RedeliverOne { event_id: uuid::Uuid },
    RedeliverAll { handler: String },
    Replay { handler: String, from: ReplayFrom },
}

/// Parses the arguments after `dead-letters`, `redeliver` or `replay`; `--database` and
/// `--nats` are left to the caller (`rest` gets them).
pub fn parse(
    verb: &str,
    args: &mut dyn Iterator<Item = String>,
    rest: &mut Vec<String>,
) -> Result<Action, String> {
    let mut handler = None;
    let mut all = false;
    let mut from = None;
    let mut positional = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--handler" => handler = Some(args.next().ok_or("--handler needs a value")?),
            "--all" => all = true,
            "--from" => from = Some(args.next().ok_or("--from needs a value")?),
            "--database" | "--nats" | "--nats-stream" => {
                rest.push(arg.clone());
                rest.push(args.next().ok_or(format!("{arg} needs a value"))?);
            }
            other if other.starts_with("--") => {
                return Err(format!("unexpected argument `{other}`"));
            }
            _ => positional.push(arg),
        }
    }
    match verb {
        "dead-letters" if positional.is_empty() && !all && from.is_none() => {
            Ok(Action::DeadLetters { handler })
        }
        "redeliver" if all && positional.is_empty() => Ok(Action::RedeliverAll {
            handler: handler.ok_or("redeliver --all needs --handler H")?,
        }),
        "redeliver" if !all && positional.len() == 1 && handler.is_none() => {
            let id = &positional[0];
            Ok(Action::RedeliverOne {
                event_id: id
                    .parse()
                    .map_err(|_| format!("redeliver: `{id}` is not an event id (a UUID)"))?,
            })
        }
        "redeliver" => Err("redeliver takes an event id, or --all --handler H".to_owned()),
        "replay" if positional.len() == 1 && !all => Ok(Action::Replay {
            handler: positional[0].clone(),
            from: replay_from(&from.ok_or("replay needs --from start|<time>|<sequence>")?)?,
        }),
        "replay" => Err("replay takes one handler: replay H --from start".to_owned()),
        _ => Err(format!("{verb}: unexpected arguments")),
    }
}

fn replay_from(text: &str) -> Result<ReplayFrom, String> {
    if text == "start" {
        return Ok(ReplayFrom::Start);
    }
    if let Ok(sequence) = text.parse::<u64>() {
        return Ok(ReplayFrom::Sequence(sequence));
    }
    humantime_rfc3339(text)
        .map(ReplayFrom::Time)
        .ok_or_else(|| format!("--from: `{text}` is not `start`, a sequence number or an RFC 3339 time such as 2026-12-01T00:00:00Z"))
}

/// An RFC 3339 time, e.g. `2026-12-01T00:00:00Z`.
fn humantime_rfc3339(text: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// Connects to the broker as the shop's service; `stream` instead of `CQRS_EVENTS`
/// (`--nats-stream`), with its name in lower case as the subject prefix.
pub async fn connect(url: &str, stream: Option<&str>) -> Result<Nats, Error> {
    let nats = Nats::connect(url).await?.service(SERVICE);
    Ok(match stream {
        Some(stream) => nats.stream(stream).subject_prefix(stream.to_lowercase()),
        None => nats,
    })
}

/// Runs one admin action against the shop's broker; prints what it did.
pub async fn run(
    action: Action,
    db: &Db,
    nats_url: &str,
    stream: Option<&str>,
) -> Result<(), Error> {
    let bus: Bus = bus_builder(db)
        .outbox_relay(false)
        .nats(connect(nats_url, stream).await?)
        .build()
        .map_err(|e| Error::internal(e.to_string()))?;
    match action {
        Action::DeadLetters { handler } => {
            let letters = bus.dead_letters(handler.as_deref()).await?;
            if letters.is_empty() {
                println!("no dead letters");
            }
            for l in letters {
                println!(
                    "{}  {}  handler {}  delivered {}x  {}\n    {}",
                    l.event_id, l.event, l.handler, l.deliveries, l.data, l.error
                );
            }
        }
        Action::RedeliverOne { event_id } => {
            let n = bus.redeliver(event_id).await?;
            println!("redelivered {n} event(s)");
        }
        Action::RedeliverAll { handler } => {
            let n = bus.redeliver(Redeliver::AllOf(handler)).await?;
            println!("redelivered {n} event(s)");
        }
        Action::Replay { handler, from } => {
            bus.replay(&handler, from).await?;
            println!("replaying to {handler} from {from:?}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(verb: &str, args: &[&str]) -> Result<Action, String> {
        let mut rest = Vec::new();
        parse(verb, &mut args.iter().map(|s| s.to_string()), &mut rest)
    }

    #[test]
    fn parses_the_admin_commands() {
        assert_eq!(
            parse_all("dead-letters", &["--handler", "OrderSummaries"]),
            Ok(Action::DeadLetters {
                handler: Some("OrderSummaries".into())
            })
        );
        assert_eq!(
            parse_all("redeliver", &["--all", "--handler", "H"]),
            Ok(Action::RedeliverAll {
                handler: "H".into()
            })
        );
        assert!(
            parse_all("redeliver", &["nope"])
                .unwrap_err()
                .contains("not an event id")
        );
        assert!(parse_all("redeliver", &["--all"]).is_err());
        assert_eq!(
            parse_all("replay", &["H", "--from", "start"]),
            Ok(Action::Replay {
                handler: "H".into(),
                from: ReplayFrom::Start
            })
        );
        assert_eq!(
            parse_all("replay", &["H", "--from", "42"]),
            Ok(Action::Replay {
                handler: "H".into(),
                from: ReplayFrom::Sequence(42)
            })
        );
        assert_eq!(
            humantime_rfc3339("1970-01-02T00:00:01Z"),
            Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(86_401))
        );
        assert!(parse_all("replay", &["H", "--from", "yesterday"]).is_err());
        assert!(parse_all("replay", &["H"]).is_err());
    }
}
