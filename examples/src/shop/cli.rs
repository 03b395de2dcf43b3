//! The `shop` command line.
//!
//! ```text
//! shop [--database <url>] [--redis <url>] [--port <port>] [--grace <duration>]
//!      [--header-timeout <duration>]        serve the API on 127.0.0.1 (default: ./shop.db, port 3000)
//! shop describe [--mermaid]                 print every message, handler and layer (or the flow as Mermaid)
//! shop dead-letters | redeliver | replay ..  the broker's dead letters and replays (see `broker`)
//! ```

use std::io::IsTerminal;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use super::{Db, ServeOptions, build_bus, bus_builder, db, migrate, seed, serve_with};

/// The SQLite file the shop uses unless `--database` says otherwise (in the current directory).
pub const DEFAULT_DATABASE: &str = "shop.db";
/// The port the shop listens on unless `--port` says otherwise.
pub const DEFAULT_PORT: u16 = 3000;

const USAGE: &str = "\
usage:
  shop [--database <url>] [--redis <url>] [--port <port>] [--grace <duration>]
       [--header-timeout <duration>]
      serve the shop's HTTP API on 127.0.0.1; SIGTERM or Ctrl-C (SIGINT) stops it gracefully,
      a second one at once
      --database        a SQLite file or sqlite: URL (default: ./shop.db), or
                        postgres://user:password@host/db
      --redis           redis://host:port: cache invalidations reach every shop sharing it
                        (on PostgreSQL alone they go through the database)
      --port            the port to listen on (default: 3000; 0 picks a free one)
      --grace           how long requests in flight get to finish at shutdown (default: 10s)
      --header-timeout  how long a client has to send a request's headers, and an idle
                        keep-alive connection stays open (default: 10s)
      --nats            run the event handlers through NATS JetStream at this URL (e.g.
                        nats://127.0.0.1:4222): instances sharing the database and the broker
                        share the work of every handler
      --nats-stream     the JetStream stream (default: CQRS_EVENTS; its subjects are the name
                        in lower case); instances and services that share events use the same
      durations: 500ms, 10s, 2m, or a number of seconds
  shop describe [--mermaid]
      print every message -> handler -> layers -> source location,
      or (--mermaid) the message flow as a Mermaid flowchart
  shop dead-letters [--handler H]                      (with --database, --nats)
      list the events parked in the broker's dead-letter stream
  shop redeliver <event id> | --all --handler H        (with --database, --nats)
      put parked events back, each to its handler only
  shop replay H --from start|<RFC 3339 time>|<seq>     (with --database, --nats)
      deliver past events to handler H again (its inbox cleared first)";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Serve {
        database: String,
        redis: Option<String>,
        port: u16,
        options: ServeOptions,
        nats: Option<String>,
        nats_stream: Option<String>,
    },
    Broker {
        database: String,
        nats: String,
        nats_stream: Option<String>,
        action: super::broker::Action,
    },
    Describe {
        mermaid: bool,
    },
    Help,
}

/// Parses the arguments (without the program name).
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut args = args.into_iter();
    let mut database = DEFAULT_DATABASE.to_owned();
    let mut redis = None;
    let mut port = DEFAULT_PORT;
    let mut options = ServeOptions::default();
    let mut describe = false;
    let mut mermaid = false;
    let mut nats = None;
    let mut nats_stream = None;
    let mut broker = None;
    let mut rest = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            verb @ ("dead-letters" | "redeliver" | "replay") if broker.is_none() && !describe => {
                broker = Some(super::broker::parse(verb, &mut args, &mut rest)?);
                // `--database` and `--nats` given after the verb (`parse` checked each has a
                // value).
                let mut flags = std::mem::take(&mut rest).into_iter();
                while let (Some(flag), Some(value)) = (flags.next(), flags.next()) {
                    match flag.as_str() {
                        "--database" => database = value,
                        "--nats" => nats = Some(value),
                        _ => nats_stream = Some(value),
                    }
                }
            }
            "--nats" => {
                nats = Some(args.next().ok_or("--nats needs a value")?);
            }
            "--nats-stream" => {
                nats_stream = Some(args.next().ok_or("--nats-stream needs a value")?);
            }
            "describe" if !describe => describe = true,
            "--mermaid" if describe => mermaid = true,
            "--database" => {
                database = args.next().ok_or("--database needs a value")?;
            }
            "--redis" => {
                redis = Some(args.next().ok_or("--redis needs a value")?);
            }
            "--port" => {
                let value = args.next().ok_or("--port needs a value")?;
                port = value
                    .parse()
                    .map_err(|_| format!("--port: `{value}` is not a port number"))?;
            }
            "--grace" => {
                options.grace = duration(&arg, args.next())?;
            }
            "--header-timeout" => {
                options.header_read_timeout = duration(&arg, args.next())?;
                if options.header_read_timeout.is_zero() {
                    return Err("--header-timeout must be more than 0".to_owned());
                }
            }
            "-h" | "--help" | "help" => return Ok(Command::Help),
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    Ok(if let Some(action) = broker {
        Command::Broker {
            database,
            nats: nats.unwrap_or_else(|| super::broker::DEFAULT_NATS.to_owned()),
            nats_stream,
            action,
        }
    } else if describe {
        Command::Describe { mermaid }
    } else {
        Command::Serve {
            database,
            redis,
            port,
            options,
            nats,
            nats_stream,
        }
    })
}

