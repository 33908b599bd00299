//! The Reflection API v2 on the real binary: a small genkit-CLI stand-in (a WebSocket server on
//! loopback, tungstenite) that the binary dials when `GENKIT_REFLECTION_V2_SERVER` names it.
//! Registration, a run and its trace export, v1 beside it, `/__serverz`, and the stop; a bad
//! URL; a CLI that is not there. (The real genkit CLI drives it in `tests/genkit-cli/run.sh`.)

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use multi_server_e2e::{Process, Recorder, eventually, get};
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

use super::{DEV_ENV, bin, dev_args, server_entry, start_dev_env};

const EXIT_WAIT: Duration = Duration::from_secs(20);

/// The CLI's side of one connection.
struct Cli {
    ws: WebSocket<TcpStream>,
}

impl Cli {
    /// Accepts the binary's connection (within [`multi_server_e2e::WAIT`]) and reads its
    /// `register`.
    fn accept(listener: &TcpListener) -> (Cli, Value) {
        listener.set_nonblocking(true).unwrap();
        let stream = eventually("the binary dialed", || {
            listener.accept().ok().map(|(stream, _)| stream)
        });
        stream.set_nonblocking(false).unwrap();
        stream.set_nodelay(true).unwrap(); // as the CLI's `ws` server does
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut cli = Cli {
            ws: tungstenite::accept(stream).expect("WebSocket handshake"),
        };
        let register = cli.recv();
        assert_eq!(register["method"], "register", "{register}");
        (cli, register)
    }

    fn send(&mut self, message: &Value) {
        self.ws.send(Message::text(message.to_string())).unwrap();
    }

    fn recv(&mut self) -> Value {
        loop {
            match self.ws.read().expect("read from the runtime") {
                Message::Text(text) => return serde_json::from_str(&text).unwrap(),
                Message::Close(_) => panic!("the runtime closed the connection"),
                _ => {}
            }
        }
    }

    /// Calls `method`; returns every message up to its answer.
    fn call(&mut self, id: &str, method: &str, params: Value) -> Vec<Value> {
        self.send(&json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id}));
        let mut seen = Vec::new();
        loop {
            let message = self.recv();
            let done = message["id"] == id;
            seen.push(message);
            if done {
                return seen;
            }
        }
    }
}

