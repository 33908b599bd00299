//! The client's life: dial, register, answer calls, dial again; and one run's messages.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use futures_util::stream::{SplitSink, StreamExt};
use manager::ClientContext;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use flows::StatusCode;

use crate::rpc::{self, Incoming, RpcError};
use crate::{MAX_RUNS_IN_FLIGHT, ReflectionV2, SEND_TIMEOUT};

/// The methods the CLI calls.
#[derive(Debug, Clone, Copy)]
enum Method {
    ListActions,
    ListValues,
    RunAction,
    CancelAction,
}

impl Method {
    const ALL: [Method; 4] = [
        Method::ListActions,
        Method::ListValues,
        Method::RunAction,
        Method::CancelAction,
    ];

    /// Its name on the wire, also its route label (the metrics' `http_route`).
    fn name(self) -> &'static str {
        match self {
            Method::ListActions => "listActions",
            Method::ListValues => "listValues",
            Method::RunAction => "runAction",
            Method::CancelAction => "cancelAction",
        }
    }

    fn parse(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|known| known.name() == name)
    }
}

/// How long dialing (TCP and the WebSocket handshake) may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// The first wait before dialing again; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long `register` may go unanswered before the status says so (calls are served anyway).
const REGISTER_WAIT: Duration = Duration::from_secs(10);
/// After the drain deadline, how long runs get to send their refusal, and the close frame to
/// leave: both well inside the manager's grace before it abandons a client.
const AFTER_DEADLINE: Duration = Duration::from_millis(300);
/// How long, once stopping with no run in flight, calls already on their way are still read
/// (and a `runAction` refused) before the connection closes: none is left unanswered.
const LINGER: Duration = Duration::from_millis(20);
/// A connection that lived this long resets the backoff; one the CLI drops at once does not,
/// so a CLI that accepts and hangs up is not dialed ten times a second.
const STEADY: Duration = Duration::from_secs(1);

type Sink = SplitSink<WebSocketStream<TcpStream>, Message>;

/// Dials, serves and dials again until the stop.
pub(crate) async fn run(client: Arc<ReflectionV2>, ctx: ClientContext) -> anyhow::Result<()> {
    let target = client.target.as_str();

    let mut backoff = BACKOFF_FIRST;
    let mut failures = 0_u32;
    let mut connections = 0_u64;
    loop {
        ctx.set_status(format!("connecting to {target}"));
        let dialed = tokio::select! {
            dialed = dial(&client) => dialed,
            () = ctx.stopping().cancelled() => return Ok(()),
        };
        let why = match dialed {
            Ok(socket) => {
                connections += 1;
                failures = 0;
                let connection =
                    Connection::new(Arc::clone(&client), ctx.clone(), socket, connections);
                let connected = Instant::now();
                match connection.serve().await {
                    Ended::Stopped => return Ok(()),
                    Ended::Lost { why, registered } => {
                        if registered && connected.elapsed() >= STEADY {
                            backoff = BACKOFF_FIRST;
                        }
                        tracing::info!(server = ctx.name(), %target, %why, "connection to the genkit CLI lost; dialing again");
                        why
                    }
                }
            }
            Err(why) => {
                failures += 1;
                // The first failure is news; the next ones, every few seconds, are not.
                if failures == 1 {
                    tracing::warn!(server = ctx.name(), %target, %why, "cannot reach the genkit CLI; retrying with backoff");
                } else {
                    tracing::debug!(server = ctx.name(), %target, %why, failures, "cannot reach the genkit CLI");
                }
                why
            }
        };
        if std::os::unix::process::parent_id() != client.parent {
            // Orphaned, and the CLI is not there either: what started this process is gone.
            // (A CLI that restarts while the process that started this one lives is dialed
            // again; so is one still there for an orphan that `nohup` kept.)
            let why = "the genkit CLI is gone, and so is the process that started this one";
            tracing::warn!(server = ctx.name(), %target, "{why}: stopping");
            ctx.set_status(format!("stopping: {why}"));
            ctx.manager()
                .request_shutdown(manager::ShutdownReason::Requested { why: why.into() });
            ctx.stopping().cancelled().await;
            return Ok(());
        }
        ctx.set_status(format!(
            "not connected ({why}); dialing {target} again in {} ms",
            backoff.as_millis()
        ));
        tokio::select! {
            () = sleep(backoff) => {}
            () = ctx.stopping().cancelled() => return Ok(()),
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Opens the WebSocket: resolves the host, tries its loopback addresses only, and shakes hands.
async fn dial(client: &ReflectionV2) -> Result<WebSocketStream<TcpStream>, String> {
    let target = &client.target;
    let dialing = async {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.host(), target.port()))
            .await
            .map_err(|err| format!("cannot resolve {}: {err}", target.host()))?
            .filter(|addr| edge::policy::is_loopback(addr.ip()))
            .collect();
        if addrs.is_empty() {
            return Err(format!("{} resolves to no loopback address", target.host()));
        }
        let mut last = String::new();
        let mut stream = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(connected) => {
                    stream = Some(connected);
                    break;
                }
                Err(err) => last = format!("{addr}: {err}"),
            }
        }
        let stream = stream.ok_or(last)?;
        let _ = stream.set_nodelay(true);
        let hard = client.hard_message_bytes.max(client.max_message_bytes);
        let config = WebSocketConfig::default()
            .max_message_size(Some(hard))
            .max_frame_size(Some(hard));
        let (socket, _response) =
            tokio_tungstenite::client_async_with_config(target.as_str(), stream, Some(config))
                .await
                .map_err(|err| format!("WebSocket handshake failed: {err}"))?;
        Ok(socket)
    };
    timeout(DIAL_TIMEOUT, dialing)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {DIAL_TIMEOUT:?}")))
}

