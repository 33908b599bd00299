//! `multi-server`: the flows API (actix-web) and, in dev mode, Genkit's reflection server and
//! the Developer UI, in one process under one lifecycle manager. `--help` lists flags and exit
//! statuses.

mod cli;
mod flows;
mod logging;
mod metrics;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use manager::{InheritedSockets, ManagerHandle, Outcome, ServerConfig, ServerManager};

use crate::cli::Cli;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Exit statuses; `--help` and the README list them.
mod exit {
    pub(crate) const SERVER_FAILED: u8 = 1;
    pub(crate) const BAD_COMMAND_LINE: u8 = 2;
    pub(crate) const REQUESTS_CUT: u8 = 3;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (admin_token, v2_server) = match (cli.admin_token(), cli.reflection_v2_server()) {
        (Ok(token), Ok(v2_server)) => (token, v2_server),
        (Err(err), _) | (_, Err(err)) => {
            eprintln!("error: {err}");
            return ExitCode::from(exit::BAD_COMMAND_LINE);
        }
    };
    // Every server may keep --max-connections open: lift the soft file-descriptor limit
    // (often 1024) to the hard one, as Go's runtime and nginx do.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    // Before any thread exists: listenfd reads and clears LISTEN_FDS.
    let inherited = InheritedSockets::from_env();
    let _log_flush = logging::init(cli.log_format);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(exit::SERVER_FAILED);
        }
    };
    let code = runtime.block_on(run(cli, admin_token, v2_server, inherited));
    // Connection tasks a framework left behind are dropped here, so their requests are
    // logged as aborted before the log writer flushes.
    runtime.shutdown_timeout(Duration::from_millis(200));
    ExitCode::from(code)
}

async fn run(
    cli: Cli,
    admin_token: Option<manager::admin::AdminToken>,
    v2_server: cli::V2Server,
    inherited: InheritedSockets,
) -> u8 {
    let dev = cli.is_dev();
    if !cli.host.is_loopback() {
        tracing::warn!(host = %cli.host, "binding a non-loopback address: servers are reachable from the network");
    }
    let mut manager = ServerManager::new()
        .version(VERSION)
        .drain_deadline(cli.drain_deadline)
        .drain_delay(cli.drain_delay)
        .log_lines_dropped(logging::dropped)
        .inherited_sockets(inherited);
    if let Some(token) = admin_token {
        manager = manager.admin_token(token);
    }
    // The path now, not at the upgrade: by then a new version may have replaced the file
    // (and /proc/self/exe would name the deleted one).
    match cli.upgrade_binary.clone().map_or_else(invoked_binary, Ok) {
        Ok(binary) => {
            manager = manager.upgrade_command(manager::upgrade::UpgradeCommand {
                binary,
                args: std::env::args_os().skip(1).collect(),
                timeout: cli.upgrade_timeout,
            });
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot tell this binary's path: in-place upgrade is off")
        }
    }
    let registry = flows::registry();
    let extra = edge::metrics::ExtraMetrics::new(vec![std::sync::Arc::new(metrics::FlowMetrics(
        std::sync::Arc::clone(&registry),
    ))]);
    manager = manager.extension(std::sync::Arc::new(extra));
    let builder = &mut ManagerBuilder(&mut manager);
    add_servers(builder, &cli, &registry, dev);
    add_v2_client(builder, &cli, v2_server, &registry);
    let handle = manager.handle();
    tokio::spawn(print_banner(handle, dev));

    let report = manager.run().await;
    // The genkit CLI stops the runtime as soon as it has a run's result: the run's final trace
    // state must still reach its telemetry server.
    const TELEMETRY_FLUSH: Duration = Duration::from_secs(2);
    if !registry.flush_telemetry(TELEMETRY_FLUSH).await {
        tracing::warn!(
            "traces still queued for the telemetry server were not sent within {TELEMETRY_FLUSH:?}"
        );
    }
    for failure in &report.failures {
        eprintln!("error: {}", failure.chain());
    }
    match report.outcome() {
        Outcome::Clean => 0,
        Outcome::Failed => exit::SERVER_FAILED,
        Outcome::RequestsCut => {
            eprintln!(
                "error: drain deadline ({}) cut {} in-flight request(s)",
                humantime::format_duration(cli.drain_deadline),
                report.requests_cut
            );
            exit::REQUESTS_CUT
        }
    }
}

