//! Unit tests of the registry. Every wait is bounded, so a hang fails instead of blocking CI.
//! Real time, not paused time: telemetry tests talk over real sockets (tokio issue #4522).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::timeout;

use crate::{FlowContext, FlowError, Registry, RunOptions, StatusCode, TraceData};

const WAIT: Duration = Duration::from_secs(5);

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Person {
    /// Who to greet.
    name: String,
    age: u32,
}

/// Options of a run whose caller reads its chunks.
fn streaming() -> RunOptions {
    RunOptions {
        stream: true,
        ..RunOptions::default()
    }
}

/// A registry without telemetry (whatever the environment says), with the test flows.
fn registry() -> Arc<Registry> {
    let registry = Registry::with_env_telemetry(None);
    registry.define_flow(
        "greet",
        "Greets with a step.",
        |name: String, ctx: FlowContext| async move {
            ctx.run("compose", async {
                Ok::<_, FlowError>(format!("Hello, {name}!"))
            })
            .await
        },
    );
    registry.define_flow(
        "plain",
        "No steps.",
        |n: i64, _ctx: FlowContext| async move { Ok::<_, FlowError>(n * 2) },
    );
    registry.define_flow(
        "person",
        "Structured input.",
        |p: Person, _ctx: FlowContext| async move {
            Ok::<_, FlowError>(format!("{} is {}", p.name, p.age))
        },
    );
    registry.define_flow(
        "count",
        "Streams 0..n.",
        |n: u32, ctx: FlowContext| async move {
            for i in 0..n {
                ctx.send_chunk(json!({ "i": i })).await;
            }
            Ok::<_, FlowError>(n)
        },
    );
    registry.define_flow(
        "stuck",
        "Streams once, then never ends nor checks for cancellation.",
        |_: (), ctx: FlowContext| async move {
            ctx.send_chunk("first").await;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, FlowError>(())
        },
    );
    registry.define_flow("boom", "Panics.", |_: (), _ctx: FlowContext| async move {
        if true {
            panic!("kaboom {}", 42);
        }
        Ok::<_, FlowError>(())
    });
    registry.define_flow(
        "nap",
        "Sleeps for its input's milliseconds.",
        |ms: u64, _ctx: FlowContext| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, FlowError>(ms)
        },
    );
    registry.define_flow(
        "echo_context",
        "Returns its context.",
        |_: (), ctx: FlowContext| async move { Ok::<_, FlowError>(ctx.context().clone()) },
    );
    registry
}

