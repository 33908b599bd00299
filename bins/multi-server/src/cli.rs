//! The command line: every flag has an environment-variable fallback.

use std::net::IpAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use manager::PortSpec;

const EXIT_STATUSES: &str = "\
Exit statuses:
  0    clean stop (signal or quit endpoint; every request finished)
  1    a server failed to start (e.g. no free port) or died, or a hook failed
  2    bad command line
  3    the drain deadline cut in-flight requests
  129  forced exit: a second SIGHUP during shutdown (130 SIGINT, 143 SIGTERM)

Signals: SIGTERM, SIGINT and SIGHUP start a graceful shutdown; a second one forces exit.
SIGUSR2 upgrades in place: the binary at this one's path starts with its sockets and takes
over once ready (see --upgrade-binary, --upgrade-timeout).";

/// Runs several HTTP servers, each on a different Rust web framework, in one process.
#[derive(Debug, Parser)]
#[command(version, about, after_help = EXIT_STATUSES)]
pub(crate) struct Cli {
    /// Address every server binds. Loopback unless you mean otherwise.
    #[arg(long, env = "MULTI_SERVER_HOST", default_value = "127.0.0.1")]
    pub(crate) host: IpAddr,

    /// Ports of the flows API (actix-web): 0, 3400, 3400..3410, 3400-3409 or 3400,3402.
    #[arg(long, env = "MULTI_SERVER_FLOWS_PORTS", default_value = "3400..3410")]
    pub(crate) flows_ports: PortSpec,

    /// Worker threads of the flows API [default: one per CPU].
    #[arg(long, env = "MULTI_SERVER_FLOWS_WORKERS")]
    pub(crate) flows_workers: Option<usize>,

