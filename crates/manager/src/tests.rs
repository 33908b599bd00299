//! Lifecycle tests with fake servers: no web framework, no real IO awaited, so most run on a
//! paused clock where a 10 s drain deadline takes no time at all.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{sleep, timeout};

use crate::admin::ServerEntry;
use crate::{
    BoxFuture, Error, InheritedSockets, ManagerHandle, Outcome, PortSpec, ProcessState, Report,
    ServeContext, Server, ServerConfig, ServerManager, ServerState, ShutdownReason,
};

/// Every test body runs under this bound (virtual time for paused tests).
const TEST_BOUND: Duration = Duration::from_secs(120);

/// What the fakes did, in order, as `"name:event"`.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<String>>>);

impl Events {
    fn push(&self, name: &str, event: &str) {
        self.0.lock().unwrap().push(format!("{name}:{event}"));
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    fn count(&self, event: &str) -> usize {
        self.all().iter().filter(|e| *e == event).count()
    }

    fn has(&self, event: &str) -> bool {
        self.count(event) > 0
    }

    /// The names of the servers that logged `event`, in order.
    fn names_of(&self, event: &str) -> Vec<String> {
        self.all()
            .iter()
            .filter_map(|e| e.strip_suffix(&format!(":{event}")).map(str::to_owned))
            .collect()
    }
}

/// How a fake request behaves: begun when serving starts, finished when released or after
/// `max` (a framework waits for it while draining).
struct Hold {
    release: Arc<Notify>,
    max: Duration,
}

/// How a fake stops serving on its own.
#[derive(Clone, Copy)]
enum Crash {
    /// Returns `Ok(())`.
    Exit,
    /// Returns an error.
    Error,
    /// Panics.
    Panic,
}

/// A server that serves nothing but follows the contract, and records what happens to it.
struct Fake {
    name: &'static str,
    events: Events,
    fail_startup: bool,
    /// How long the startup hook takes.
    startup_time: Duration,
    /// How long the shutdown hook takes.
    shutdown_time: Duration,
    fail_shutdown: bool,
    /// Stop serving on its own after this long, before shutdown.
    crash: Option<(Duration, Crash)>,
    /// Never return from serve, as a framework stuck on a connection.
    ignore_shutdown: bool,
    hold: Option<Hold>,
    /// Where serve reports the address it was handed.
    served_on: Arc<Mutex<Option<SocketAddr>>>,
}

impl Fake {
    fn new(name: &'static str, events: &Events) -> Self {
        Fake {
            name,
            events: events.clone(),
            fail_startup: false,
            startup_time: Duration::ZERO,
            shutdown_time: Duration::ZERO,
            fail_shutdown: false,
            crash: None,
            ignore_shutdown: false,
            hold: None,
            served_on: Arc::default(),
        }
    }

    fn failing_startup(mut self) -> Self {
        self.fail_startup = true;
        self
    }

    fn failing_shutdown(mut self) -> Self {
        self.fail_shutdown = true;
        self
    }

    fn slow_startup(mut self, time: Duration) -> Self {
        self.startup_time = time;
        self
    }

    fn slow_shutdown(mut self, time: Duration) -> Self {
        self.shutdown_time = time;
        self
    }

    fn crashing_after(mut self, after: Duration, how: Crash) -> Self {
        self.crash = Some((after, how));
        self
    }

    fn ignoring_shutdown(mut self) -> Self {
        self.ignore_shutdown = true;
        self
    }

    fn holding(mut self, release: &Arc<Notify>, max: Duration) -> Self {
        self.hold = Some(Hold {
            release: Arc::clone(release),
            max,
        });
        self
    }
}

impl Server for Fake {
    fn framework(&self) -> &'static str {
        "fake"
    }

    fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        ctx: ServeContext,
    ) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(async move {
            let name = self.name;
            self.events.push(name, "serve");
            *self.served_on.lock().unwrap() = Some(listener.local_addr()?);
            let request = async {
                if let Some(hold) = &self.hold {
                    let guard = ctx.begin_request("GET", "/slow");
                    // Like a framework, enforce the drain deadline: past it, the request is
                    // dropped unanswered.
                    let deadline = async {
                        ctx.stop_accepting().cancelled().await;
                        sleep(ctx.drain_deadline()).await;
                    };
                    tokio::select! {
                        () = hold.release.notified() => {}
                        () = sleep(hold.max) => {}
                        () = deadline => {
                            drop(guard);
                            return;
                        }
                    }
                    guard.finish(200);
                    self.events.push(name, "request-done");
                }
            };
            let accepting = async {
                match self.crash {
                    Some((after, how)) => tokio::select! {
                        () = sleep(after) => {
                            self.events.push(name, "crash");
                            return match how {
                                Crash::Exit => Ok(()),
                                Crash::Error => Err(anyhow::anyhow!("boom")),
                                Crash::Panic => panic!("fake server panicked"),
                            };
                        }
                        () = ctx.stop_accepting().cancelled() => {}
                    },
                    None => ctx.stop_accepting().cancelled().await,
                }
                self.events.push(name, "stop-accepting");
                if self.ignore_shutdown {
                    std::future::pending::<()>().await;
                }
                Ok(())
            };
            // Like a framework: stop accepting on shutdown, then let the request finish.
            let (accepted, ()) = tokio::join!(accepting, request);
            self.events.push(name, "serve-end");
            drop(listener);
            accepted
        })
    }

    fn on_startup<'a>(&'a self, _ctx: &'a ServeContext) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            self.events.push(self.name, "startup");
            sleep(self.startup_time).await;
            if self.fail_startup {
                anyhow::bail!("database unreachable");
            }
            Ok(())
        })
    }

    fn on_shutdown<'a>(&'a self, _ctx: &'a ServeContext) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            self.events.push(self.name, "shutdown");
            sleep(self.shutdown_time).await;
            if self.fail_shutdown {
                anyhow::bail!("cannot flush");
            }
            Ok(())
        })
    }
}

