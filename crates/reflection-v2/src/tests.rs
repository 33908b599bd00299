//! The client against a small in-test "genkit CLI": a tokio WebSocket server that plays the
//! CLI's side of manager-v2.ts (string ids, register answered with a telemetry URL), under a
//! real `ServerManager`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use manager::{ManagerHandle, Report, ServerConfig, ServerManager, ShutdownReason};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::ReflectionV2;

/// Every wait in these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(10);

fn registry() -> Arc<flows::Registry> {
    let registry = flows::Registry::new();
    registry.define_flow("greet", "Says hello.", |name: String, _ctx| async move {
        Ok::<_, flows::FlowError>(format!("Hello, {name}!"))
    });
    registry.define_flow(
        "count",
        "Streams 0..n.",
        |n: u32, ctx: flows::FlowContext| async move {
            for i in 0..n {
                ctx.send_chunk(json!({ "index": i })).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok::<_, flows::FlowError>(n)
        },
    );
    registry.define_flow(
        "forever",
        "Never ends.",
        |_: Value, ctx: flows::FlowContext| async move {
            ctx.send_chunk(json!("started")).await;
            std::future::pending::<()>().await;
            Ok::<_, flows::FlowError>(0)
        },
    );
    registry.define_flow(
        "slow",
        "Ends after the input's ms.",
        |ms: u64, _ctx| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, flows::FlowError>("done")
        },
    );
    registry
}

/// The CLI's WebSocket server.
struct FakeCli {
    listener: TcpListener,
}