async fn wait_finished(registry: &Registry, trace_id: &str) -> TraceData {
    timeout(WAIT, async {
        loop {
            if let Some(trace) = registry.trace(trace_id).filter(TraceData::is_finished) {
                return trace;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("trace never finished")
}

/// Runs `key` on `input` to its end: its result and its trace.
async fn finished_run(registry: &Arc<Registry>, key: &str, input: Value) -> (Value, TraceData) {
    let run = registry.start(key, input, RunOptions::default()).unwrap();
    let trace_id = run.trace_id.to_string();
    let result = timeout(WAIT, run.result()).await.unwrap().unwrap();
    (result, registry.trace(&trace_id).unwrap())
}

fn attr<'a>(span: &'a crate::SpanData, key: &str) -> &'a str {
    span.attributes
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("attribute {key} missing in {:?}", span.attributes))
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[test]
fn schema_of_a_struct_input_is_draft07() {
    let registry = registry();
    let action = registry.action("/flow/person").expect("registered");
    assert_eq!(action.kind, "flow");
    assert_eq!(action.name, "person");
    let schema = action.input_schema.expect("input schema");
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-07/schema#");
    assert_eq!(schema["type"], "object");
    assert_eq!(schema["properties"]["name"]["type"], "string");
    assert_eq!(schema["properties"]["name"]["description"], "Who to greet.");
    assert_eq!(schema["properties"]["age"]["type"], "integer");
    let mut required: Vec<_> = schema["required"].as_array().unwrap().iter().collect();
    required.sort_by_key(|v| v.as_str());
    assert_eq!(required, [&json!("age"), &json!("name")]);
    assert_eq!(action.output_schema.unwrap()["type"], "string");

    let as_json = serde_json::to_value(registry.action("/flow/greet").unwrap()).unwrap();
    assert_eq!(as_json["type"], "flow");
    assert_eq!(as_json["key"], "/flow/greet");
    assert_eq!(as_json["inputSchema"]["type"], "string");

    let keys: Vec<_> = registry.actions().into_iter().map(|a| a.key).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    assert!(registry.action("/flow/nope").is_none());
}

#[tokio::test]
async fn valid_run_returns_output_and_records_root_and_step_spans() {
    let registry = registry();
    let run = registry
        .start("/flow/greet", json!("Alice"), RunOptions::default())
        .unwrap();
    assert!(is_hex(&run.trace_id, 32), "{}", run.trace_id);
    assert!(is_hex(&run.span_id, 16), "{}", run.span_id);
    let (trace_id, root_id) = (run.trace_id.clone(), run.span_id.clone());
    let output = timeout(WAIT, run.result()).await.unwrap().unwrap();
    assert_eq!(output, "Hello, Alice!");

    let trace = wait_finished(&registry, &trace_id).await;
    assert_eq!(registry.recent_traces()[0].trace_id, &*trace_id);
    assert_eq!(trace.display_name.as_deref(), Some("greet"));
    assert_eq!(trace.spans.len(), 2);
    let root = &trace.spans[&root_id];
    assert_eq!(root.parent_span_id, None);
    assert_eq!(root.display_name, "greet");
    assert_eq!(attr(root, "genkit:type"), "action");
    assert_eq!(attr(root, "genkit:metadata:subtype"), "flow");
    assert_eq!(attr(root, "genkit:name"), "greet");
    assert_eq!(attr(root, "genkit:path"), "/{greet,t:action,s:flow}");
    assert_eq!(attr(root, "genkit:input"), "\"Alice\"");
    assert_eq!(attr(root, "genkit:output"), "\"Hello, Alice!\"");
    assert_eq!(attr(root, "genkit:state"), "success");
    assert_eq!(root.status.as_ref().unwrap().code, 0);
    assert_eq!(root.span_kind, "INTERNAL");
    assert_eq!(root.instrumentation_library.name, "genkit-tracer");
    assert!(root.end_time >= root.start_time && root.start_time > 1.0e12);
    assert_eq!(trace.start_time, root.start_time);
    assert_eq!(trace.end_time, root.end_time);

    let step = trace.spans.values().find(|s| s.span_id != root_id).unwrap();
    assert!(is_hex(&step.span_id, 16));
    assert_eq!(step.parent_span_id.as_deref(), Some(root_id.as_str()));
    assert_eq!(step.display_name, "compose");
    assert_eq!(attr(step, "genkit:type"), "flowStep");
    assert_eq!(
        attr(step, "genkit:path"),
        "/{greet,t:action,s:flow}/{compose,t:flowStep}"
    );
    assert_eq!(attr(step, "genkit:output"), "\"Hello, Alice!\"");
    assert_eq!(attr(step, "genkit:state"), "success");
    assert!(step.start_time >= root.start_time && step.end_time <= root.end_time);

    // The wire shape Genkit's telemetry server parses.
    let wire = serde_json::to_value(&trace).unwrap();
    assert_eq!(wire["traceId"], &*trace_id);
    assert!(wire["spans"][&root_id].get("parentSpanId").is_none());
    assert_eq!(
        wire["spans"][&root_id]["instrumentationLibrary"]["version"],
        "v1"
    );
    assert_eq!(wire["spans"][&root_id]["spanKind"], "INTERNAL");
    assert_eq!(wire["spans"][&root_id]["status"], json!({ "code": 0 }));
}

#[tokio::test]
async fn invalid_input_is_invalid_argument_naming_the_problem_and_traced_as_error() {
    let registry = registry();
    let run = registry
        .start(
            "/flow/person",
            json!({ "name": "Bob", "age": "old" }),
            RunOptions::default(),
        )
        .unwrap();
    let trace_id = run.trace_id.clone();
    let error = timeout(WAIT, run.result()).await.unwrap().unwrap_err();
    assert_eq!(error.code, StatusCode::InvalidArgument);
    assert_eq!(error.http_status(), 400);
    assert!(error.message.contains("age"), "{}", error.message);
    assert!(error.message.contains("invalid type"), "{}", error.message);
    assert_eq!(error.trace_id.as_deref(), Some(&*trace_id));
    let status = error.to_status();
    assert_eq!(status["code"], 3);
    assert_eq!(status["details"]["traceId"], &*trace_id);

    let trace = registry.trace(&trace_id).expect("failed run is traced");
    assert!(trace.is_finished());
    let root = trace.root_span().unwrap();
    assert_eq!(attr(root, "genkit:state"), "error");
    assert_eq!(root.status.as_ref().unwrap().code, 2);
    assert_eq!(
        root.status.as_ref().unwrap().message.as_deref(),
        Some(error.message.as_str())
    );

    let missing = registry
        .start("/flow/person", json!({ "age": 3 }), RunOptions::default())
        .unwrap();
    let error = missing.result().await.unwrap_err();
    assert_eq!(error.code, StatusCode::InvalidArgument);
    assert!(
        error.message.contains("missing field `name`"),
        "{}",
        error.message
    );

    let absent = registry
        .start("/flow/greet", Value::Null, RunOptions::default())
        .unwrap();
    let error = absent.result().await.unwrap_err();
    assert_eq!(error.code, StatusCode::InvalidArgument);
    assert!(
        error.message.contains("expected a string"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn a_flow_that_does_not_wait_is_done_when_start_returns() {
    let registry = registry();
    let mut run = registry
        .start("/flow/plain", json!(21), RunOptions::default())
        .unwrap();
    let trace_id = run.trace_id.clone();
    assert_eq!(run.try_result().unwrap().unwrap(), json!(42));
    assert!(registry.trace(&trace_id).unwrap().is_finished());
    assert_eq!(registry.flow_stats()["plain"].runs, 1);

    // A flow that waits is still going: the run comes back, and its result follows.
    let mut run = registry
        .start("/flow/nap", json!(20), RunOptions::default())
        .unwrap();
    assert!(run.try_result().is_none(), "a napping flow is not done yet");
    assert_eq!(
        timeout(WAIT, run.result()).await.unwrap().unwrap(),
        json!(20)
    );

    // A streaming run always comes back: its chunks come first.
    let mut run = registry
        .start("/flow/count", json!(0), streaming())
        .unwrap();
    assert!(
        run.try_result().is_none(),
        "a streaming run's chunks come first"
    );
    assert_eq!(
        timeout(WAIT, run.result()).await.unwrap().unwrap(),
        json!(0)
    );
}

#[tokio::test]
async fn a_streaming_run_done_inside_start_delivers_its_chunks_then_its_result() {
    let registry = registry();
    let mut run = registry
        .start("/flow/count", json!(3), streaming())
        .unwrap();
    assert!(
        registry.trace(&run.trace_id).unwrap().is_finished(),
        "done in start"
    );
    for i in 0..3 {
        assert_eq!(run.next_chunk().await, Some(json!({ "i": i })));
    }
    assert_eq!(run.next_chunk().await, None);
    assert_eq!(run.result().await.unwrap(), json!(3));
}

#[tokio::test]
async fn try_result_takes_the_outcome_of_a_task_that_has_finished() {
    let registry = registry();
    let mut run = registry
        .start("/flow/nap", json!(10), RunOptions::default())
        .unwrap();
    assert!(run.try_result().is_none());
    wait_finished(&registry, &run.trace_id).await;
    // The trace is finished a moment before the result is sent: wait for it to arrive.
    let outcome = timeout(WAIT, async {
        loop {
            if let Some(outcome) = run.try_result() {
                return outcome;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(outcome.unwrap(), json!(10));
    // Taken: nothing is left for `result`.
    assert_eq!(run.result().await.unwrap_err().code, StatusCode::Internal);
}

/// Started from another runtime (as an actix worker's), a flow that waits still goes on in the
/// registry's: what its first poll created (here a timer) belongs there, so it outlives the
/// caller's runtime.
#[tokio::test]
async fn a_waiting_flow_outlives_the_runtime_it_was_started_from() {
    let registry = registry();
    let caller = Arc::clone(&registry);
    let run = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let run = runtime.block_on(async {
            caller
                .start("/flow/nap", json!(50), RunOptions::default())
                .unwrap()
        });
        drop(runtime);
        run
    })
    .join()
    .unwrap();
    assert_eq!(
        timeout(WAIT, run.result()).await.unwrap().unwrap(),
        json!(50)
    );
}

#[tokio::test]
async fn unknown_key_is_not_found() {
    let registry = registry();
    let error = registry
        .start("/flow/nope", json!(1), RunOptions::default())
        .unwrap_err();
    assert_eq!(error.code, StatusCode::NotFound);
    assert_eq!(error.http_status(), 404);
    assert!(error.message.contains("/flow/nope"), "{}", error.message);
    assert_eq!(error.to_status()["code"], 5);
    assert!(registry.recent_traces().is_empty());
}

#[tokio::test]
async fn streamed_chunks_arrive_in_order_before_the_result() {
    let registry = registry();
    let options = streaming();
    // More chunks than the channel holds, so backpressure is exercised too.
    let mut run = registry.start("/flow/count", json!(40), options).unwrap();
    let mut chunks = Vec::new();
    while let Some(chunk) = timeout(WAIT, run.next_chunk()).await.unwrap() {
        chunks.push(chunk["i"].as_u64().unwrap());
    }
    assert_eq!(chunks, (0..40).collect::<Vec<_>>());
    assert_eq!(timeout(WAIT, run.result()).await.unwrap().unwrap(), 40);

    // Not streaming: no chunks, and the flow does not block on an unread channel.
    let mut quiet = registry
        .start("/flow/count", json!(40), RunOptions::default())
        .unwrap();
    assert_eq!(quiet.next_chunk().await, None);
    assert_eq!(timeout(WAIT, quiet.result()).await.unwrap().unwrap(), 40);

    // Streaming but the caller only wants the result: unread chunks must not block the flow.
    let options = streaming();
    let skipped = registry.start("/flow/count", json!(40), options).unwrap();
    assert_eq!(timeout(WAIT, skipped.result()).await.unwrap().unwrap(), 40);
}

#[tokio::test]
async fn cancel_ends_a_running_streaming_flow_quickly() {
    let registry = registry();
    let options = streaming();
    let mut run = registry.start("/flow/stuck", Value::Null, options).unwrap();
    let trace_id = run.trace_id.clone();
    assert_eq!(
        timeout(WAIT, run.next_chunk()).await.unwrap(),
        Some(json!("first"))
    );

    assert!(registry.cancel(&trace_id));
    assert_eq!(
        timeout(Duration::from_secs(1), run.next_chunk())
            .await
            .unwrap(),
        None
    );
    let error = timeout(Duration::from_secs(1), run.result())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(error.code, StatusCode::Cancelled);
    assert_eq!(error.message, "Action was cancelled");
    assert_eq!(error.http_status(), 409);
    assert_eq!(error.trace_id.as_deref(), Some(&*trace_id));

    let trace = wait_finished(&registry, &trace_id).await;
    let root = trace.root_span().unwrap();
    assert_eq!(attr(root, "genkit:state"), "error");
    assert_eq!(
        root.status.as_ref().unwrap().message.as_deref(),
        Some("Action was cancelled")
    );
    assert!(
        !registry.cancel(&trace_id),
        "a finished run is no longer cancellable"
    );
    assert!(!registry.cancel("0123456789abcdef0123456789abcdef"));
}

#[tokio::test]
async fn dropping_the_run_cancels_the_flow() {
    struct Guard(Option<oneshot::Sender<()>>);
    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
        }
    }

    let registry = registry();
    let (dropped_tx, dropped_rx) = oneshot::channel();
    let dropped_tx = Arc::new(Mutex::new(Some(dropped_tx)));
    let started = Arc::new(Notify::new());
    let flow_started = Arc::clone(&started);
    registry.define_flow("hold", "Waits forever.", move |_: (), _ctx: FlowContext| {
        let guard = Guard(dropped_tx.lock().unwrap().take());
        let started = Arc::clone(&flow_started);
        async move {
            let _guard = guard;
            started.notify_one();
            std::future::pending::<()>().await;
            Ok::<_, FlowError>(())
        }
    });

    let run = registry
        .start("/flow/hold", Value::Null, RunOptions::default())
        .unwrap();
    let trace_id = run.trace_id.clone();
    timeout(WAIT, started.notified())
        .await
        .expect("flow started");
    drop(run);
    timeout(Duration::from_secs(1), dropped_rx)
        .await
        .expect("flow future dropped after its run was dropped")
        .unwrap();
    let trace = wait_finished(&registry, &trace_id).await;
    let status = trace.root_span().unwrap().status.clone().unwrap();
    assert_eq!(status.code, 2);
    assert_eq!(status.message.as_deref(), Some("Action was cancelled"));
}

#[tokio::test]
async fn a_panicking_flow_is_internal_with_the_panic_message() {
    let registry = registry();
    let run = registry
        .start("/flow/boom", Value::Null, RunOptions::default())
        .unwrap();
    let trace_id = run.trace_id.clone();
    let error = timeout(WAIT, run.result()).await.unwrap().unwrap_err();
    assert_eq!(error.code, StatusCode::Internal);
    assert_eq!(error.http_status(), 500);
    assert!(error.message.contains("kaboom 42"), "{}", error.message);
    let trace = wait_finished(&registry, &trace_id).await;
    assert_eq!(attr(trace.root_span().unwrap(), "genkit:state"), "error");
}

#[tokio::test]
async fn context_reaches_the_flow_and_labels_reach_the_trace() {
    let registry = registry();
    let options = RunOptions {
        context: json!({ "auth": { "uid": "u1" } }),
        labels: BTreeMap::from([("team".to_owned(), "flows".to_owned())]),
        ..RunOptions::default()
    };
    let run = registry
        .start("/flow/echo_context", Value::Null, options)
        .unwrap();
    let trace_id = run.trace_id.clone();
    assert_eq!(
        run.result().await.unwrap(),
        json!({ "auth": { "uid": "u1" } })
    );
    let trace = wait_finished(&registry, &trace_id).await;
    assert_eq!(attr(trace.root_span().unwrap(), "team"), "flows");
}

#[tokio::test]
async fn the_feed_sees_start_and_end_and_history_keeps_the_newest_100() {
    let registry = registry();
    let mut feed = registry.subscribe_traces();
    let run = registry
        .start("/flow/plain", json!(2), RunOptions::default())
        .unwrap();
    let trace_id = run.trace_id.clone();
    assert_eq!(run.result().await.unwrap(), 4);
    // Ids, not traces: the state is the store's. A run done inside `start` is announced
    // once, finished.
    let only = timeout(WAIT, feed.recv()).await.unwrap().unwrap();
    assert_eq!(only, trace_id);
    assert!(registry.trace(&only).unwrap().is_finished());
    assert!(
        feed.try_recv().is_err(),
        "one update for a run done at once"
    );

    // A run that waits is announced at its start, and again at its end.
    let run = registry
        .start("/flow/nap", json!(500), RunOptions::default())
        .unwrap();
    let first = timeout(WAIT, feed.recv()).await.unwrap().unwrap();
    assert_eq!(first, run.trace_id);
    assert!(!registry.trace(&first).unwrap().is_finished());
    timeout(WAIT, run.result()).await.unwrap().unwrap();
    let last = timeout(WAIT, feed.recv()).await.unwrap().unwrap();
    assert_eq!(last, first);
    assert!(registry.trace(&last).unwrap().is_finished());

    let mut ids = Vec::new();
    for n in 0..(crate::TRACE_HISTORY as i64 + 5) {
        let run = registry
            .start("/flow/plain", json!(n), RunOptions::default())
            .unwrap();
        ids.push(run.trace_id.to_string());
        run.result().await.unwrap();
    }
    let recent: Vec<_> = registry
        .recent_traces()
        .into_iter()
        .map(|t| t.trace_id)
        .collect();
    ids.reverse();
    ids.truncate(crate::TRACE_HISTORY);
    assert_eq!(recent, ids);
    assert!(registry.trace(&trace_id).is_none(), "oldest evicted");
    let stats = &registry.flow_stats()["plain"];
    assert_eq!(
        stats.runs,
        crate::TRACE_HISTORY as u64 + 6,
        "every run counted once"
    );
    assert_eq!(registry.flow_stats()["nap"].runs, 1);
    assert_eq!(stats.errors, 0);
    assert_eq!(stats.buckets.iter().sum::<u64>(), stats.runs);
}

#[test]
fn telemetry_url_from_env_wins_over_notify() {
    let registry = Registry::with_env_telemetry(Some("http://localhost:4033/".into()));
    registry.set_telemetry_server(Some("http://localhost:9999".into()));
    assert_eq!(
        registry.telemetry_server().as_deref(),
        Some("http://localhost:4033")
    );

    let registry = Registry::with_env_telemetry(Some(String::new()));
    assert_eq!(registry.telemetry_server(), None);
    registry.set_telemetry_server(Some("http://localhost:4034".into()));
    assert_eq!(
        registry.telemetry_server().as_deref(),
        Some("http://localhost:4034")
    );
    registry.set_telemetry_server(None);
    assert_eq!(registry.telemetry_server(), None);
}

#[test]
fn status_codes_serialize_as_numbers() {
    assert_eq!(
        serde_json::to_value(StatusCode::InvalidArgument).unwrap(),
        json!(3)
    );
    let status = FlowError::cancelled()
        .with_trace_id("t")
        .with_stack("s")
        .to_status();
    assert_eq!(
        status,
        json!({ "code": 1, "message": "Action was cancelled", "details": { "traceId": "t", "stack": "s" } })
    );
    assert_eq!(FlowError::internal("x").to_status()["details"], json!({}));
    assert_eq!(FlowError::not_found("x").to_string(), "NOT_FOUND: x");
}

/// A stand-in telemetry server: forwards each POST's path and JSON body.
async fn telemetry_sink() -> (String, mpsc::UnboundedReceiver<(String, Value)>) {
    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper::{Request, Response, server::conn::http1, service::service_fn};
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let path = request.uri().path().to_owned();
                        let body = request.into_body().collect().await?.to_bytes();
                        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let _ = tx.send((path, json));
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from_static(b"OK"))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, rx)
}

#[tokio::test]
async fn telemetry_receives_the_start_and_end_of_a_run() {
    let (url, mut posts) = telemetry_sink().await;
    let registry = registry();
    registry.set_telemetry_server(Some(format!("{url}/")));
    // The flow waits until the start post has arrived: a newer state of a trace replaces a
    // queued older one, so a flow that ends at once may well be posted only once.
    let gate = Arc::new(Notify::new());
    let flow_gate = Arc::clone(&gate);
    registry.define_flow(
        "gated",
        "Doubles, once let through.",
        move |n: i64, _ctx: FlowContext| {
            let gate = Arc::clone(&flow_gate);
            async move {
                gate.notified().await;
                Ok::<_, FlowError>(n * 2)
            }
        },
    );
    let run = registry
        .start("/flow/gated", json!(21), RunOptions::default())
        .unwrap();
    let trace_id = run.trace_id.clone();
    let span_id = run.span_id.clone();

    let (path, start) = timeout(WAIT, posts.recv()).await.unwrap().unwrap();
    gate.notify_one();
    assert_eq!(run.result().await.unwrap(), 42);
    assert_eq!(path, "/api/traces");
    assert_eq!(start["traceId"], &*trace_id);
    assert_eq!(start["endTime"], 0.0);
    assert_eq!(start["displayName"], "gated");
    assert_eq!(start["spans"][&span_id]["endTime"], 0.0);
    assert_eq!(start["spans"][&span_id]["attributes"]["genkit:input"], "21");

    let (path, end) = timeout(WAIT, posts.recv()).await.unwrap().unwrap();
    assert_eq!(path, "/api/traces");
    assert_eq!(end["traceId"], &*trace_id);
    assert!(end["endTime"].as_f64().unwrap() > 0.0);
    let root = &end["spans"][&span_id];
    assert_eq!(root["attributes"]["genkit:output"], "42");
    assert_eq!(root["attributes"]["genkit:state"], "success");
    assert_eq!(root["status"]["code"], 0);
    // It parses back into our own type, which mirrors Genkit's schema.
    let parsed: TraceData = serde_json::from_value(end).unwrap();
    assert!(parsed.is_finished());

    timeout(WAIT, async {
        while registry.telemetry_sent() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("both posts counted as sent");
    assert_eq!(registry.telemetry_dropped(), 0);
}

#[tokio::test]
async fn a_dead_telemetry_server_neither_fails_nor_slows_the_flow() {
    // A server that hangs up on every connection. (Not a closed port: another test's sink
    // could be given that port meanwhile and receive our posts.)
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    let registry = registry();
    registry.set_telemetry_server(Some(format!("http://{addr}")));
    let run = registry
        .start("/flow/plain", json!(1), RunOptions::default())
        .unwrap();
    let output = timeout(Duration::from_millis(500), run.result())
        .await
        .unwrap();
    assert_eq!(output.unwrap(), 2);
    timeout(WAIT, async {
        // One post or two: the end state may replace the queued start state.
        while registry.telemetry_dropped() < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("failed posts are counted as dropped");
    assert_eq!(registry.telemetry_sent(), 0);
}

#[tokio::test]
async fn a_huge_input_is_truncated_in_the_trace_with_a_marker() {
    use crate::TRACE_VALUE_BYTES;
    let registry = registry();
    let name = "x".repeat(1_000_000);
    let run = registry
        .start("/flow/greet", json!(name), RunOptions::default())
        .unwrap();
    let trace_id = run.trace_id.clone();
    let span_id = run.span_id.clone();
    // The flow itself gets the whole input.
    assert_eq!(
        run.result().await.unwrap().as_str().unwrap().len(),
        1_000_000 + "Hello, !".len()
    );
    let trace = wait_finished(&registry, &trace_id).await;
    let root = &trace.spans[&span_id];
    let input = attr(root, "genkit:input");
    // The JSON text of the input is 1_000_002 bytes (with its quotes).
    let cut = 1_000_002 - TRACE_VALUE_BYTES;
    assert!(
        input.ends_with(&format!("…[truncated {cut} bytes]")),
        "{}",
        &input[input.len() - 40..]
    );
    assert!(input.starts_with("\"xxx"));
    assert!(input.len() < TRACE_VALUE_BYTES + 64);
    let output = attr(root, "genkit:output");
    assert!(output.contains("…[truncated "));
    assert!(output.len() < TRACE_VALUE_BYTES + 64);
    // The step's output too: no value in the trace is anywhere near the input's size.
    let encoded = serde_json::to_string(&trace).unwrap();
    assert!(
        encoded.len() < 4 * (TRACE_VALUE_BYTES + 64),
        "{}",
        encoded.len()
    );
    assert!(registry.trace_store_bytes() < 4 * (TRACE_VALUE_BYTES + 64));
    // Still Genkit's schema, with string values as strings.
    let parsed: TraceData = serde_json::from_str(&encoded).unwrap();
    assert!(parsed.spans[&span_id].attributes["genkit:input"].is_string());
}

#[tokio::test]
async fn many_huge_runs_stay_within_the_trace_budget() {
    use crate::TRACE_STORE_BYTES;
    let registry = registry();
    let big = "y".repeat(200_000);
    for _ in 0..(crate::TRACE_HISTORY + 20) {
        let run = registry
            .start("/flow/greet", json!(big), RunOptions::default())
            .unwrap();
        run.result().await.unwrap();
    }
    let traces = registry.recent_traces();
    assert_eq!(traces.len(), crate::TRACE_HISTORY);
    assert!(registry.trace_store_bytes() <= TRACE_STORE_BYTES);
    let total: usize = traces.iter().map(crate::trace::stored_bytes).sum();
    assert_eq!(total, registry.trace_store_bytes());
    let json: usize = traces
        .iter()
        .map(|t| serde_json::to_vec(t).unwrap().len())
        .sum();
    assert!(json <= total, "{json} > {total}");
}

/// A flow that loops over steps records them up to its run's budget, then only counts them;
/// it runs every step either way.
#[tokio::test]
async fn a_run_records_steps_up_to_its_budget_then_counts_them() {
    const STEPS: u64 = 5_000;
    let registry = Registry::with_env_telemetry(None);
    registry.define_flow(
        "loop",
        "many steps",
        |n: u64, ctx: FlowContext| async move {
            let mut ran = 0;
            for i in 0..n {
                ran += ctx.run("tick", async { Ok::<_, FlowError>(i % 2) }).await?;
            }
            Ok::<_, FlowError>(ran)
        },
    );
    let (result, trace) = finished_run(&registry, "/flow/loop", json!(STEPS)).await;
    assert_eq!(result, json!(STEPS / 2), "every step ran");
    let recorded = trace.spans.len() as u64 - 1;
    assert!(
        recorded > 100 && recorded < STEPS,
        "{recorded} steps recorded"
    );
    assert_eq!(
        trace.root_span().unwrap().attributes[crate::STEPS_NOT_RECORDED],
        json!(STEPS - recorded)
    );
    let weight = crate::trace::stored_bytes(&trace);
    assert!(
        weight <= crate::TRACE_RUN_BYTES + 64 * 1024,
        "{weight} bytes recorded"
    );
    // A run with room records every step, and no count.
    let (_, trace) = finished_run(&registry, "/flow/loop", json!(3)).await;
    assert_eq!(trace.spans.len(), 4);
    assert!(
        trace
            .spans
            .values()
            .all(|s| !s.attributes.contains_key(crate::STEPS_NOT_RECORDED))
    );
}

/// Steps that run side by side are each let in while open and small; those that end with no
/// room left record a marker for their output, so the run's record stays within its budget.
#[tokio::test]
async fn steps_side_by_side_keep_the_run_within_its_budget() {
    const STEPS: usize = 3_000;
    let registry = Registry::with_env_telemetry(None);
    registry.define_flow(
        "wide",
        "many steps at once",
        |n: usize, ctx: FlowContext| async move {
            let steps = (0..n).map(|_| {
                ctx.run("big", async {
                    // Every step is open before any ends.
                    tokio::task::yield_now().await;
                    Ok::<_, FlowError>("x".repeat(crate::TRACE_VALUE_BYTES))
                })
            });
            let outputs = futures_util::future::try_join_all(steps).await?;
            Ok::<_, FlowError>(outputs.len())
        },
    );
    let (result, trace) = finished_run(&registry, "/flow/wide", json!(STEPS)).await;
    assert_eq!(result, json!(STEPS), "every step ran");
    let weight = crate::trace::stored_bytes(&trace);
    // The root's own end (its output, a number here, and the count) is all that may come on
    // top.
    assert!(
        weight <= crate::TRACE_RUN_BYTES + 512,
        "{weight} bytes recorded"
    );
    let outputs: Vec<&Value> = trace
        .spans
        .values()
        .filter(|s| s.parent_span_id.is_some())
        .filter_map(|s| s.attributes.get("genkit:output"))
        .collect();
    let marker = format!("\"{}\"", crate::record::NOT_RECORDED);
    let marked = outputs
        .iter()
        .filter(|o| o.as_str() == Some(&marker))
        .count();
    let recorded = trace.spans.len() - 1;
    // Every step was open before any ended, so the open ones filled the budget first: each
    // recorded step has an output, whole or marked, and more than a few are marked.
    assert_eq!(outputs.len(), recorded);
    assert!(marked > 100, "{marked} of {recorded} outputs marked");
    assert_eq!(
        trace.root_span().unwrap().attributes[crate::STEPS_NOT_RECORDED],
        json!(STEPS - recorded)
    );
}