fn add_servers(
    manager: &mut ManagerBuilder<'_>,
    cli: &Cli,
    registry: &std::sync::Arc<::flows::Registry>,
    dev: bool,
) {
    let limits = cli.limits();
    let config = |name: &str| ServerConfig::new(name).host(cli.host).version(VERSION);
    // Genkit's tools and the Dev UI's page are for this machine: loopback, whatever --host.
    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
    #[cfg(feature = "actix")]
    {
        let mut api = flows_actix::FlowsApi::new(std::sync::Arc::clone(registry)).limits(limits);
        if let Some(workers) = cli.flows_workers {
            api = api.workers(workers);
        }
        if cli.changes_on_admin_only() {
            api = api.without_admin_changes();
        }
        manager.add(config("flows").ports(cli.flows_ports.clone()), api);
        #[cfg(feature = "test-faults")]
        faults::add_faulty_servers(manager, cli, registry, config);
    }
    #[cfg(feature = "poem")]
    if dev {
        let reflection = config("reflection")
            .host(loopback)
            .ports(cli.reflection_ports.clone())
            .start_delay(cli.reflection_delay);
        let api = reflection_poem::ReflectionApi::new(std::sync::Arc::clone(registry))
            .name("multi-server")
            .limits(limits);
        manager.add(reflection, api);
    }
    #[cfg(feature = "salvo")]
    if dev {
        // Optional: with every port of its range taken (another dev process), the flows and
        // the reflection server still run; the failure is logged and shown in /__serverz.
        let devui = config("devui")
            .host(loopback)
            .ports(cli.devui_ports.clone())
            .optional();
        manager.add(
            devui,
            devui_salvo::DevUi::new(std::sync::Arc::clone(registry)).limits(limits),
        );
    }
    #[cfg(feature = "axum")]
    manager.add(
        config("admin")
            .host(cli.admin_host)
            .ports(cli.admin_ports.clone()),
        admin_axum::AdminApi::new().limits(limits),
    );
    let _ = (manager, config, registry, dev, limits, loopback);
}

/// The binary this process was started as, for an upgrade to start again: the path it was
/// invoked by (argv[0], made absolute, or found on `PATH`), so that a deployment switching a
/// symlink (`current -> releases/v2`) upgrades to what the link names then. Taken at start,
/// not at the upgrade: the working directory may change. Else /proc/self/exe (links
/// resolved).
fn invoked_binary() -> std::io::Result<std::path::PathBuf> {
    let invoked = std::env::args_os().next().map(std::path::PathBuf::from);
    if let Some(path) = invoked {
        if path.components().count() > 1 {
            return if path.is_absolute() {
                Ok(path)
            } else {
                Ok(std::env::current_dir()?.join(path))
            };
        }
        let on_path = std::env::var_os("PATH").and_then(|dirs| {
            std::env::split_paths(&dirs)
                .map(|dir| dir.join(&path))
                .find(|candidate| candidate.is_file())
        });
        if let Some(found) = on_path {
            return Ok(found);
        }
    }
    std::env::current_exe()
}

/// The Reflection API v2 client, when the genkit CLI gave its WebSocket (in dev mode only).
fn add_v2_client(
    manager: &mut ManagerBuilder<'_>,
    cli: &Cli,
    v2_server: cli::V2Server,
    registry: &std::sync::Arc<::flows::Registry>,
) {
    let target = match v2_server {
        cli::V2Server::Off => return,
        cli::V2Server::IgnoredOutsideDev => {
            tracing::warn!(
                "GENKIT_REFLECTION_V2_SERVER is set but dev mode is off (GENKIT_ENV=dev or --dev): \
                 not dialing the genkit CLI"
            );
            return;
        }
        cli::V2Server::Dial(target) => target,
    };
    // Required like the v1 server: the genkit CLI that set the URL drives the process through
    // it alone. Not reaching the CLI, or losing it, is no failure: it dials again.
    let client = reflection_v2::ReflectionV2::new(std::sync::Arc::clone(registry), target)
        .max_message_bytes(cli.limits().body_bytes);
    let config = ServerConfig::new("reflection-v2").version(VERSION);
    manager.0.add_client(config, client);
}

/// Adds servers to the manager; with `test-faults`, each with its test-only routes.
struct ManagerBuilder<'a>(&'a mut ServerManager);

impl ManagerBuilder<'_> {
    fn add(&mut self, config: ServerConfig, server: impl WithTestRoutes) {
        self.0.add_server(config, server.with_test_routes());
    }
}

/// A server as the binary adds it: as it is, or, in a `test-faults` build, with the routes the
/// end-to-end tests drive (see `faults`).
trait WithTestRoutes {
    /// What is served.
    type Served: manager::Server;
    fn with_test_routes(self) -> Self::Served;
}