    /// Ports of the Genkit reflection API (poem; dev mode only, always on loopback).
    #[arg(
        long,
        env = "MULTI_SERVER_REFLECTION_PORTS",
        default_value = "3100..3110"
    )]
    pub(crate) reflection_ports: PortSpec,

    /// Ports of the Developer UI (salvo; dev mode only, always on loopback).
    #[arg(long, env = "MULTI_SERVER_DEVUI_PORTS", default_value = "4000..4010")]
    pub(crate) devui_ports: PortSpec,

    /// Address of the operations listener (axum): loopback unless you mean otherwise (e.g.
    /// 0.0.0.0 for Kubernetes probes by pod IP). Independent of --host.
    #[arg(long, env = "MULTI_SERVER_ADMIN_HOST", default_value = "127.0.0.1")]
    pub(crate) admin_host: IpAddr,

    /// Ports of the operations listener (axum): the admin endpoints for the whole process.
    #[arg(long, env = "MULTI_SERVER_ADMIN_PORTS", default_value = "9900..9910")]
    pub(crate) admin_ports: PortSpec,

    /// Serve the admin changes (quit, readiness fail and restore) on the admin listener only
    /// (403 on the flows API): for a public API behind a proxy, where operators use the
    /// loopback admin port.
    #[arg(
        long,
        alias = "quit-on-admin-only",
        env = "MULTI_SERVER_CHANGES_ON_ADMIN_ONLY"
    )]
    pub(crate) changes_on_admin_only: bool,

    /// A file holding the admin token (e.g. a systemd credential): every admin change must then
    /// send `Authorization: Bearer <token>`. Or set MULTI_SERVER_ADMIN_TOKEN; never on the
    /// command line, which any local user can read.
    #[arg(long, env = "MULTI_SERVER_ADMIN_TOKEN_FILE", value_name = "PATH")]
    pub(crate) admin_token_file: Option<std::path::PathBuf>,

    /// How many connections each server keeps open at once; one more is answered 503 (actix
    /// holds it in the listen backlog instead, and counts per worker: its limit is the flag
    /// rounded up to a multiple of --flows-workers).
    #[arg(long, env = "MULTI_SERVER_MAX_CONNECTIONS", default_value_t = edge::Limits::default().connections,
          value_parser = parse_max_connections)]
    pub(crate) max_connections: usize,

    /// How long a client may take to send a request head; also how long an idle keep-alive
    /// connection waits for its next request (every server).
    #[arg(long, env = "MULTI_SERVER_HEAD_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    pub(crate) head_timeout: Duration,

    /// How long reading a request body may take (every server; 408 after it).
    #[arg(long, env = "MULTI_SERVER_BODY_TIMEOUT", default_value = "10s", value_parser = parse_timeout)]
    pub(crate) body_timeout: Duration,

    /// The genkit CLI's Reflection API v2 WebSocket (dev mode only): the runtime dials it,
    /// registers, and serves the CLI's calls. `genkit flow:run ... -- <cmd>` and `genkit start
    /// --experimental-reflection-v2` set it; only a ws:// URL on this machine is taken.
    #[arg(long, env = "GENKIT_REFLECTION_V2_SERVER", value_name = "URL")]
    reflection_v2_server: Option<String>,

    /// The binary an in-place upgrade (SIGUSR2, POST /__upgradez) starts, with this process's
    /// arguments and listening sockets [default: this binary's own path, where a new version
    /// is installed].
    #[arg(long, env = "MULTI_SERVER_UPGRADE_BINARY", value_name = "PATH")]
    pub(crate) upgrade_binary: Option<std::path::PathBuf>,

    /// How long the new process of an upgrade may take to be ready before it is stopped and
    /// this one carries on.
    #[arg(long, env = "MULTI_SERVER_UPGRADE_TIMEOUT", default_value = "30s", value_parser = parse_timeout)]
    pub(crate) upgrade_timeout: Duration,

    /// How long after start the reflection server starts (the original waited 2s).
    #[arg(long, env = "MULTI_SERVER_REFLECTION_DELAY", default_value = "250ms", value_parser = parse_duration)]
    pub(crate) reflection_delay: Duration,

    /// How long in-flight requests may run once shutdown closes the listeners (e.g. 10s, 500ms).
    #[arg(long, env = "MULTI_SERVER_DRAIN_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub(crate) drain_deadline: Duration,

    /// How long to keep serving after a shutdown request, readiness already failing, before
    /// closing listeners (give a load balancer time to notice).
    #[arg(long, env = "MULTI_SERVER_DRAIN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub(crate) drain_delay: Duration,

    /// Log format; RUST_LOG filters (default: info).
    #[arg(long, env = "MULTI_SERVER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,

    /// Dev mode (also on when GENKIT_ENV=dev): the reflection server and Dev UI start.
    #[arg(long)]
    pub(crate) dev: bool,

    /// Test only: add a server named "faulty" whose startup hook fails this long after start.
    #[cfg(feature = "test-faults")]
    #[arg(long, value_parser = parse_duration)]
    pub(crate) test_fail_startup_hook_after: Option<Duration>,

    /// Test only: add a second, optional flows server named "flows-optional" on an ephemeral
    /// port (its `POST /__test/crash` shows what an optional server's death does).
    #[cfg(feature = "test-faults")]
    #[arg(long)]
    pub(crate) test_optional_flows: bool,

    /// Test only: add a server named "slowstart" whose startup hook takes this long, so the
    /// process is not live (nor ready) until then, while the other servers already serve.
    #[cfg(feature = "test-faults")]
    #[arg(long, value_parser = parse_duration)]
    pub(crate) test_slow_startup: Option<Duration>,
}

impl Cli {
    /// The limits every server enforces.
    pub(crate) fn limits(&self) -> edge::Limits {
        edge::Limits {
            head_timeout: self.head_timeout,
            body_timeout: self.body_timeout,
            connections: self.max_connections,
            ..edge::Limits::default()
        }
    }