fn status_of(p: &Process) -> String {
    server_entry(p, "flows", "reflection-v2")["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn the_binary_registers_runs_flows_exports_traces_and_closes_at_the_stop() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://localhost:{}", listener.local_addr().unwrap().port());
    let telemetry = Recorder::start();
    let mut p = start_dev_env(&[], &[("GENKIT_REFLECTION_V2_SERVER", &url)]);
    let (mut cli, register) = Cli::accept(&listener);
    assert_eq!(register["params"]["pid"], p.pid());
    assert_eq!(register["params"]["id"], p.pid().to_string());
    assert!(
        register["id"].is_string(),
        "register wants an answer: {register}"
    );
    cli.send(&json!({"jsonrpc": "2.0", "result": {"telemetryServerUrl": telemetry.url}, "id": register["id"]}));
    eventually("registered", || {
        status_of(&p).starts_with("registered").then_some(())
    });
    let entry = server_entry(&p, "flows", "reflection-v2");
    assert_eq!(entry["dials"], url.as_str());
    assert_eq!(entry["framework"], "tokio-tungstenite");
    assert_eq!(entry["state"], "serving");

    // The same actions as v1, which still serves beside it.
    let listed = cli.call("1", "listActions", Value::Null).pop().unwrap();
    let v1 = get(&format!("{}/api/actions", p.url("reflection"))).json;
    assert_eq!(listed["result"]["actions"], v1);

    let messages = cli.call(
        "2",
        "runAction",
        json!({"key": "/flow/multi_server_flow", "input": "Eve", "stream": false, "streamInput": false}),
    );
    assert_eq!(messages[0]["method"], "runActionState", "{messages:?}");
    let trace_id = messages[0]["params"]["state"]["traceId"]
        .as_str()
        .unwrap()
        .to_owned();
    let answer = messages.last().unwrap();
    assert_eq!(
        answer["result"]["result"], "Hello from multi-server, Eve!",
        "{answer}"
    );
    assert_eq!(answer["result"]["telemetry"]["traceId"], trace_id.as_str());
    let bad = cli.call("3", "runAction", json!({"key": "/flow/multi_server_flow", "input": 5, "stream": false, "streamInput": false}));
    assert_eq!(bad.last().unwrap()["error"]["data"]["code"], 3, "{bad:?}");
    let served = server_entry(&p, "flows", "reflection-v2")["requests"]["served"].as_u64();
    assert_eq!(served, Some(3));

    // SIGTERM as the CLI sends it once it has the result: a close frame, exit 0, and the
    // run's finished trace reached the telemetry server the register answer named.
    p.signal("TERM");
    let closed = loop {
        match cli.ws.read() {
            Ok(Message::Close(frame)) => break frame,
            Ok(_) => {}
            Err(err) => panic!("no close frame: {err}"),
        }
    };
    assert!(
        closed
            .as_ref()
            .is_some_and(|f| f.reason.contains("stopping")),
        "{closed:?}"
    );
    let status = p.wait_exit(EXIT_WAIT);
    assert!(status.success(), "{status:?}\n{}", p.stderr());
    let posts = telemetry.requests();
    assert!(
        posts.iter().any(|r| r.path == "/api/traces"
            && r.body.contains(&trace_id)
            && r.body.contains(r#""genkit:state":"success""#)),
        "the finished trace was not exported before the exit: {posts:#?}"
    );
}

#[test]
fn a_url_that_is_not_a_loopback_ws_url_is_one_line_and_exit_2() {
    for bad in [
        "ws://example.com:3200",
        "wss://localhost:3200",
        "localhost:3200",
    ] {
        let mut env = DEV_ENV.to_vec();
        env.push(("GENKIT_REFLECTION_V2_SERVER", bad));
        let mut p = Process::spawn(bin(), &dev_args(), &env);
        let status = p.wait_exit(EXIT_WAIT);
        assert_eq!(status.code(), Some(2), "{bad}: {}", p.stderr());
        let stderr = p.stderr();
        let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(
            lines[0].contains("GENKIT_REFLECTION_V2_SERVER") && lines[0].contains(bad),
            "{}",
            lines[0]
        );
    }
    // Outside dev mode the variable is not read: a warning, and the process serves.
    let mut p = Process::start_with_env(
        bin(),
        &["--flows-ports", "0", "--admin-ports", "0"],
        &[
            ("GENKIT_REFLECTION_V2_SERVER", "ws://example.com:3200"),
            ("GENKIT_ENV", "prod"),
        ],
    );
    // Logged at the start, and written out a moment later (the log writer batches).
    eventually("the warning that dev mode is off", || {
        p.stderr().contains("dev mode is off").then_some(())
    });
    p.signal("TERM");
    assert!(p.wait_exit(EXIT_WAIT).success());
}

#[test]
fn a_cli_that_is_not_there_holds_up_nothing_and_the_stop_is_prompt() {
    let url = format!("ws://127.0.0.1:{}", multi_server_e2e::free_ports(1)[0]);
    let mut p = start_dev_env(&[], &[("GENKIT_REFLECTION_V2_SERVER", &url)]);
    assert!(
        p.stdout().contains(&format!("dials {url}")),
        "{}",
        p.stdout()
    );
    let flows = get(&format!("{}/__readyz", p.url("flows")));
    assert_eq!(flows.status, 200, "{}", flows.json);
    eventually("not connected", || {
        status_of(&p).starts_with("not connected").then_some(())
    });
    let started = Instant::now();
    p.signal("TERM");
    assert!(p.wait_exit(EXIT_WAIT).success(), "{}", p.stderr());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // An empty variable is no URL, as for the genkit CLI.
    let mut p = start_dev_env(&[], &[("GENKIT_REFLECTION_V2_SERVER", "")]);
    let info = get(&format!("{}/__serverz", p.url("flows"))).json;
    assert!(!info.to_string().contains("reflection-v2"), "{info}");
    p.signal("TERM");
    assert!(p.wait_exit(EXIT_WAIT).success());
}

#[test]
fn an_orphan_whose_cli_is_gone_stops_by_itself_and_cleans_up() {
    // As `genkit flow:run ... -- <binary>` leaves it when the CLI dies first: the binary's
    // parent (here a shell) is gone, and so is the CLI's WebSocket.
    let url = format!("ws://127.0.0.1:{}", multi_server_e2e::free_ports(1)[0]);
    let dir = multi_server_e2e::temp_dir("v2-orphan");
    let log = dir.join("stderr");
    let mut command = std::process::Command::new("sh");
    command
        .arg("-c")
        // The shell outlives the binary's start a moment, as the CLI would.
        .arg(r#"log="$1"; shift; "$@" >/dev/null 2>"$log" & echo $!; sleep 1"#)
        .arg("sh")
        .arg(&log)
        .arg(bin())
        .args(dev_args())
        .args(["--admin-ports", "0"])
        .current_dir(&dir)
        .env("GENKIT_REFLECTION_V2_SERVER", &url);
    for (key, value) in DEV_ENV {
        command.env(key, value);
    }
    let out = command.output().expect("run sh");
    let pid: u32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a pid");
    // Stopped by pid when the test ends, whatever happens below.
    let _orphan = multi_server_e2e::Adopted(pid);
    let deadline = Instant::now() + EXIT_WAIT;
    while multi_server_e2e::alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stopped = !multi_server_e2e::alive(pid);
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(stopped, "the orphan kept running:\n{stderr}");
    assert!(stderr.contains("the genkit CLI is gone"), "{stderr}");
    assert!(stderr.contains("runtime file removed"), "{stderr}");
    let runtimes = dir.join(".genkit").join("runtimes");
    let left = std::fs::read_dir(&runtimes).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "a runtime file was left in {}", runtimes.display());
}