fn manager() -> ServerManager {
    ServerManager::new().handle_signals(false)
}

fn requested() -> ShutdownReason {
    ShutdownReason::Requested { why: "test".into() }
}

/// Runs `body` under [`TEST_BOUND`].
async fn bounded<T>(body: impl Future<Output = T>) -> T {
    timeout(TEST_BOUND, body).await.expect("test timed out")
}

/// Polls `cond` until it holds; panics after 30 s (virtual time in paused tests).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let polled = timeout(Duration::from_secs(30), async {
        while !cond() {
            sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(polled.is_ok(), "timed out waiting for {what}");
}

/// Runs `manager` in a task once it is live: its handle, and the task (for [`report_of`]).
async fn run_live(manager: ServerManager) -> (ManagerHandle, tokio::task::JoinHandle<Report>) {
    let handle = manager.handle();
    let run = tokio::spawn(manager.run());
    assert_eq!(handle.wait_live().await, ProcessState::Live);
    (handle, run)
}

/// Awaits the manager's report; panics if it does not come within 30 s.
async fn report_of(run: tokio::task::JoinHandle<Report>) -> Report {
    timeout(Duration::from_secs(30), run)
        .await
        .expect("the manager did not stop")
        .expect("the manager panicked")
}

fn entry(handle: &ManagerHandle, name: &str) -> ServerEntry {
    handle
        .server_info()
        .servers
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no server '{name}' in /__serverz"))
}

fn state(handle: &ManagerHandle, name: &str) -> ServerState {
    entry(handle, name).state
}

fn report_entry<'a>(report: &'a Report, name: &str) -> &'a ServerEntry {
    report
        .servers
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no server '{name}' in the report"))
}