/// How a connection ended.
enum Ended {
    /// The process is stopping: drained and closed.
    Stopped,
    /// The CLI went away (or misbehaved); dial again.
    Lost { why: String, registered: bool },
}

/// The sending half, shared by the reader and the runs. Every send is bounded by
/// [`SEND_TIMEOUT`], and once stopping by the drain deadline too; one that times out or fails
/// marks the connection dead.
#[derive(Clone)]
struct Outbox {
    sink: Arc<tokio::sync::Mutex<Sink>>,
    dead: CancellationToken,
    ctx: ClientContext,
}

/// The connection is gone; the message was not sent.
struct Gone;

impl Outbox {
    async fn send(&self, text: String) -> Result<(), Gone> {
        if self.dead.is_cancelled() {
            return Err(Gone);
        }
        // Past the deadline, only a send that can go at once does.
        let limit = self.ctx.deadline().map_or(SEND_TIMEOUT, |deadline| {
            SEND_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()))
        });
        let sent = timeout(limit, async {
            self.sink.lock().await.send(Message::text(text)).await
        })
        .await;
        match sent {
            Ok(Ok(())) => Ok(()),
            _ => {
                self.dead.cancel();
                Err(Gone)
            }
        }
    }
}

/// One connection to the CLI: the reader, its calls and its runs.
struct Connection {
    client: Arc<ReflectionV2>,
    ctx: ClientContext,
    reader: futures_util::stream::SplitStream<WebSocketStream<TcpStream>>,
    outbox: Outbox,
    register_id: String,
    registered: bool,
    runs: JoinSet<()>,
    /// Fired at the drain deadline: runs still going answer `UNAVAILABLE` and end.
    cut: CancellationToken,
}

impl Connection {
    fn new(
        client: Arc<ReflectionV2>,
        ctx: ClientContext,
        socket: WebSocketStream<TcpStream>,
        number: u64,
    ) -> Self {
        let (sink, reader) = socket.split();
        Connection {
            outbox: Outbox {
                sink: Arc::new(tokio::sync::Mutex::new(sink)),
                dead: CancellationToken::new(),
                ctx: ctx.clone(),
            },
            client,
            ctx,
            reader,
            register_id: format!("register-{number}"),
            registered: false,
            runs: JoinSet::new(),
            cut: CancellationToken::new(),
        }
    }

    fn target(&self) -> &str {
        self.client.target.as_str()
    }

    async fn serve(mut self) -> Ended {
        let ended = self.serve_until_ended().await;
        // Runs of a connection that is gone cannot answer: dropping them cancels their flows,
        // and their requests are counted as aborted before this returns (not later, when the
        // manager would take them for requests the drain deadline cut).
        self.runs.shutdown().await;
        if matches!(ended, Ended::Stopped) {
            let close = CloseFrame {
                code: CloseCode::Away,
                reason: "the runtime is stopping".into(),
            };
            let _ = timeout(AFTER_DEADLINE, async {
                self.outbox
                    .sink
                    .lock()
                    .await
                    .send(Message::Close(Some(close)))
                    .await
            })
            .await;
        }
        ended
    }