/// `500ms`, `10s`, `2m`, or a number of seconds.
fn duration(flag: &str, value: Option<String>) -> Result<Duration, String> {
    let value = value.ok_or_else(|| format!("{flag} needs a value"))?;
    let (number, unit) = match value.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => value.split_at(at),
        None => (value.as_str(), "s"),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{flag}: `{value}` is not a duration (e.g. 500ms, 10s, 2m)"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        "m" if number <= u64::MAX / 60 => Ok(Duration::from_secs(number * 60)),
        _ => Err(format!(
            "{flag}: `{value}` is not a duration (e.g. 500ms, 10s, 2m)"
        )),
    }
}

/// Runs the command line; what `main` calls.
pub async fn main(args: impl IntoIterator<Item = String>) -> ExitCode {
    let command = match parse(args) {
        Ok(command) => command,
        Err(error) => {
            eprintln!("shop: {error}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Help => {
            println!("{USAGE}");
            Ok(())
        }
        Command::Describe { mermaid } => describe(mermaid).await,
        Command::Serve {
            database,
            redis,
            port,
            options,
            nats,
            nats_stream,
        } => {
            let nats = nats.as_deref().map(|url| (url, nats_stream.as_deref()));
            run(&database, redis.as_deref(), port, options, nats).await
        }
        Command::Broker {
            database,
            nats,
            nats_stream,
            action,
        } => broker(&database, &nats, nats_stream.as_deref(), action).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shop: {error}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn describe(mermaid: bool) -> Result<(), BoxError> {
    // The description needs the bus, not data: an in-memory database will do.
    let db = Db::connect("sqlite::memory:").await?;
    let description = build_bus(&db)?.describe();
    if mermaid {
        print!("{}", description.to_mermaid());
    } else {
        print!("{description}");
    }
    db.close().await;
    Ok(())
}

async fn broker(
    database: &str,
    nats: &str,
    stream: Option<&str>,
    action: super::broker::Action,
) -> Result<(), BoxError> {
    let db = Db::connect(database)
        .await
        .map_err(|e| e.message().into_owned())?;
    let result = super::broker::run(action, &db, nats, stream).await;
    db.close().await;
    result.map_err(|e| e.message().into_owned().into())
}

async fn run(
    database: &str,
    redis: Option<&str>,
    port: u16,
    options: ServeOptions,
    nats: Option<(&str, Option<&str>)>,
) -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        // One line per dispatch, when its span closes: message, handler, principal, status, time.
        .with_span_events(FmtSpan::CLOSE)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    // The address first: a port in use is said before the database is touched (no file
    // created, no connection made).
    let wanted = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = tokio::net::TcpListener::bind(wanted)
        .await
        .map_err(|e| cannot_listen(wanted, &e))?;
    let addr = listener.local_addr()?;

    // Each step's error says what failed and where; the database URL never with its password.
    let db = Db::connect(database)
        .await
        .map_err(|e| e.message().into_owned())?;
    let shown = db::redact(database);
    migrate(&db)
        .await
        .map_err(|e| format!("cannot create the tables in {shown}: {}", e.message()))?;
    let mut builder = bus_builder(&db);
    if let Some(url) = redis {
        let client = cqrs_core::redis::Client::open(url)
            .map_err(|e| format!("--redis: `{}` is not a Redis URL: {e}", db::redact(url)))?;
        builder = builder.redis(client).redis_prefix("shop:");
    }
    if let Some((url, stream)) = nats {
        let nats = super::broker::connect(url, stream)
            .await
            .map_err(|e| e.message().into_owned())?;
        builder = builder.nats(nats);
    }
    let bus = builder.build()?;
    seed(&bus, &db)
        .await
        .map_err(|e| format!("cannot seed the catalogue in {shown}: {}", e.message()))?;
    // With a broker: its streams and consumers, then the relay and the consumers.
    bus.start().await.map_err(|e| e.message().into_owned())?;

    // Listening for SIGTERM and SIGINT from here on, before saying where the shop listens.
    let mut signals = Signals::new()?;
    println!(
        "shop listening on http://{addr} (database: {shown}; SIGTERM or Ctrl-C stops, within {:?})",
        options.grace
    );
    let (signalled, signal_time) = tokio::sync::oneshot::channel();
    let shutdown = async move {
        let name = signals.next().await;
        let _ = signalled.send(Instant::now());
        tracing::info!(target: "shop", signal = name, "stopping (again to stop at once)");
        tokio::spawn(async move {
            let name = signals.next().await;
            eprintln!("shop: {name} again: stopping at once");
            std::process::exit(130);
        });
    };
    serve_with(listener, bus.clone(), shutdown, options).await?;

    // No request is running any more. What is left of the grace period goes to the outbox
    // relay's batch in progress; then the pool is closed (SQLite: its log checkpointed).
    let deadline = signal_time.await.unwrap_or_else(|_| Instant::now()) + options.grace;
    if !bus
        .shutdown(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        tracing::warn!(target: "shop", "the grace period ran out with events being delivered; the outbox delivers the rest at the next start");
    }
    if tokio::time::timeout(Duration::from_secs(5), db.close())
        .await
        .is_err()
    {
        tracing::warn!(target: "shop", "the database pool did not close within 5 s");
    }
    tracing::info!(target: "shop", "stopped");
    Ok(())
}

/// SIGTERM (what container platforms send to stop a service) and SIGINT (Ctrl-C), listened for
/// from the moment this is made.
struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                terminate: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// The next signal's name.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.terminate.recv() => "SIGTERM",
                _ = self.interrupt.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

fn cannot_listen(addr: SocketAddr, error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "cannot listen on {addr}: the address is already in use (another process listens \
             there; stop it or choose another --port)"
        ),
        _ => format!("cannot listen on {addr}: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        super::parse(args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn serves_by_default() {
        assert_eq!(
            parse(&[]),
            Ok(Command::Serve {
                database: DEFAULT_DATABASE.into(),
                redis: None,
                port: DEFAULT_PORT,
                options: ServeOptions::default(),
                nats: None,
                nats_stream: None,
            })
        );
        assert_eq!(
            parse(&[
                "--port",
                "0",
                "--database",
                "postgres://localhost/shop",
                "--grace",
                "1500ms",
                "--header-timeout",
                "2m",
                "--redis",
                "redis://127.0.0.1:6379",
            ]),
            Ok(Command::Serve {
                database: "postgres://localhost/shop".into(),
                redis: Some("redis://127.0.0.1:6379".into()),
                port: 0,
                options: ServeOptions {
                    grace: Duration::from_millis(1500),
                    header_read_timeout: Duration::from_secs(120),
                },
                nats: None,
                nats_stream: None,
            })
        );
        let Ok(Command::Serve { options, .. }) = parse(&["--grace", "3"]) else {
            panic!("--grace 3 is three seconds");
        };
        assert_eq!(options.grace, Duration::from_secs(3));
    }

    #[test]
    fn runs_on_nats_and_looks_after_its_broker() {
        let Ok(Command::Serve { nats, .. }) = parse(&["--nats", "nats://127.0.0.1:4222"]) else {
            panic!("--nats takes a URL");
        };
        assert_eq!(nats.as_deref(), Some("nats://127.0.0.1:4222"));
        assert_eq!(
            parse(&["dead-letters", "--database", "x.db"]),
            Ok(Command::Broker {
                database: "x.db".into(),
                nats: super::super::broker::DEFAULT_NATS.into(),
                nats_stream: None,
                action: super::super::broker::Action::DeadLetters { handler: None },
            })
        );
        assert!(parse(&["--nats"]).is_err());
        assert!(parse(&["replay"]).is_err());
    }

    #[test]
    fn describes() {
        assert_eq!(
            parse(&["describe"]),
            Ok(Command::Describe { mermaid: false })
        );
        assert_eq!(
            parse(&["describe", "--mermaid"]),
            Ok(Command::Describe { mermaid: true })
        );
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        assert!(parse(&["--mermaid"]).is_err(), "--mermaid without describe");
        assert!(parse(&["--port"]).is_err());
        assert!(parse(&["--port", "70000"]).is_err());
        assert!(parse(&["serve", "now"]).is_err());
        assert!(parse(&["--grace"]).is_err());
        assert!(parse(&["--grace", "soon"]).is_err());
        assert!(parse(&["--grace", "10h"]).is_err());
        assert!(parse(&["--header-timeout", "0s"]).is_err());
        assert_eq!(parse(&["--help"]), Ok(Command::Help));
    }
}