#[tokio::test(start_paused = true)]
async fn hooks_run_once_each_and_shutdown_hooks_in_reverse_start_order() {
    bounded(async {
        let events = Events::default();
        let mut manager = manager();
        // Delays make the start order a, b, c regardless of task scheduling.
        manager.add_server(ServerConfig::new("a"), Fake::new("a", &events));
        manager.add_server_after(
            Duration::from_secs(1),
            ServerConfig::new("b"),
            Fake::new("b", &events),
        );
        manager.add_server_after(
            Duration::from_secs(2),
            ServerConfig::new("c"),
            Fake::new("c", &events),
        );
        let handle = manager.handle();
        let run = tokio::spawn(manager.run());
        eventually("all three serving", || {
            ["a", "b", "c"]
                .iter()
                .all(|n| state(&handle, n) == ServerState::Serving)
                && events.count("c:serve") == 1
        })
        .await;
        assert!(handle.request_shutdown(requested()));
        assert!(!handle.request_shutdown(ShutdownReason::Requested {
            why: "again".into()
        }));
        let report = report_of(run).await;

        assert_eq!(report.outcome(), Outcome::Clean);
        assert_eq!(report.reason, requested(), "the first reason wins");
        for name in ["a", "b", "c"] {
            for event in [
                "startup",
                "serve",
                "stop-accepting",
                "serve-end",
                "shutdown",
            ] {
                let event = format!("{name}:{event}");
                assert_eq!(events.count(&event), 1, "{event} in {:?}", events.all());
            }
            assert_eq!(report_entry(&report, name).state, ServerState::Stopped);
        }
        assert_eq!(events.names_of("startup"), ["a", "b", "c"]);
        assert_eq!(events.names_of("shutdown"), ["c", "b", "a"]);
        // Shutdown hooks run only once every server has drained.
        let all = events.all();
        let last_serve_end = all.iter().rposition(|e| e.ends_with(":serve-end")).unwrap();
        let first_shutdown = all.iter().position(|e| e.ends_with(":shutdown")).unwrap();
        assert!(last_serve_end < first_shutdown, "{all:?}");
        assert_eq!(handle.process_state(), ProcessState::Stopped);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_required_server_failing_to_start_stops_the_others() {
    bounded(async {
        let events = Events::default();
        let mut manager = manager();
        manager.add_server(ServerConfig::new("good1"), Fake::new("good1", &events));
        manager.add_server(ServerConfig::new("good2"), Fake::new("good2", &events));
        manager.add_server_after(
            Duration::from_secs(1),
            ServerConfig::new("bad"),
            Fake::new("bad", &events).failing_startup(),
        );
        let handle = manager.handle();
        // Nobody asks for shutdown: the failure alone must bring the process down.
        let report = report_of(tokio::spawn(manager.run())).await;

        assert_eq!(report.outcome(), Outcome::Failed);
        assert_eq!(
            report.reason,
            ShutdownReason::ServerFailed {
                server: "bad".into()
            }
        );
        assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
        let failure = &report.failures[0];
        assert_eq!(failure.server(), "bad");
        assert!(matches!(failure, Error::StartupHook { .. }), "{failure:?}");
        assert!(failure.to_string().contains("'bad'"), "{failure}");
        assert_eq!(
            failure.chain(),
            "server 'bad': startup hook failed: database unreachable"
        );
        assert!(report.optional_failures.is_empty());

        for name in ["good1", "good2"] {
            for event in ["startup", "serve", "serve-end", "shutdown"] {
                assert_eq!(
                    events.count(&format!("{name}:{event}")),
                    1,
                    "{:?}",
                    events.all()
                );
            }
            assert_eq!(report_entry(&report, name).state, ServerState::Stopped);
        }
        assert_eq!(events.count("bad:startup"), 1);
        assert!(!events.has("bad:serve"), "{:?}", events.all());
        assert!(
            !events.has("bad:shutdown"),
            "a server that never started is not shut down"
        );
        let bad = report_entry(&report, "bad");
        assert_eq!(bad.state, ServerState::Failed);
        assert!(
            bad.error
                .as_deref()
                .unwrap()
                .contains("database unreachable")
        );
        assert_eq!(handle.process_state(), ProcessState::Stopped);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn an_optional_server_failing_leaves_the_rest_running() {
    bounded(async {
        let events = Events::default();
        let mut manager = manager();
        manager.add_server(ServerConfig::new("main"), Fake::new("main", &events));
        manager.add_server(
            ServerConfig::new("extra").optional(),
            Fake::new("extra", &events).failing_startup(),
        );
        let (handle, run) = run_live(manager).await;
        eventually("extra failed", || {
            state(&handle, "extra") == ServerState::Failed
        })
        .await;
        sleep(Duration::from_secs(5)).await;

        assert!(!handle.is_shutting_down());
        assert_eq!(handle.process_state(), ProcessState::Live);
        let readiness = handle.readiness();
        assert!(readiness.ready, "{readiness:?}");
        assert_eq!(readiness.http_status(), 200);
        let extra_ready = readiness
            .servers
            .iter()
            .find(|s| s.name == "extra")
            .unwrap();
        assert_eq!(extra_ready.state, ServerState::Failed);
        assert!(!extra_ready.required);

        let extra = entry(&handle, "extra");
        assert_eq!(extra.state, ServerState::Failed);
        let error = extra.error.as_deref().expect("the entry says why");
        assert!(error.contains("server 'extra'") && error.contains("database unreachable"));
        let json = serde_json::to_value(handle.server_info()).unwrap();
        let extra_json = &json["servers"][1];
        assert_eq!(extra_json["name"], "extra");
        assert_eq!(extra_json["state"], "failed");
        assert_eq!(extra_json["error"], error);
        assert_eq!(state(&handle, "main"), ServerState::Serving);

        handle.request_shutdown(requested());
        let report = report_of(run).await;
        assert_eq!(report.outcome(), Outcome::Clean);
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        assert_eq!(report.optional_failures.len(), 1);
        assert_eq!(report.optional_failures[0].server(), "extra");
        assert_eq!(events.count("main:shutdown"), 1);
        assert!(!events.has("extra:serve"));
        assert!(!events.has("extra:shutdown"));
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_server_returning_early_brings_the_process_down() {
    bounded(async {
        let events = Events::default();
        let mut manager = manager();
        manager.add_server(ServerConfig::new("steady"), Fake::new("steady", &events));
        manager.add_server(
            ServerConfig::new("crasher"),
            Fake::new("crasher", &events).crashing_after(Duration::from_secs(3), Crash::Exit),
        );
        let (_handle, run) = run_live(manager).await;
        let report = report_of(run).await;

        assert!(events.has("crasher:crash"));
        assert_eq!(report.outcome(), Outcome::Failed);
        assert_eq!(
            report.reason,
            ShutdownReason::ServerFailed {
                server: "crasher".into()
            }
        );
        assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
        assert!(
            matches!(&report.failures[0], Error::Exited { server } if server == "crasher"),
            "{:?}",
            report.failures
        );
        assert_eq!(report_entry(&report, "crasher").state, ServerState::Failed);
        assert_eq!(report_entry(&report, "steady").state, ServerState::Stopped);
        assert_eq!(events.count("steady:stop-accepting"), 1);
        assert_eq!(events.count("steady:shutdown"), 1);
        assert!(events.count("crasher:shutdown") <= 1, "{:?}", events.all());
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_server_failing_with_an_error_is_reported_with_its_cause() {
    bounded(async {
        let events = Events::default();
        let mut manager = manager();
        manager.add_server(
            ServerConfig::new("erring"),
            Fake::new("erring", &events).crashing_after(Duration::from_secs(1), Crash::Error),
        );
        let report = report_of(tokio::spawn(manager.run())).await;
        assert_eq!(report.outcome(), Outcome::Failed);
        assert_eq!(report.failures.len(), 1);
        assert!(matches!(report.failures[0], Error::Serve { .. }));
        assert_eq!(&report.failures[0].chain(), "server 'erring' failed: boom");
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_delayed_server_is_pending_until_its_delay_has_passed() {
    bounded(async {
        let events = Events::default();
        let mut manager = manager();
        manager.add_server(ServerConfig::new("now"), Fake::new("now", &events));
        manager.add_server_after(
            Duration::from_secs(2),
            ServerConfig::new("later"),
            Fake::new("later", &events),
        );
        let handle = manager.handle();
        assert_eq!(state(&handle, "later"), ServerState::Pending);
        let run = tokio::spawn(manager.run());
        assert_eq!(handle.wait_live().await, ProcessState::Live);

        sleep(Duration::from_millis(1900)).await;
        assert_eq!(state(&handle, "later"), ServerState::Pending);
        assert!(!events.has("later:startup"));
        assert!(
            handle.readiness().ready,
            "a pending server does not fail readiness"
        );
        assert_eq!(entry(&handle, "later").address, None);

        sleep(Duration::from_millis(200)).await;
        eventually("later serving", || {
            state(&handle, "later") == ServerState::Serving
        })
        .await;
        assert_eq!(events.count("later:startup"), 1);
        assert!(entry(&handle, "later").address.is_some());

        handle.request_shutdown(requested());
        let report = report_of(run).await;
        assert_eq!(report.outcome(), Outcome::Clean);
        assert_eq!(events.count("later:shutdown"), 1);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_during_the_delay_cancels_the_delayed_server() {
    bounded(async {
        let events = Events::default();
        let mut manager = manager();
        manager.add_server(ServerConfig::new("now"), Fake::new("now", &events));
        manager.add_server_after(
            Duration::from_secs(5),
            ServerConfig::new("later"),
            Fake::new("later", &events),
        );
        let (handle, run) = run_live(manager).await;
        sleep(Duration::from_secs(1)).await;
        let asked = tokio::time::Instant::now();
        handle.request_shutdown(requested());
        let report = report_of(run).await;

        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "waited out the delay"
        );
        assert_eq!(report.outcome(), Outcome::Clean);
        assert_eq!(report_entry(&report, "later").state, ServerState::Stopped);
        assert!(
            !events.all().iter().any(|e| e.starts_with("later:")),
            "{:?}",
            events.all()
        );
        // Time moves on; the cancelled start must not happen late either.
        sleep(Duration::from_secs(10)).await;
        assert!(!events.all().iter().any(|e| e.starts_with("later:")));
        assert_eq!(events.count("now:shutdown"), 1);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn servers_can_be_added_through_the_handle_while_running() {
    bounded(async {
        let events = Events::default();
        let mut manager = manager();
        manager.add_server(ServerConfig::new("first"), Fake::new("first", &events));
        let (handle, run) = run_live(manager).await;

        handle.add_server_after(
            Duration::from_secs(1),
            ServerConfig::new("added"),
            Fake::new("added", &events),
        );
        handle.add_server_after(
            Duration::ZERO,
            ServerConfig::new("at-once"),
            Fake::new("at-once", &events),
        );
        assert_eq!(state(&handle, "added"), ServerState::Pending);
        eventually("at-once serving", || {
            state(&handle, "at-once") == ServerState::Serving
        })
        .await;
        assert_eq!(state(&handle, "added"), ServerState::Pending);
        eventually("added serving", || {
            state(&handle, "added") == ServerState::Serving
        })
        .await;
        assert_eq!(events.count("added:startup"), 1);
        assert_eq!(handle.process_state(), ProcessState::Live);

        handle.request_shutdown(requested());
        // Once shutting down, additions are ignored.
        handle.add_server_after(
            Duration::ZERO,
            ServerConfig::new("too-late"),
            Fake::new("too-late", &events),
        );
        let report = report_of(run).await;
        assert_eq!(report.outcome(), Outcome::Clean);
        for name in ["first", "added", "at-once"] {
            assert_eq!(
                events.count(&format!("{name}:shutdown")),
                1,
                "{:?}",
                events.all()
            );
            assert_eq!(report_entry(&report, name).state, ServerState::Stopped);
        }
        assert!(!events.all().iter().any(|e| e.starts_with("too-late:")));
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_request_held_past_the_drain_deadline_is_counted_as_cut() {
    bounded(async {
        let events = Events::default();
        let release = Arc::new(Notify::new());
        let mut manager = manager().drain_deadline(Duration::from_secs(2));
        manager.add_server(
            ServerConfig::new("slow"),
            Fake::new("slow", &events).holding(&release, Duration::from_secs(600)),
        );
        let handle = manager.handle();
        let run = tokio::spawn(manager.run());
        eventually("a request in flight", || {
            entry(&handle, "slow").requests.in_flight == 1
        })
        .await;
        let asked = tokio::time::Instant::now();
        handle.request_shutdown(requested());
        let report = report_of(run).await;

        assert!(
            asked.elapsed() >= Duration::from_secs(2),
            "{:?}",
            asked.elapsed()
        );
        assert_eq!(report.requests_cut, 1);
        assert_eq!(report.outcome(), Outcome::RequestsCut);
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        let slow = report_entry(&report, "slow");
        assert_eq!(slow.requests.served, 0);
        assert_eq!(slow.requests.aborted, 1);
        assert_eq!(slow.requests.in_flight, 0);
        assert!(!events.has("slow:request-done"));
        assert_eq!(events.count("slow:shutdown"), 1);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_request_finished_within_the_drain_deadline_is_clean() {
    bounded(async {
        let events = Events::default();
        let release = Arc::new(Notify::new());
        let mut manager = manager().drain_deadline(Duration::from_secs(10));
        manager.add_server(
            ServerConfig::new("slow"),
            Fake::new("slow", &events).holding(&release, Duration::from_secs(600)),
        );
        let handle = manager.handle();
        let run = tokio::spawn(manager.run());
        eventually("a request in flight", || {
            entry(&handle, "slow").requests.in_flight == 1
        })
        .await;
        handle.request_shutdown(requested());
        eventually("slow draining", || {
            state(&handle, "slow") == ServerState::Draining
        })
        .await;
        sleep(Duration::from_secs(3)).await;
        assert_eq!(
            state(&handle, "slow"),
            ServerState::Draining,
            "waits for the request"
        );
        release.notify_one();
        let report = report_of(run).await;

        assert_eq!(report.requests_cut, 0);
        assert_eq!(report.outcome(), Outcome::Clean);
        let slow = report_entry(&report, "slow");
        assert_eq!(slow.requests.served, 1);
        assert_eq!(slow.requests.aborted, 0);
        assert_eq!(events.count("slow:request-done"), 1);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn readiness_fails_at_once_and_servers_keep_serving_through_the_drain_delay() {
    bounded(async {
        let events = Events::default();
        let mut manager = manager().drain_delay(Duration::from_secs(5));
        manager.add_server(ServerConfig::new("web"), Fake::new("web", &events));
        let (handle, run) = run_live(manager).await;
        eventually("web serving", || events.has("web:serve")).await;
        assert!(handle.readiness().ready);

        let asked = tokio::time::Instant::now();
        handle.request_shutdown(requested());
        let readiness = handle.readiness();
        assert!(!readiness.ready);
        assert_eq!(readiness.http_status(), 503);
        assert_eq!(readiness.state, ProcessState::Draining);
        assert_eq!(handle.process_state(), ProcessState::Draining);
        assert_eq!(readiness.reason.as_deref(), Some("process is draining"));
        assert!(handle.is_shutting_down());

        sleep(Duration::from_millis(4900)).await;
        assert!(!events.has("web:stop-accepting"), "{:?}", events.all());
        assert_eq!(state(&handle, "web"), ServerState::Serving);
        assert!(!handle.readiness().ready);

        eventually("web stops accepting", || events.has("web:stop-accepting")).await;
        assert!(
            asked.elapsed() >= Duration::from_secs(5),
            "{:?}",
            asked.elapsed()
        );
        let report = report_of(run).await;
        assert_eq!(report.outcome(), Outcome::Clean);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_busy_port_is_an_error_naming_server_host_and_port() {
    bounded(async {
        let busy = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = busy.local_addr().unwrap().port();
        let events = Events::default();
        let mut manager = manager();
        manager.add_server(
            ServerConfig::new("x").ports(PortSpec::Single(port)),
            Fake::new("x", &events),
        );
        let report = report_of(tokio::spawn(manager.run())).await;

        assert_eq!(report.outcome(), Outcome::Failed);
        assert_eq!(
            report.reason,
            ShutdownReason::ServerFailed { server: "x".into() }
        );
        assert_eq!(report.failures.len(), 1);
        assert!(
            matches!(report.failures[0], Error::NoFreePort { .. }),
            "{:?}",
            report.failures
        );
        assert_eq!(
            report.failures[0].to_string(),
            format!("server 'x': no free port in 127.0.0.1:{port}")
        );
        assert_eq!(report_entry(&report, "x").state, ServerState::Failed);
        assert!(events.all().is_empty(), "no hook runs without a socket");
        drop(busy);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn inherited_sockets_go_to_servers_in_order() {
    bounded(async {
        let sockets: Vec<TcpListener> = (0..2)
            .map(|_| {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                l.set_nonblocking(true).unwrap();
                l
            })
            .collect();
        let addrs: Vec<_> = sockets.iter().map(|l| l.local_addr().unwrap()).collect();
        let events = Events::default();
        let first = Fake::new("first", &events);
        let first_on = Arc::clone(&first.served_on);
        let second = Fake::new("second", &events);
        let second_on = Arc::clone(&second.served_on);
        let mut manager = manager().inherited_sockets(InheritedSockets::from_listeners(sockets));
        // Port specs are ignored when a socket is inherited.
        manager.add_server(ServerConfig::new("first").ports(PortSpec::Single(1)), first);
        manager.add_server(
            ServerConfig::new("second").ports(PortSpec::Single(2)),
            second,
        );
        let handle = manager.handle();
        let run = tokio::spawn(manager.run());
        eventually("both serving", || {
            first_on.lock().unwrap().is_some() && second_on.lock().unwrap().is_some()
        })
        .await;
        assert_eq!(*first_on.lock().unwrap(), Some(addrs[0]));
        assert_eq!(*second_on.lock().unwrap(), Some(addrs[1]));
        assert_eq!(
            entry(&handle, "first").url,
            Some(format!("http://{}", addrs[0]))
        );
        handle.request_shutdown(requested());
        assert_eq!(report_of(run).await.outcome(), Outcome::Clean);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn named_inherited_sockets_go_to_the_server_of_that_name() {
    bounded(async {
        let socket = TcpListener::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let addr = socket.local_addr().unwrap();
        let events = Events::default();
        let first = Fake::new("first", &events);
        let first_on = Arc::clone(&first.served_on);
        let second = Fake::new("second", &events);
        let second_on = Arc::clone(&second.served_on);
        let sockets = InheritedSockets::from_listeners([socket]).with_names(["second"]);
        let mut manager = manager().inherited_sockets(sockets);
        manager.add_server(ServerConfig::new("first"), first);
        manager.add_server(ServerConfig::new("second"), second);
        let handle = manager.handle();
        let run = tokio::spawn(manager.run());
        eventually("both serving", || {
            first_on.lock().unwrap().is_some() && second_on.lock().unwrap().is_some()
        })
        .await;
        assert_eq!(*second_on.lock().unwrap(), Some(addr));
        assert_ne!(*first_on.lock().unwrap(), Some(addr));
        handle.request_shutdown(requested());
        assert_eq!(report_of(run).await.outcome(), Outcome::Clean);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn inherited_sockets_that_do_not_fit_the_servers_are_one_clear_error() {
    bounded(async {
        let socket = || {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.set_nonblocking(true).unwrap();
            l
        };
        let cases = [
            (
                InheritedSockets::from_listeners([socket()]),
                "1 socket(s) inherited but 2 server(s) to serve (a, b)",
            ),
            (
                InheritedSockets::from_listeners([socket()]).with_names(["c"]),
                "a socket is named 'c' but no server has that name (servers: a, b)",
            ),
        ];
        for (sockets, expected) in cases {
            let events = Events::default();
            let mut manager = manager().inherited_sockets(sockets);
            manager.add_server(ServerConfig::new("a"), Fake::new("a", &events));
            manager.add_server(ServerConfig::new("b"), Fake::new("b", &events));
            let report = report_of(tokio::spawn(manager.run())).await;
            assert_eq!(report.outcome(), Outcome::Failed);
            let message = report.failures[0].to_string();
            assert!(message.contains(expected), "{message}");
            assert!(
                !events.has("a:serve") && !events.has("b:serve"),
                "nothing may serve"
            );
        }
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_panicking_server_is_reported_as_such() {
    bounded(async {
        let events = Events::default();
        let mut manager = manager();
        manager.add_server(ServerConfig::new("ok"), Fake::new("ok", &events));
        manager.add_server(
            ServerConfig::new("panicky"),
            Fake::new("panicky", &events).crashing_after(Duration::from_secs(1), Crash::Panic),
        );
        let report = report_of(tokio::spawn(manager.run())).await;
        assert_eq!(report.outcome(), Outcome::Failed);
        assert_eq!(
            report.reason,
            ShutdownReason::ServerFailed {
                server: "panicky".into()
            }
        );
        assert_eq!(
            report.failures[0].to_string(),
            "server 'panicky' panicked: fake server panicked"
        );
        assert_eq!(events.count("ok:shutdown"), 1);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn an_optional_server_dying_while_running_is_not_fatal() {
    bounded(async {
        let events = Events::default();
        let mut manager = manager();
        manager.add_server(ServerConfig::new("main"), Fake::new("main", &events));
        manager.add_server(
            ServerConfig::new("flaky").optional(),
            Fake::new("flaky", &events).crashing_after(Duration::from_secs(1), Crash::Error),
        );
        let handle = manager.handle();
        let run = tokio::spawn(manager.run());
        eventually("flaky failed", || {
            state(&handle, "flaky") == ServerState::Failed
        })
        .await;
        sleep(Duration::from_secs(5)).await;
        assert!(!handle.is_shutting_down());
        assert!(handle.readiness().ready);
        assert!(entry(&handle, "flaky").error.unwrap().contains("boom"));
        handle.request_shutdown(requested());
        let report = report_of(run).await;
        assert_eq!(report.outcome(), Outcome::Clean);
        assert_eq!(report.optional_failures.len(), 1);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_startup_hook_that_hangs_times_out() {
    bounded(async {
        let events = Events::default();
        let mut manager = manager().hook_timeout(Duration::from_secs(1));
        manager.add_server(ServerConfig::new("a"), Fake::new("a", &events));
        manager.add_server_after(
            Duration::from_millis(10),
            ServerConfig::new("slow-exit").optional(),
            Fake::new("slow-exit", &events),
        );
        manager.add_server_after(
            Duration::from_millis(20),
            ServerConfig::new("slow-start").optional(),
            Fake::new("slow-start", &events).slow_startup(Duration::from_secs(60)),
        );
        let handle = manager.handle();
        let run = tokio::spawn(manager.run());
        eventually("slow-start failed", || {
            state(&handle, "slow-start") == ServerState::Failed
        })
        .await;
        let error = entry(&handle, "slow-start").error.unwrap();
        assert_eq!(
            error,
            "server 'slow-start': startup hook timed out after 1s"
        );
        assert!(handle.readiness().ready);
        handle.request_shutdown(requested());
        let report = report_of(run).await;
        assert_eq!(report.outcome(), Outcome::Clean, "{:?}", report.failures);
        assert_eq!(events.names_of("shutdown"), ["slow-exit", "a"]);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_or_hanging_shutdown_hook_fails_the_stop_and_the_others_still_run() {
    bounded(async {
        let events = Events::default();
        let mut manager = manager().hook_timeout(Duration::from_secs(1));
        manager.add_server(ServerConfig::new("a"), Fake::new("a", &events));
        manager.add_server_after(
            Duration::from_millis(10),
            ServerConfig::new("hangs"),
            Fake::new("hangs", &events).slow_shutdown(Duration::from_secs(60)),
        );
        manager.add_server_after(
            Duration::from_millis(20),
            ServerConfig::new("fails"),
            Fake::new("fails", &events).failing_shutdown(),
        );
        let handle = manager.handle();
        let run = tokio::spawn(manager.run());
        eventually("all serving", || events.count("fails:serve") == 1).await;
        handle.request_shutdown(requested());
        let report = report_of(run).await;
        assert_eq!(report.outcome(), Outcome::Failed);
        assert_eq!(report.reason, requested(), "hooks do not change the reason");
        assert_eq!(report.failures.len(), 2, "{:?}", report.failures);
        assert!(matches!(report.failures[0], Error::ShutdownHook { .. }));
        assert_eq!(
            &report.failures[0].chain(),
            "server 'fails': shutdown hook failed: cannot flush"
        );
        assert_eq!(
            report.failures[1].to_string(),
            "server 'hangs': shutdown hook timed out after 1s"
        );
        assert_eq!(events.names_of("shutdown"), ["fails", "hangs", "a"]);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_server_that_never_stops_is_abandoned_after_deadline_and_grace() {
    bounded(async {
        let events = Events::default();
        let mut manager = manager().drain_deadline(Duration::from_secs(2));
        manager.add_server(
            ServerConfig::new("stuck"),
            Fake::new("stuck", &events).ignoring_shutdown(),
        );
        let (handle, run) = run_live(manager).await;
        let asked = tokio::time::Instant::now();
        handle.request_shutdown(requested());
        let report = report_of(run).await;
        let took = asked.elapsed();
        assert!(
            took >= Duration::from_secs(2) && took <= Duration::from_secs(4),
            "{took:?}"
        );
        assert!(events.has("stuck:stop-accepting"));
        assert!(!events.has("stuck:serve-end"));
        assert_eq!(events.count("stuck:shutdown"), 1);
        assert_eq!(report_entry(&report, "stuck").state, ServerState::Failed);
        assert_eq!(report.outcome(), Outcome::Failed);
        assert!(matches!(report.failures[..], [Error::Unresponsive { .. }]));
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_requested_before_run_starts_nothing() {
    bounded(async {
        let events = Events::default();
        let mut manager = manager();
        manager.add_server(ServerConfig::new("a"), Fake::new("a", &events));
        let handle = manager.handle();
        assert!(handle.request_shutdown(requested()));
        let report = report_of(tokio::spawn(manager.run())).await;
        assert_eq!(report.outcome(), Outcome::Clean);
        assert_eq!(report_entry(&report, "a").state, ServerState::Stopped);
        assert!(events.all().is_empty(), "{:?}", events.all());
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_server_dying_during_the_drain_delay_is_a_failure() {
    bounded(async {
        let events = Events::default();
        let mut manager = manager().drain_delay(Duration::from_secs(5));
        manager.add_server(
            ServerConfig::new("dies"),
            Fake::new("dies", &events).crashing_after(Duration::from_secs(2), Crash::Exit),
        );
        let (handle, run) = run_live(manager).await;
        sleep(Duration::from_secs(1)).await;
        handle.request_shutdown(requested());
        let report = report_of(run).await;
        // It stopped serving while the load balancer may still send traffic: by the trait's
        // contract, returning before the token is cancelled means the server died.
        assert!(events.has("dies:crash"));
        assert_eq!(report_entry(&report, "dies").state, ServerState::Failed);
        assert_eq!(report.outcome(), Outcome::Failed);
        assert!(matches!(&report.failures[..], [Error::Exited { server }] if server == "dies"));
    })
    .await;
}

#[test]
fn settings_can_follow_handle_without_panicking() {
    let manager = ServerManager::new();
    let handle = manager.handle();
    let _manager = manager
        .version("9.9.9")
        .drain_deadline(Duration::from_secs(3))
        .drain_delay(Duration::from_millis(5))
        .hook_timeout(Duration::from_secs(1));
    assert_eq!(handle.server_info().version, "9.9.9");
}

/// A server that keeps no part of the stop sequence but the contract's three steps.
struct Minimal {
    stopped_accepting: Arc<Notify>,
}

impl Server for Minimal {
    fn framework(&self) -> &'static str {
        "minimal"
    }

    fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        ctx: ServeContext,
    ) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(async move {
            ctx.stop_accepting().cancelled().await;
            self.stopped_accepting.notify_one();
            ctx.close_idle().cancelled().await;
            assert!(
                ctx.requests().closes_connections(),
                "responses close their connections before idle ones are closed"
            );
            // Still owns the socket for a while, as a framework finishing its requests does.
            sleep(Duration::from_millis(300)).await;
            drop(listener);
            Ok(())
        })
    }
}

/// The manager itself makes the socket refuse newcomers once the server stopped accepting
/// (not queue them in the backlog to be reset later), marks the moment responses must close
/// their connections, and only then, a moment later, tells the server to close idle ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_stops_the_socket_listening_and_asks_connections_to_close() {
    let stopped_accepting = Arc::new(Notify::new());
    let mut manager = ServerManager::new().handle_signals(false);
    let server = Minimal {
        stopped_accepting: Arc::clone(&stopped_accepting),
    };
    manager.add_server(ServerConfig::new("minimal"), server);
    let handle = manager.handle();
    let run = tokio::spawn(manager.run());
    timeout(Duration::from_secs(10), handle.wait_live())
        .await
        .unwrap();
    let addr: SocketAddr = entry(&handle, "minimal").address.unwrap().parse().unwrap();
    // Listening: a connect lands in the backlog even though nobody accepts.
    drop(std::net::TcpStream::connect(addr).expect("listening before the stop"));

    handle.request_shutdown(requested());
    timeout(Duration::from_secs(10), stopped_accepting.notified())
        .await
        .unwrap();
    let refused = timeout(Duration::from_secs(5), async {
        loop {
            if std::net::TcpStream::connect(addr).is_err() {
                return;
            }
            sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert!(
        refused.is_ok(),
        "connections are refused once the server stopped accepting"
    );
    let report = timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.outcome(), Outcome::Clean);
}

/// A client that dials nothing: it says it is connected, holds one call until the stop, and
/// finishes it while draining (or never returns, or returns early).
struct FakeClient {
    events: Events,
    call_time: Duration,
    return_early: bool,
}

impl crate::Client for FakeClient {
    fn framework(&self) -> &'static str {
        "fake-ws"
    }

    fn dials(&self) -> String {
        "ws://localhost:3200".into()
    }

    fn run(self: Arc<Self>, ctx: crate::ClientContext) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(async move {
            self.events.push("client", "run");
            ctx.set_status("registered");
            if self.return_early {
                sleep(Duration::from_secs(1)).await;
                return Ok(());
            }
            let call = ctx.begin_request("runAction", "/flow/x");
            ctx.stopping().cancelled().await;
            self.events.push("client", "stopping");
            sleep(self.call_time).await;
            call.finish(200);
            self.events.push("client", "drained");
            Ok(())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_binds_nothing_shows_its_status_and_drains_its_calls() {
    bounded(async {
        let events = Events::default();
        let mut manager = manager();
        manager.add_server(ServerConfig::new("api"), Fake::new("api", &events));
        let client = FakeClient {
            events: events.clone(),
            call_time: Duration::from_secs(2),
            return_early: false,
        };
        manager.add_client(ServerConfig::new("reflection-v2").optional(), client);
        let (handle, run) = run_live(manager).await;
        eventually("the client's status", || {
            entry(&handle, "reflection-v2").status.is_some()
        })
        .await;
        let shown = entry(&handle, "reflection-v2");
        assert_eq!(shown.framework, "fake-ws");
        assert_eq!(shown.dials.as_deref(), Some("ws://localhost:3200"));
        assert_eq!(shown.status.as_deref(), Some("registered"));
        assert_eq!(shown.address, None);
        assert_eq!(shown.state, ServerState::Serving);
        assert_eq!(shown.requests.in_flight, 1);
        assert!(handle.readiness().ready);
        // The server still takes the first (here: its own bound) socket; the client none.
        assert!(entry(&handle, "api").address.is_some());

        handle.request_shutdown(requested());
        let report = report_of(run).await;
        assert_eq!(report.outcome(), Outcome::Clean, "{:?}", report.failures);
        assert_eq!(report.requests_cut, 0);
        let client = report_entry(&report, "reflection-v2");
        assert_eq!(client.state, ServerState::Stopped);
        assert_eq!(client.requests.served, 1);
        assert!(events.has("client:drained"));
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_client_past_the_drain_deadline_is_cut_and_one_that_dies_is_a_failure() {
    bounded(async {
        let events = Events::default();
        let mut first = manager().drain_deadline(Duration::from_secs(1));
        let slow = FakeClient {
            events: events.clone(),
            call_time: Duration::from_secs(60),
            return_early: false,
        };
        first.add_client(ServerConfig::new("slow"), slow);
        let (handle, run) = run_live(first).await;
        handle.request_shutdown(requested());
        let report = report_of(run).await;
        // Abandoned after the deadline and the grace: its call counts as cut.
        assert_eq!(report.outcome(), Outcome::Failed);
        assert_eq!(report.requests_cut, 1, "{report:?}");
        assert!(
            matches!(&report.failures[0], Error::Unresponsive { server, .. } if server == "slow"),
            "{:?}",
            report.failures
        );
        assert!(!events.has("client:drained"));

        let mut again = manager();
        let dying = FakeClient {
            events: events.clone(),
            call_time: Duration::ZERO,
            return_early: true,
        };
        again.add_client(ServerConfig::new("dying"), dying);
        let report = report_of(tokio::spawn(again.run())).await;
        assert_eq!(
            report.reason,
            ShutdownReason::ServerFailed {
                server: "dying".into()
            }
        );
        assert!(matches!(&report.failures[0], Error::Exited { server } if server == "dying"));
    })
    .await;
}