/// One banner once every server due at start is up: name, framework and URL of each.
async fn print_banner(handle: ManagerHandle, dev: bool) {
    if handle.wait_live().await != manager::ProcessState::Live {
        return;
    }
    let info = handle.server_info();
    let mut text = format!(
        "multi-server {VERSION} (pid {}){}\n",
        info.pid,
        if dev { ", dev mode" } else { "" }
    );
    // A column as wide as its longest text, and at least as wide as the default names.
    let width = |len: fn(&manager::admin::ServerEntry) -> usize, least: usize| {
        info.servers.iter().map(len).max().unwrap_or(0).max(least)
    };
    let name_width = width(|s| s.name.len(), 12);
    let framework_width = width(|s| s.framework.len(), 10);
    for server in &info.servers {
        let place = match (&server.url, &server.dials, server.state) {
            (Some(url), _, _) => url.clone(),
            (None, Some(dials), _) => format!("dials {dials}"),
            (None, None, manager::ServerState::Pending) => {
                format!("starting soon on ports {}", server.ports)
            }
            (None, None, state) => format!("{state:?} (ports {})", server.ports).to_lowercase(),
        };
        text.push_str(&format!(
            "  {:<name_width$} {:<framework_width$} {place}\n",
            server.name, server.framework
        ));
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

#[cfg(not(feature = "test-faults"))]
mod production {
    //! Without `test-faults`, every server is added as it is.
    use super::WithTestRoutes;

    macro_rules! as_it_is {
        ($($feature:literal $server:ty),*) => {$(
            #[cfg(feature = $feature)]
            impl WithTestRoutes for $server {
                type Served = Self;
                fn with_test_routes(self) -> Self {
                    self
                }
            }
        )*};
    }
    as_it_is!(
        "actix" flows_actix::FlowsApi,
        "poem" reflection_poem::ReflectionApi,
        "salvo" devui_salvo::DevUi,
        "axum" admin_axum::AdminApi
    );
}

#[cfg(feature = "test-faults")]
mod faults {
    //! Faults and routes the end-to-end tests need. Compiled only with the `test-faults`
    //! feature: every server gets its crate's test routes (`/__test/slow`, `/__test/panic`,
    //! `POST /__test/echo`), and flags add servers that fail.

    use std::net::TcpListener;
    use std::sync::Arc;

    use manager::{BoxFuture, ServeContext, Server, ServerConfig};

    use super::{Cli, ManagerBuilder, WithTestRoutes};

    /// The flows server can also crash (`POST /__test/crash`).
    impl WithTestRoutes for flows_actix::FlowsApi {
        type Served = flows_actix::test_routes::Crashing<Self>;
        fn with_test_routes(self) -> Self::Served {
            flows_actix::test_routes::Crashing::new(self.routes(flows_actix::test_routes::mount))
        }
    }
    impl WithTestRoutes for reflection_poem::ReflectionApi {
        type Served = Self;
        fn with_test_routes(self) -> Self {
            self.with_test_routes()
        }
    }
    impl WithTestRoutes for devui_salvo::DevUi {
        type Served = Self;
        fn with_test_routes(self) -> Self {
            self.routes(devui_salvo::test_routes::mount)
        }
    }
    impl WithTestRoutes for admin_axum::AdminApi {
        type Served = Self;
        fn with_test_routes(self) -> Self {
            self.routes(admin_axum::test_routes::mount)
        }
    }
    impl<S: Server> WithTestRoutes for FailingStartup<S> {
        type Served = Self;
        fn with_test_routes(self) -> Self {
            self
        }
    }

    /// `--test-fail-startup-hook-after`: a server "faulty" whose startup hook fails; the
    /// flows server can crash (`POST /__test/crash`); `--test-optional-flows`: an optional
    /// flows server "flows-optional" that can crash too.
    pub(crate) fn add_faulty_servers(
        manager: &mut ManagerBuilder<'_>,
        cli: &Cli,
        registry: &Arc<flows::Registry>,
        config: impl Fn(&str) -> ServerConfig,
    ) {
        let api = || flows_actix::FlowsApi::new(Arc::clone(registry)).workers(1);
        if let Some(delay) = cli.test_fail_startup_hook_after {
            manager.add(config("faulty").start_delay(delay), FailingStartup(api()));
        }
        if cli.test_optional_flows {
            manager.add(config("flows-optional").optional(), api());
        }
        if let Some(delay) = cli.test_slow_startup {
            manager.add(config("slowstart"), SlowStartup(Arc::new(api()), delay));
        }
    }

    /// A server whose startup hook takes a while, then serves as `S` does.
    pub(crate) struct SlowStartup<S>(pub(crate) Arc<S>, pub(crate) std::time::Duration);

    impl<S: Server> Server for SlowStartup<S> {
        fn framework(&self) -> &'static str {
            self.0.framework()
        }

        fn serve(
            self: Arc<Self>,
            listener: TcpListener,
            ctx: ServeContext,
        ) -> BoxFuture<'static, anyhow::Result<()>> {
            Arc::clone(&self.0).serve(listener, ctx)
        }

        fn on_startup<'a>(&'a self, ctx: &'a ServeContext) -> BoxFuture<'a, anyhow::Result<()>> {
            Box::pin(async move {
                tokio::time::sleep(self.1).await;
                self.0.on_startup(ctx).await
            })
        }
    }
    impl<S: Server> WithTestRoutes for SlowStartup<S> {
        type Served = Self;
        fn with_test_routes(self) -> Self {
            self
        }
    }
    /// A server whose startup hook fails.
    pub(crate) struct FailingStartup<S>(pub(crate) S);

    impl<S: Server> Server for FailingStartup<S> {
        fn framework(&self) -> &'static str {
            self.0.framework()
        }

        fn serve(
            self: Arc<Self>,
            _: TcpListener,
            _: ServeContext,
        ) -> BoxFuture<'static, anyhow::Result<()>> {
            Box::pin(async { anyhow::bail!("serve must not run after a failed startup hook") })
        }

        fn on_startup<'a>(&'a self, _: &'a ServeContext) -> BoxFuture<'a, anyhow::Result<()>> {
            Box::pin(async { anyhow::bail!("injected startup hook failure") })
        }
    }
}