impl FakeCli {
    async fn bind() -> Self {
        FakeCli {
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    fn url(&self) -> String {
        format!(
            "ws://localhost:{}",
            self.listener.local_addr().unwrap().port()
        )
    }

    /// The next runtime to connect, once it has registered (answered as 1.43 answers it).
    async fn accept(&self) -> (Peer, Value) {
        let (stream, _) = timeout(WAIT, self.listener.accept())
            .await
            .expect("no connection")
            .unwrap();
        // As the CLI's `ws` server does (else Nagle holds a small message for the peer's
        // delayed ACK, ~40 ms).
        stream.set_nodelay(true).unwrap();
        let ws = tokio_tungstenite::accept_async(stream).await.unwrap();
        let mut peer = Peer { ws };
        let register = peer.recv().await;
        assert_eq!(register["method"], "register", "{register}");
        let id = register["id"].clone();
        assert!(
            id.is_string(),
            "register is a request with a string id: {register}"
        );
        peer.send(json!({
            "jsonrpc": "2.0",
            "result": { "telemetryServerUrl": "http://localhost:1" },
            "id": id,
        }))
        .await;
        (peer, register["params"].clone())
    }
}

struct Peer {
    ws: WebSocketStream<TcpStream>,
}

impl Peer {
    async fn send(&mut self, message: Value) {
        self.send_text(message.to_string()).await;
    }

    async fn send_text(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// The next JSON message.
    async fn recv(&mut self) -> Value {
        loop {
            let message = timeout(WAIT, self.ws.next())
                .await
                .expect("nothing received")
                .expect("connection closed")
                .unwrap();
            match message {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Close(_) => panic!("closed"),
                _ => {}
            }
        }
    }

    /// Calls `method` and returns every message up to and including its answer.
    async fn call(&mut self, id: &str, method: &str, params: Value) -> Vec<Value> {
        // As the CLI does: no params key when there are none.
        let mut call = json!({ "jsonrpc": "2.0", "method": method, "id": id });
        if !params.is_null() {
            call["params"] = params;
        }
        self.send(call).await;
        self.until_answer(id).await
    }

    /// Runs flow `key` as the CLI does ([`run_action`]) and returns every message up to and
    /// including the run's answer.
    async fn run(&mut self, id: &str, key: &str, input: Value, stream: bool) -> Vec<Value> {
        self.send(run_action(id, key, input, stream)).await;
        self.until_answer(id).await
    }

    /// Every message up to and including the answer to `id`.
    async fn until_answer(&mut self, id: &str) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let message = self.recv().await;
            let done = message["id"] == id;
            seen.push(message);
            if done {
                return seen;
            }
        }
    }

    async fn answer(&mut self, id: &str, method: &str, params: Value) -> Value {
        self.call(id, method, params).await.pop().unwrap()
    }
}

/// The client under a manager, dialing `url`.
fn start(
    registry: &Arc<flows::Registry>,
    url: &str,
) -> (ManagerHandle, tokio::task::JoinHandle<Report>) {
    let mut manager = ServerManager::new()
        .handle_signals(false)
        .drain_deadline(Duration::from_secs(2));
    let mut client =
        ReflectionV2::new(Arc::clone(registry), url.parse().unwrap()).max_message_bytes(64 * 1024);
    client.hard_message_bytes = 256 * 1024;
    manager.add_client(ServerConfig::new("reflection-v2").optional(), client);
    let handle = manager.handle();
    (handle, tokio::spawn(manager.run()))
}

/// A registry, a fake CLI, the client under a manager dialing it, and its registered
/// connection.
async fn connected() -> (
    Arc<flows::Registry>,
    FakeCli,
    ManagerHandle,
    tokio::task::JoinHandle<Report>,
    Peer,
) {
    let registry = registry();
    let cli = FakeCli::bind().await;
    let (handle, run) = start(&registry, &cli.url());
    let (peer, _) = cli.accept().await;
    (registry, cli, handle, run, peer)
}

/// A `runAction` request as the CLI sends it.
fn run_action(id: &str, key: &str, input: Value, stream: bool) -> Value {
    json!({"jsonrpc": "2.0", "method": "runAction", "id": id,
        "params": {"key": key, "input": input, "stream": stream, "streamInput": false}})
}

/// Stops the manager; it must stop cleanly. Returns the client's figures.
async fn stop(
    handle: &ManagerHandle,
    run: tokio::task::JoinHandle<Report>,
) -> manager::admin::ServerEntry {
    handle.request_shutdown(ShutdownReason::Requested { why: "test".into() });
    let report = timeout(WAIT, run)
        .await
        .expect("the manager did not stop")
        .unwrap();
    assert_eq!(
        report.outcome(),
        manager::Outcome::Clean,
        "{:?}",
        report.failures
    );
    report.servers[0].clone()
}

fn status(handle: &ManagerHandle) -> String {
    handle.server_info().servers[0]
        .status
        .clone()
        .unwrap_or_default()
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let polled = timeout(WAIT, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(polled.is_ok(), "timed out waiting for {what}");
}

#[tokio::test]
async fn registers_then_lists_actions_as_v1_does_and_runs_a_flow() {
    let registry = registry();
    let cli = FakeCli::bind().await;
    let (handle, run) = start(&registry, &cli.url());
    let (mut peer, register) = cli.accept().await;
    assert_eq!(register["id"], std::process::id().to_string());
    assert_eq!(register["pid"], std::process::id());
    assert_eq!(register["name"], "multi-server");
    assert_eq!(register["genkitVersion"], flows::GENKIT_VERSION);
    assert_eq!(register["reflectionApiSpecVersion"], 1);
    assert_eq!(register["envs"], json!(["dev"]));
    eventually("registered", || status(&handle).starts_with("registered")).await;
    let entry = handle.server_info().servers[0].clone();
    assert_eq!(entry.dials.as_deref(), Some(cli.url().as_str()));
    assert_eq!(entry.framework, "tokio-tungstenite");
    assert_eq!(
        registry.telemetry_server().as_deref(),
        Some("http://localhost:1")
    );

    let listed = peer.answer("1", "listActions", Value::Null).await;
    // The CLI omits params; the same map v1's GET /api/actions serves.
    assert_eq!(
        listed["result"]["actions"],
        Value::Object(registry.actions_by_key())
    );
    assert_eq!(listed["result"]["actions"]["/flow/greet"]["name"], "greet");

    let messages = peer.run("2", "/flow/greet", json!("Eve"), false).await;
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[0]["method"], "runActionState");
    assert_eq!(messages[0]["params"]["requestId"], "2");
    let trace_id = messages[0]["params"]["state"]["traceId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(trace_id.len(), 32);
    assert_eq!(messages[1]["result"]["result"], "Hello, Eve!");
    assert_eq!(
        messages[1]["result"]["telemetry"]["traceId"],
        trace_id.as_str()
    );
    assert!(registry.trace(&trace_id).is_some_and(|t| t.is_finished()));

    let values = peer
        .answer("3", "listValues", json!({"type": "prompt"}))
        .await;
    assert_eq!(values["result"], json!({"values": {}}));

    let client = stop(&handle, run).await;
    assert_eq!(client.requests.served, 3);
}

#[tokio::test]
async fn streamed_chunks_arrive_before_the_result_and_errors_carry_the_genkit_status() {
    let (_registry, _cli, handle, run, mut peer) = connected().await;

    let messages = peer.run("7", "/flow/count", json!(5), true).await;
    assert_eq!(messages.len(), 7, "{messages:?}");
    assert_eq!(messages[0]["method"], "runActionState");
    for (i, chunk) in messages[1..6].iter().enumerate() {
        assert_eq!(chunk["method"], "streamChunk");
        assert_eq!(chunk["params"]["requestId"], "7");
        assert_eq!(chunk["params"]["chunk"]["index"], i);
    }
    assert_eq!(messages[6]["result"]["result"], 5);

    // Input that does not fit: INVALID_ARGUMENT in data, with the trace, as the CLI prints it.
    let messages = peer.run("8", "/flow/greet", json!(5), false).await;
    let error = &messages.last().unwrap()["error"];
    assert_eq!(error["code"], -32000);
    assert_eq!(error["data"]["code"], 3);
    assert!(
        error["data"]["message"]
            .as_str()
            .unwrap()
            .contains("expected a string"),
        "{error}"
    );
    assert_eq!(
        error["data"]["details"]["traceId"],
        messages[0]["params"]["state"]["traceId"]
    );

    let unknown = peer
        .run("9", "/flow/nope", Value::Null, false)
        .await
        .pop()
        .unwrap();
    assert_eq!(unknown["error"]["data"]["code"], 5, "{unknown}");
    stop(&handle, run).await;
}

#[tokio::test]
async fn cancel_action_cancels_a_run_and_a_cli_that_vanishes_cancels_its_runs() {
    let (registry, _cli, handle, run, mut peer) = connected().await;

    peer.send(run_action("1", "/flow/forever", json!(null), true))
        .await;
    let state = peer.recv().await;
    let trace_id = state["params"]["state"]["traceId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(peer.recv().await["params"]["chunk"], "started");
    let cancelled = peer
        .call("2", "cancelAction", json!({"traceId": trace_id}))
        .await;
    // The run's answer and the cancel's, in either order.
    let run_answer = cancelled.iter().find(|m| m["id"] == "1").cloned();
    let run_answer = match run_answer {
        Some(answer) => answer,
        None => peer.recv().await,
    };
    assert_eq!(run_answer["error"]["data"]["code"], 1, "{run_answer}");
    assert_eq!(
        run_answer["error"]["data"]["message"],
        "Action was cancelled"
    );
    let cancel_answer = cancelled.iter().find(|m| m["id"] == "2").unwrap();
    assert_eq!(cancel_answer["result"]["message"], "Action cancelled");
    let again = peer
        .answer("3", "cancelAction", json!({"traceId": trace_id}))
        .await;
    assert_eq!(again["error"]["data"]["code"], 5, "{again}");

    // A run in flight when the CLI disappears is cancelled.
    peer.send(run_action("4", "/flow/forever", json!(null), true))
        .await;
    let trace_id = peer.recv().await["params"]["state"]["traceId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(peer.recv().await["params"]["chunk"], "started");
    drop(peer);
    eventually("the abandoned run cancelled", || {
        registry.trace(&trace_id).is_some_and(|t| t.is_finished())
    })
    .await;
    let trace = registry.trace(&trace_id).unwrap();
    let root = trace.root_span().unwrap();
    let message = root.status.as_ref().and_then(|s| s.message.as_deref());
    assert_eq!(message, Some("Action was cancelled"), "{root:?}");
    stop(&handle, run).await;
}

#[tokio::test]
async fn a_connection_holds_at_most_max_runs_in_flight_and_a_finished_one_makes_room() {
    let (_registry, _cli, handle, run, mut peer) = connected().await;
    let mut states = Vec::new();
    for i in 0..crate::MAX_RUNS_IN_FLIGHT {
        peer.send(run_action(
            &format!("run-{i}"),
            "/flow/forever",
            json!(null),
            false,
        ))
        .await;
        states.push(peer.recv().await);
    }
    assert!(
        states.iter().all(|m| m["method"] == "runActionState"),
        "{states:?}"
    );
    let refused = peer
        .answer("one-more", "runAction", json!({"key": "/flow/forever"}))
        .await;
    assert_eq!(
        refused["error"]["data"]["code"], 8,
        "RESOURCE_EXHAUSTED: {refused}"
    );

    // One is cancelled: once it has ended, a new run is taken again.
    let trace_id = states[0]["params"]["state"]["traceId"].clone();
    let seen = peer
        .call("cancel", "cancelAction", json!({"traceId": trace_id}))
        .await;
    assert_eq!(
        seen.last().unwrap()["result"]["message"],
        "Action cancelled"
    );
    let mut taken = None;
    for attempt in 0..100 {
        peer.send(run_action(
            &format!("again-{attempt}"),
            "/flow/forever",
            json!(null),
            false,
        ))
        .await;
        let message = loop {
            let message = peer.recv().await;
            // The cancelled run's own answer may come first.
            if message["id"] != states[0]["params"]["requestId"] {
                break message;
            }
        };
        if message["method"] == "runActionState" {
            taken = Some(message);
            break;
        }
        assert_eq!(message["error"]["data"]["code"], 8, "{message}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(taken.is_some(), "no run was taken after one ended");
    // A CLI that goes away cancels its runs: the stop is clean.
    drop(peer);
    stop(&handle, run).await;
}

#[tokio::test]
async fn it_dials_again_when_the_cli_restarts_and_registers_under_the_same_id() {
    let registry = registry();
    let cli = FakeCli::bind().await;
    let port = cli.listener.local_addr().unwrap().port();
    let (handle, run) = start(&registry, &cli.url());
    let (peer, first) = cli.accept().await;
    eventually("registered", || status(&handle).starts_with("registered")).await;
    // The CLI goes away, socket and all.
    drop(peer);
    drop(cli);
    eventually("not connected", || {
        status(&handle).starts_with("not connected")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cli = FakeCli {
        listener: TcpListener::bind(("127.0.0.1", port)).await.unwrap(),
    };
    let (mut peer, second) = cli.accept().await;
    assert_eq!(first["id"], second["id"]);
    let listed = peer.answer("1", "listActions", Value::Null).await;
    assert!(listed["result"]["actions"]["/flow/greet"].is_object());
    eventually("registered again", || {
        status(&handle).starts_with("registered")
    })
    .await;
    stop(&handle, run).await;
}

#[tokio::test]
async fn bad_messages_get_json_rpc_errors_and_the_connection_goes_on() {
    let (registry, cli, handle, run, mut peer) = connected().await;

    peer.send_text("{not json".into()).await;
    let answer = peer.recv().await;
    assert_eq!(
        (answer["error"]["code"].clone(), answer["id"].clone()),
        (json!(-32700), Value::Null)
    );
    peer.send_text("[]".into()).await;
    assert_eq!(peer.recv().await["error"]["code"], -32600);

    let unknown = peer.answer("1", "deleteEverything", json!({})).await;
    assert_eq!(unknown["error"]["code"], -32601);
    assert!(
        unknown["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deleteEverything")
    );
    let bad = peer.answer("2", "runAction", json!({"input": 1})).await;
    assert_eq!(bad["error"]["code"], -32602);
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing field `key`"),
        "{bad}"
    );
    let bad = peer
        .answer("3", "cancelAction", json!({"traceId": 7}))
        .await;
    assert_eq!(bad["error"]["code"], -32602);
    let bidi = peer
        .answer(
            "4",
            "runAction",
            json!({"key": "/flow/greet", "stream": false, "streamInput": true}),
        )
        .await;
    assert_eq!(bidi["error"]["data"]["code"], 12, "{bidi}");

    // Over the 64 KiB limit: refused under its own id, without the connection closing.
    let big = run_action("5", "/flow/greet", json!("x".repeat(100_000)), false);
    let answer = {
        peer.send(big).await;
        peer.recv().await
    };
    assert_eq!(answer["id"], "5");
    assert_eq!(answer["error"]["code"], -32600);
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("over this runtime's limit")
    );

    // Notifications are never answered, known or not: the next message is the next answer.
    peer.send(json!({"jsonrpc": "2.0", "method": "configure", "params": {"telemetryServerUrl": "http://evil.example:80"}})).await;
    peer.send(json!({"jsonrpc": "2.0", "method": "whatever"}))
        .await;
    peer.send(json!({"jsonrpc": "2.0", "method": "endInputStream", "params": {"requestId": "x"}}))
        .await;
    let listed = peer.answer("6", "listActions", Value::Null).await;
    assert!(listed["result"]["actions"].is_object(), "{listed}");
    // A foreign telemetry URL is not adopted.
    assert_eq!(
        registry.telemetry_server().as_deref(),
        Some("http://localhost:1")
    );

    // Over the hard limit: the connection is closed and dialed again.
    peer.send_text(format!(r#"{{"id":"7","x":"{}"}}"#, "y".repeat(300_000)))
        .await;
    let (mut peer, _) = cli.accept().await;
    assert!(peer.answer("8", "listActions", Value::Null).await["result"].is_object());
    stop(&handle, run).await;
}

#[tokio::test]
async fn the_stop_drains_runs_in_flight_and_refuses_new_ones() {
    let (_registry, _cli, handle, run, mut peer) = connected().await;
    peer.send(run_action("1", "/flow/slow", json!(500), false))
        .await;
    assert_eq!(peer.recv().await["method"], "runActionState");
    handle.request_shutdown(ShutdownReason::Requested { why: "test".into() });
    eventually("stopping", || status(&handle).starts_with("stopping")).await;
    let refused = peer
        .run("2", "/flow/greet", json!("x"), false)
        .await
        .pop()
        .unwrap();
    assert_eq!(refused["error"]["data"]["code"], 14, "{refused}");
    let answer = peer.recv().await;
    assert_eq!(
        (answer["id"].clone(), answer["result"]["result"].clone()),
        (json!("1"), json!("done"))
    );
    // Then a close frame, and the manager's report is clean.
    let closed = timeout(WAIT, peer.ws.next()).await.unwrap();
    assert!(
        matches!(closed, Some(Ok(Message::Close(_))) | None),
        "{closed:?}"
    );
    let report = timeout(WAIT, run).await.unwrap().unwrap();
    assert_eq!(
        report.outcome(),
        manager::Outcome::Clean,
        "{:?}",
        report.failures
    );
}

#[tokio::test]
async fn a_cli_that_never_answers_register_is_still_served_and_a_missing_one_holds_up_nothing() {
    let registry = registry();
    // Nobody listens: the process is live at once, and the client keeps dialing.
    let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://127.0.0.1:{}", unused.local_addr().unwrap().port());
    drop(unused);
    let (handle, run) = start(&registry, &url);
    assert_eq!(
        timeout(WAIT, handle.wait_live()).await.unwrap(),
        manager::ProcessState::Live
    );
    eventually("not connected", || {
        status(&handle).starts_with("not connected")
    })
    .await;
    stop(&handle, run).await;

    // A CLI that takes register and says nothing.
    let cli = FakeCli::bind().await;
    let (handle, run) = start(&registry, &cli.url());
    let (stream, _) = timeout(WAIT, cli.listener.accept()).await.unwrap().unwrap();
    let mut peer = Peer {
        ws: tokio_tungstenite::accept_async(stream).await.unwrap(),
    };
    assert_eq!(peer.recv().await["method"], "register");
    let listed = peer.answer("1", "listActions", Value::Null).await;
    assert!(listed["result"]["actions"].is_object());
    assert!(
        status(&handle).contains("waiting for the answer to register"),
        "{}",
        status(&handle)
    );
    stop(&handle, run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_that_leaves_during_the_drain_cuts_nothing_and_a_call_on_its_way_is_answered() {
    let (registry, _cli, handle, run, mut peer) = connected().await;
    peer.send(run_action("1", "/flow/forever", json!(null), false))
        .await;
    assert_eq!(peer.recv().await["method"], "runActionState");
    handle.request_shutdown(ShutdownReason::Requested { why: "test".into() });
    eventually("stopping", || status(&handle).starts_with("stopping")).await;
    // The CLI exits too (Ctrl+C reaches both): its run is dropped, not cut by the deadline.
    drop(peer);
    let report = timeout(WAIT, run).await.unwrap().unwrap();
    assert_eq!(
        report.outcome(),
        manager::Outcome::Clean,
        "{:?}",
        report.failures
    );
    assert_eq!(report.requests_cut, 0);
    assert_eq!(report.servers[0].requests.aborted, 1);

    // A runAction sent as the stop begins, with nothing in flight, is still answered.
    let cli = FakeCli::bind().await;
    let (handle, run) = start(&registry, &cli.url());
    let (mut peer, _) = cli.accept().await;
    handle.request_shutdown(ShutdownReason::Requested { why: "test".into() });
    peer.send(run_action("2", "/flow/greet", json!("x"), false))
        .await;
    let mut answered = false;
    while let Ok(Some(Ok(message))) = timeout(WAIT, peer.ws.next()).await {
        if let Message::Text(text) = message {
            let message: Value = serde_json::from_str(&text).unwrap();
            if message["id"] == "2" {
                let refused = message["error"]["data"]["code"] == 14;
                assert!(
                    refused || message["result"]["result"] == "Hello, x!",
                    "{message}"
                );
                answered = true;
            }
        }
    }
    assert!(answered, "the call on its way at the stop got no answer");
    let report = timeout(WAIT, run).await.unwrap().unwrap();
    assert_eq!(
        report.outcome(),
        manager::Outcome::Clean,
        "{:?}",
        report.failures
    );
}