    async fn serve_until_ended(&mut self) -> Ended {
        let params = json!({
            "id": self.client.runtime_id,
            "pid": std::process::id(),
            "name": self.client.name,
            "genkitVersion": flows::GENKIT_VERSION,
            "reflectionApiSpecVersion": flows::REFLECTION_API_SPEC_VERSION,
            "envs": ["dev"],
        });
        let register = rpc::request(&self.register_id, "register", params);
        if self.outbox.send(register).await.is_err() {
            return self.lost("register could not be sent");
        }
        self.ctx.set_status(format!(
            "connected to {}; waiting for the answer to register",
            self.target()
        ));
        let register_by = Instant::now() + REGISTER_WAIT;
        let mut register_overdue = false;
        // Once stopping: the manager's drain deadline, and when to close if no run is left.
        let mut drain_until: Option<Instant> = None;
        let mut quiet_at = Instant::now();
        loop {
            tokio::select! {
                biased;
                () = self.ctx.stopping().cancelled(), if drain_until.is_none() => {
                    let now = Instant::now();
                    drain_until = Some(self.ctx.deadline().unwrap_or(now + self.ctx.drain_deadline()));
                    quiet_at = now + LINGER;
                    self.ctx.set_status(format!("stopping: {} run(s) in flight", self.runs.len()));
                }
                () = async { sleep_until(drain_until.unwrap_or_else(Instant::now)).await }, if drain_until.is_some() => {
                    self.cut.cancel();
                    // Each run answers its refusal (if it can at once) and ends.
                    let _ = timeout(AFTER_DEADLINE, async {
                        while self.runs.join_next().await.is_some() {}
                    })
                    .await;
                    return Ended::Stopped;
                }
                () = sleep_until(quiet_at), if drain_until.is_some() && self.runs.is_empty() => {
                    return Ended::Stopped;
                }
                Some(_) = self.runs.join_next(), if !self.runs.is_empty() => {
                    if drain_until.is_some() && self.runs.is_empty() {
                        quiet_at = Instant::now() + LINGER;
                    }
                }
                () = self.outbox.dead.cancelled() => {
                    return self.lost(format!("the CLI read nothing for {SEND_TIMEOUT:?}, or the connection broke"));
                }
                () = sleep_until(register_by), if !self.registered && !register_overdue => {
                    register_overdue = true;
                    tracing::warn!(server = self.ctx.name(), target = %self.target(), "the genkit CLI has not answered register; serving its calls anyway");
                    self.ctx.set_status(format!("connected to {}; register not answered", self.target()));
                }
                message = self.reader.next() => {
                    let message = match message {
                        None => return self.lost("the CLI closed the connection"),
                        Some(Err(WsError::Capacity(err))) => {
                            return self.lost(format!("a message over the hard limit ({err})"));
                        }
                        Some(Err(err)) => return self.lost(format!("read failed: {err}")),
                        Some(Ok(message)) => message,
                    };
                    match message {
                        Message::Text(text) => self.take(text.as_bytes(), drain_until.is_some()).await,
                        Message::Binary(bytes) => self.take(&bytes, drain_until.is_some()).await,
                        Message::Close(_) => return self.lost("the CLI closed the connection"),
                        // Pings are answered by tungstenite itself.
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                    }
                }
            }
        }
    }

    fn lost(&self, why: impl Into<String>) -> Ended {
        Ended::Lost {
            why: why.into(),
            registered: self.registered,
        }
    }

    /// One message from the CLI.
    async fn take(&mut self, message: &[u8], stopping: bool) {
        let limit = self.client.max_message_bytes;
        if message.len() > limit {
            let error = RpcError::new(
                rpc::INVALID_REQUEST,
                StatusCode::InvalidArgument,
                format!(
                    "a message of {} bytes is over this runtime's limit of {limit} bytes",
                    message.len()
                ),
            );
            let _ = self
                .outbox
                .send(rpc::error_response(&rpc::id_of(message), &error))
                .await;
            return;
        }
        match rpc::parse(message) {
            Err(refused) => {
                let _ = self
                    .outbox
                    .send(rpc::error_response(&refused.id, &refused.error))
                    .await;
            }
            Ok(Incoming::Request { id, method, params }) => {
                self.call(id, &method, params, stopping).await;
            }
            Ok(Incoming::Notification { method, params }) => self.notified(&method, params),
            Ok(Incoming::Response { id, outcome }) => self.answered(&id, outcome),
        }
    }

