//! The `shop` command line.
//!
//! ```text
//! shop [--database <url>] [--port <port>]   serve the API on 127.0.0.1 (default: ./shop.db, port 3000)
//! shop describe [--mermaid]                 print every message, handler and layer (or the flow as Mermaid)
//! ```

use std::io::IsTerminal;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use super::{Db, build_bus, db, migrate, seed, serve};

/// The SQLite file the shop uses unless `--database` says otherwise (in the current directory).
pub const DEFAULT_DATABASE: &str = "shop.db";
/// The port the shop listens on unless `--port` says otherwise.
pub const DEFAULT_PORT: u16 = 3000;

const USAGE: &str = "\
usage:
  shop [--database <url>] [--port <port>]
      serve the shop's HTTP API on 127.0.0.1
      --database  a SQLite file or sqlite: URL (default: ./shop.db), or postgres://user@host/db
      --port      the port to listen on (default: 3000; 0 picks a free one)
  shop describe [--mermaid]
      print every message -> handler -> layers -> source location,
      or (--mermaid) the message flow as a Mermaid flowchart";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Serve { database: String, port: u16 },
    Describe { mermaid: bool },
    Help,
}

/// Parses the arguments (without the program name).
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, String> {
    let mut args = args.into_iter();
    let mut database = DEFAULT_DATABASE.to_owned();
    let mut port = DEFAULT_PORT;
    let mut describe = false;
    let mut mermaid = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "describe" if !describe => describe = true,
            "--mermaid" if describe => mermaid = true,
            "--database" => {
                database = args.next().ok_or("--database needs a value")?;
            }
            "--port" => {
                let value = args.next().ok_or("--port needs a value")?;
                port = value
                    .parse()
                    .map_err(|_| format!("--port: `{value}` is not a port number"))?;
            }
            "-h" | "--help" | "help" => return Ok(Command::Help),
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    Ok(if describe {
        Command::Describe { mermaid }
    } else {
        Command::Serve { database, port }
    })
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
        Command::Serve { database, port } => run(&database, port).await,
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

async fn run(database: &str, port: u16) -> Result<(), BoxError> {
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
    let bus = build_bus(&db)?;
    seed(&bus, &db)
        .await
        .map_err(|e| format!("cannot seed the catalogue in {shown}: {}", e.message()))?;

    println!("shop listening on http://{addr} (database: {shown}; Ctrl-C stops)");
    serve(listener, bus, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    db.close().await;
    Ok(())
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
                port: DEFAULT_PORT
            })
        );
        assert_eq!(
            parse(&["--port", "0", "--database", "postgres://localhost/shop"]),
            Ok(Command::Serve {
                database: "postgres://localhost/shop".into(),
                port: 0
            })
        );
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
        assert_eq!(parse(&["--help"]), Ok(Command::Help));
    }
}