    /// The admin token, from `--admin-token-file` or `MULTI_SERVER_ADMIN_TOKEN`, if one is
    /// configured; else why it cannot be used (one line, naming where it came from).
    pub(crate) fn admin_token(&self) -> Result<Option<manager::admin::AdminToken>, String> {
        const VAR: &str = "MULTI_SERVER_ADMIN_TOKEN";
        let (secret, source) = match (&self.admin_token_file, std::env::var_os(VAR)) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "both --admin-token-file and {VAR} are set; use one"
                ));
            }
            (Some(path), None) => match std::fs::read_to_string(path) {
                Ok(secret) => (secret, format!("--admin-token-file {}", path.display())),
                Err(err) => {
                    return Err(format!(
                        "cannot read --admin-token-file {}: {err}",
                        path.display()
                    ));
                }
            },
            (None, Some(secret)) => (
                secret
                    .into_string()
                    .map_err(|_| format!("{VAR} is not UTF-8"))?,
                VAR.to_owned(),
            ),
            (None, None) => return Ok(None),
        };
        manager::admin::AdminToken::new(&secret)
            .map(Some)
            .map_err(|err| format!("{source}: {err}"))
    }

    /// `--changes-on-admin-only`, or the variable of its old name
    /// (`MULTI_SERVER_QUIT_ON_ADMIN_ONLY`), so that a deployment that set it keeps its public
    /// port free of changes.
    pub(crate) fn changes_on_admin_only(&self) -> bool {
        self.changes_on_admin_only
            || std::env::var("MULTI_SERVER_QUIT_ON_ADMIN_ONLY").is_ok_and(|v| {
                !matches!(
                    v.to_ascii_lowercase().as_str(),
                    "" | "0" | "false" | "no" | "off"
                )
            })
    }

    /// The genkit CLI's v2 WebSocket, if one is given in dev mode; else why the URL cannot be
    /// used (one line naming the flag and the variable: the CLI sets the variable, and a user
    /// may never have typed the flag). Empty counts as unset, as it does for the CLI. Outside
    /// dev mode it is not read at all: a stray variable must not stop a production server.
    pub(crate) fn reflection_v2_server(&self) -> Result<V2Server, String> {
        match self.reflection_v2_server.as_deref() {
            None | Some("") => Ok(V2Server::Off),
            Some(_) if !self.is_dev() => Ok(V2Server::IgnoredOutsideDev),
            Some(url) => url.parse().map(V2Server::Dial).map_err(|err| {
                format!("--reflection-v2-server (or GENKIT_REFLECTION_V2_SERVER): {err}")
            }),
        }
    }

    /// Dev mode from the flag or from Genkit's own variable, as the original sample did.
    pub(crate) fn is_dev(&self) -> bool {
        self.dev || std::env::var("GENKIT_ENV").is_ok_and(|v| v == "dev")
    }
}

/// What the v2 URL, if any, asks for.
#[derive(Debug, Clone)]
pub(crate) enum V2Server {
    /// None given.
    Off,
    /// Given, but dev mode is off: warned about, not dialed.
    IgnoredOutsideDev,
    /// Dial this.
    Dial(reflection_v2::Target),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The longest any duration flag may be: a day. Anything longer is a typo, and far longer
/// values (`3e11y`) would overflow the clock at shutdown.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// A duration flag that must not be zero (a zero head or body timeout refuses every request).
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err("must be more than 0 (examples: 10s, 500ms)".to_owned());
    }
    Ok(duration)
}

fn parse_max_connections(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n @ 1..=1_000_000) => Ok(n),
        _ => Err("a whole number from 1 to 1000000".to_owned()),
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration =
        humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 10s, 500ms, 1m)"))?;
    if duration > MAX_DURATION {
        return Err(format!(
            "at most {} (24h)",
            humantime::format_duration(MAX_DURATION)
        ));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_ports_and_durations() {
        let cli = Cli::try_parse_from([
            "multi-server",
            "--flows-ports",
            "0",
            "--drain-deadline",
            "250ms",
        ])
        .unwrap();
        assert_eq!(cli.flows_ports, PortSpec::Ephemeral);
        assert_eq!(cli.drain_deadline, Duration::from_millis(250));
        for huge in ["3e11y", "25h", "1000000000000000000s"] {
            let err = Cli::try_parse_from(["multi-server", "--drain-deadline", huge]).unwrap_err();
            assert!(err.to_string().contains("--drain-deadline"), "{err}");
        }
        let err = Cli::try_parse_from(["multi-server", "--flows-ports", "9..1"]).unwrap_err();
        assert!(
            err.to_string().contains("invalid port spec '9..1'"),
            "{err}"
        );
    }
}