    /// A request: answered here, or (`runAction`) by a run task.
    async fn call(&mut self, id: Value, method: &str, params: Option<Value>, stopping: bool) {
        // The method's name as a `'static` route label (the metrics' `http_route`); an unknown
        // one, which the peer chose, is logged cut short and labelled with no route.
        let known = Method::parse(method);
        let shown: std::borrow::Cow<'_, str> = match known {
            Some(known) => known.name().into(),
            None => method.chars().take(64).collect::<String>().into(),
        };
        let mut guard = self.ctx.begin_request(&shown, "");
        guard.set_route(known.map_or("", Method::name));
        let answer = match known {
            Some(Method::ListActions) => {
                Ok(json!({ "actions": self.client.registry.actions_by_key() }))
            }
            Some(Method::ListValues) => rpc::params::<ValuesParams>(method, params)
                // No values (prompts, default models) are registered by this runtime.
                .map(|_| json!({ "values": {} })),
            Some(Method::CancelAction) => {
                rpc::params::<CancelParams>(method, params).and_then(|p| {
                    if self.client.registry.cancel(&p.trace_id) {
                        Ok(json!({ "message": "Action cancelled" }))
                    } else {
                        Err(RpcError::new(
                            rpc::ACTION_ERROR,
                            StatusCode::NotFound,
                            "Action not found or already completed",
                        ))
                    }
                })
            }
            Some(Method::RunAction) => match self.start_run(params, stopping) {
                // The run answers, and finishes the guard, when it ends.
                Ok(run) => {
                    self.spawn_run(id, run, guard);
                    return;
                }
                Err(error) => Err(error),
            },
            None => Err(RpcError::new(
                rpc::METHOD_NOT_FOUND,
                StatusCode::Unimplemented,
                format!("Method not found: {shown}"),
            )),
        };
        let (text, code) = match answer {
            Ok(result) => (rpc::response(&id, result), 200),
            Err(error) => (rpc::error_response(&id, &error), http_status(&error)),
        };
        if self.outbox.send(text).await.is_ok() {
            guard.finish(code);
        }
    }

    /// Checks a `runAction` and starts its flow.
    fn start_run(&self, params: Option<Value>, stopping: bool) -> Result<Started, RpcError> {
        let params: RunParams = rpc::params("runAction", params)?;
        if stopping {
            return Err(RpcError::new(
                rpc::ACTION_ERROR,
                StatusCode::Unavailable,
                "the runtime is shutting down",
            ));
        }
        if params.stream_input {
            return Err(RpcError::new(
                rpc::ACTION_ERROR,
                StatusCode::Unimplemented,
                "input streams (bidi actions) are not supported by this runtime's flows",
            ));
        }
        if self.runs.len() >= MAX_RUNS_IN_FLIGHT {
            return Err(RpcError::new(
                rpc::ACTION_ERROR,
                StatusCode::ResourceExhausted,
                format!("{MAX_RUNS_IN_FLIGHT} runs are in flight on this connection already"),
            ));
        }
        let options =
            flows::RunOptions::of_request(params.context, params.stream, params.telemetry_labels);
        let run = self
            .client
            .registry
            .start(&params.key, params.input, options)
            .map_err(|err| RpcError::of_flow(&err))?;
        Ok(Started {
            key: params.key,
            run,
            stream: params.stream,
        })
    }

    fn spawn_run(&mut self, id: Value, started: Started, guard: manager::requests::RequestGuard) {
        let outbox = self.outbox.clone();
        let cut = self.cut.clone();
        self.runs.spawn(answer_run(id, started, guard, outbox, cut));
    }

    /// A notification: nothing is answered, whatever it holds.
    fn notified(&self, method: &str, params: Option<Value>) {
        match method {
            "configure" => {
                if let Ok(params) = rpc::params::<ConfigureParams>(method, params) {
                    self.adopt_telemetry(params.telemetry_server_url.as_deref());
                }
            }
            // No run takes an input stream (runAction refuses streamInput), so there is none
            // for these to feed.
            "sendInputStreamChunk" | "endInputStream" => {
                tracing::debug!(
                    server = self.ctx.name(),
                    method,
                    "input stream message for no run; ignored"
                );
            }
            _ => {
                let method: String = method.chars().take(64).collect();
                tracing::debug!(
                    server = self.ctx.name(),
                    method,
                    "unknown notification; ignored"
                );
            }
        }
    }

    /// The answer to our `register`.
    fn answered(&mut self, id: &Value, outcome: Result<Value, Value>) {
        if id.as_str() != Some(self.register_id.as_str()) {
            tracing::debug!(server = self.ctx.name(), %id, "an answer to no request of ours; ignored");
            return;
        }
        match outcome {
            Ok(result) => {
                self.registered = true;
                self.adopt_telemetry(result.get("telemetryServerUrl").and_then(Value::as_str));
                self.ctx.set_status(format!(
                    "registered with {} as runtime {}",
                    self.target(),
                    self.client.runtime_id
                ));
                tracing::info!(server = self.ctx.name(), target = %self.target(), runtime_id = self.client.runtime_id, "registered with the genkit CLI");
            }
            Err(error) => {
                let error: String = error.to_string().chars().take(300).collect();
                tracing::warn!(server = self.ctx.name(), %error, "the genkit CLI refused register; serving its calls anyway");
                self.ctx.set_status(format!(
                    "connected to {}; register refused: {error}",
                    self.target()
                ));
            }
        }
    }

    /// Points trace export at the CLI's telemetry server, under the same rule as v1's
    /// `/api/notify` (a loopback URL unless the operator allowed any).
    fn adopt_telemetry(&self, url: Option<&str>) {
        let Some(url) = url.filter(|u| !u.is_empty()) else {
            return;
        };
        match edge::policy::refuse_telemetry_url(url) {
            Ok(()) => self
                .client
                .registry
                .set_telemetry_server(Some(url.to_owned())),
            Err(refusal) => {
                tracing::warn!(server = self.ctx.name(), %refusal, "telemetry server not adopted")
            }
        }
    }
}

/// A run whose flow has started.
struct Started {
    key: String,
    run: flows::FlowRun,
    stream: bool,
}

/// Sends one run's messages: `runActionState` with the trace id, the chunks (when streaming),
/// then the answer. A send that fails means the CLI is gone: the run is dropped, which
/// cancels its flow.
async fn answer_run(
    id: Value,
    started: Started,
    guard: manager::requests::RequestGuard,
    outbox: Outbox,
    cut: CancellationToken,
) {
    let Started {
        key,
        mut run,
        stream,
    } = started;
    // The CLI keys runs by the request's id, as a string.
    let request_id = id.as_str().map_or_else(|| id.to_string(), str::to_owned);
    let trace_id = run.trace_id.clone();
    let state = json!({ "requestId": request_id, "state": { "traceId": &*trace_id } });
    if outbox
        .send(rpc::notification("runActionState", state))
        .await
        .is_err()
    {
        return;
    }
    let finished = async {
        if stream {
            while let Some(chunk) = run.next_chunk().await {
                let chunk = json!({ "requestId": request_id, "chunk": chunk });
                outbox.send(rpc::notification("streamChunk", chunk)).await?;
            }
        }
        Ok::<_, Gone>(run.result().await)
    };
    let outcome = tokio::select! {
        biased;
        () = cut.cancelled() => None,
        outcome = finished => match outcome {
            Ok(outcome) => Some(outcome),
            Err(Gone) => return,
        },
    };
    let (text, code) = match outcome {
        Some(Ok(result)) => {
            let answer = json!({ "result": result, "telemetry": { "traceId": &*trace_id } });
            (rpc::response(&id, answer), Some(200))
        }
        Some(Err(err)) => (
            rpc::error_response(&id, &RpcError::of_flow(&err)),
            Some(err.http_status()),
        ),
        None => {
            let err = RpcError::new(
                rpc::ACTION_ERROR,
                StatusCode::Unavailable,
                format!("the runtime stopped before {key} finished (drain deadline)"),
            );
            (rpc::error_response(&id, &err), None)
        }
    };
    // Past the deadline the guard is dropped unfinished: the manager counts the run as cut.
    if outbox.send(text).await.is_ok()
        && let Some(code) = code
    {
        guard.finish(code);
    }
}

/// The status a call's answer is logged and counted with, as an HTTP server would answer it.
fn http_status(error: &RpcError) -> u16 {
    // An unknown method is an unknown path to an HTTP server, not a missing feature.
    if error.code == rpc::METHOD_NOT_FOUND {
        404
    } else {
        error.status.http_status()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunParams {
    key: String,
    #[serde(default)]
    input: Value,
    #[serde(default)]
    context: Value,
    #[serde(default)]
    telemetry_labels: Option<BTreeMap<String, Value>>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_input: bool,
}

#[derive(Deserialize)]
struct ValuesParams {
    #[serde(rename = "type")]
    _kind: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CancelParams {
    trace_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigureParams {
    telemetry_server_url: Option<String>,
}
