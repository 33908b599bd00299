//! The Genkit Reflection API v1 on the real binary in dev mode: every endpoint, its shapes and
//! status codes, streaming, cancellation, the discovery file's lifecycle, two runtimes in
//! one folder (the origin guard is the hostile suite's), and trace export to a telemetry server.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use multi_server_e2e::{
    Process, Recorder, Reply, WAIT, eventually, get, post, post_streaming, send, temp_dir,
};
use serde_json::{Value, json};

use super::{DEV_ENV, bin, dev_args, start, start_dev, start_dev_env};

const EXIT_WAIT: Duration = Duration::from_secs(20);

/// The genkit CLI's project-root markers (the spec's list; `Cargo.toml` is not one).
const ROOT_MARKERS: &[&str] = &[
    "package.json",
    "go.mod",
    "pyproject.toml",
    "requirements.txt",
    "pom.xml",
    "build.gradle",
    "build.gradle.kts",
    "pubspec.yaml",
];

/// Where the CLI looks for `.genkit/runtimes/` when run from `cwd`: the nearest ancestor with
/// a marker, else `cwd`. Computed here so the tests hold wherever the temp dir lives.
fn runtimes_dir(cwd: &Path) -> PathBuf {
    cwd.ancestors()
        .find(|dir| ROOT_MARKERS.iter().any(|m| dir.join(m).is_file()))
        .unwrap_or(cwd)
        .join(".genkit")
        .join("runtimes")
}

/// The discovery files of process `pid` in `dir` (never the hidden temp files).
fn files_of(dir: &Path, pid: u32) -> Vec<PathBuf> {
    let prefix = format!("{pid}-");
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".json"))
        })
        .collect();
    files.sort();
    files
}

/// Waits for the one discovery file of `p` (started with `cwd` as working directory).
fn runtime_file(p: &Process, cwd: &Path) -> (PathBuf, Value) {
    let dir = runtimes_dir(cwd);
    let path = eventually("the runtime file is written", || {
        let files = files_of(&dir, p.pid());
        assert!(files.len() <= 1, "more than one runtime file: {files:?}");
        files.into_iter().next()
    });
    let json: Value = serde_json::from_slice(&fs::read(&path).expect("read runtime file"))
        .expect("runtime file is JSON");
    (path, json)
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

/// `<pid>-<port>`, the runtime id health checks compare with.
fn runtime_id(p: &Process) -> String {
    format!("{}-{}", p.pid(), port_of(p.url("reflection")))
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn run_action(p: &Process, body: &str) -> Reply {
    post(
        &format!("{}/api/runAction", p.url("reflection")),
        "application/json",
        body,
    )
}

fn assert_version_header(reply: &Reply, what: &str) {
    assert!(
        reply
            .headers
            .get("x-genkit-version")
            .is_some_and(|v| v.starts_with("rust/")),
        "{what}: no x-genkit-version in {:?}",
        reply.headers
    );
}

#[test]
fn health_is_200_and_503_for_another_runtime_id() {
    let p = start_dev(&[]);
    let base = p.url("reflection");
    assert!(base.starts_with("http://127.0.0.1:"), "loopback: {base}");

    let plain = get(&format!("{base}/api/__health"));
    assert_eq!(plain.status, 200, "{}", plain.text);
    assert_eq!(plain.json, json!({"status": "OK"}));
    assert_version_header(&plain, "health");

    let ours = get(&format!("{base}/api/__health?id={}", runtime_id(&p)));
    assert_eq!(ours.status, 200, "{}", ours.text);

    for wrong in ["wrong", &format!("{}-1", p.pid()), "1-1"] {
        let theirs = get(&format!("{base}/api/__health?id={wrong}"));
        assert_eq!(theirs.status, 503, "id={wrong}: {}", theirs.text);
        assert_version_header(&theirs, "health 503");
    }
}

#[test]
fn actions_lists_every_flow_with_draft07_schemas() {
    let p = start_dev(&[]);
    let reply = get(&format!("{}/api/actions", p.url("reflection")));
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(reply.headers["content-type"].starts_with("application/json"));
    assert_version_header(&reply, "actions");
    let actions = reply
        .json
        .as_object()
        .expect("an object keyed by action key");
    for name in ["multi_server_flow", "streaming_greeting", "plan_trip"] {
        assert!(
            actions.contains_key(&format!("/flow/{name}")),
            "{name} missing: {}",
            reply.text
        );
    }
    for (key, action) in actions {
        let name = key.strip_prefix("/flow/").expect("key is /flow/<name>");
        assert_eq!(action["key"], key.as_str());
        assert_eq!(action["name"], name);
        assert_eq!(action["type"], "flow");
        assert!(
            !action["description"]
                .as_str()
                .expect("description")
                .is_empty(),
            "{key}"
        );
        assert!(action["metadata"].is_object(), "{key}: {action}");
        for schema in ["inputSchema", "outputSchema"] {
            let schema = &action[schema];
            assert!(schema.is_object(), "{key}: {action}");
            assert_eq!(
                schema["$schema"], "http://json-schema.org/draft-07/schema#",
                "{key}"
            );
        }
    }

    let greet = &actions["/flow/multi_server_flow"];
    assert_eq!(greet["inputSchema"]["type"], "string");
    assert_eq!(greet["outputSchema"]["type"], "string");

    let trip = &actions["/flow/plan_trip"]["inputSchema"];
    assert_eq!(trip["type"], "object");
    for field in ["destination", "days", "travelers", "pace"] {
        assert!(trip["properties"][field].is_object(), "{field}: {trip}");
    }
    let required: Vec<&str> = trip["required"]
        .as_array()
        .expect("required")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for field in ["destination", "days", "travelers"] {
        assert!(required.contains(&field), "{field} not required: {trip}");
    }
    assert!(!required.contains(&"pace"), "pace has a default: {trip}");

    let stream = &actions["/flow/streaming_greeting"]["inputSchema"];
    assert!(stream["properties"]["name"].is_object(), "{stream}");
    assert!(stream["properties"]["interval_ms"].is_object(), "{stream}");
}

#[test]
fn run_action_returns_the_result_the_trace_id_and_early_headers() {
    let p = start_dev(&[]);
    let reply = run_action(&p, r#"{"key":"/flow/multi_server_flow","input":"Alice"}"#);
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(reply.headers["content-type"].starts_with("application/json"));
    assert_eq!(reply.json["result"], "Hello from multi-server, Alice!");
    let trace_id = reply.json["telemetry"]["traceId"]
        .as_str()
        .expect("telemetry.traceId");
    assert!(is_hex(trace_id, 32), "{trace_id}");
    assert_eq!(reply.headers["x-genkit-trace-id"], trace_id);
    assert!(
        is_hex(&reply.headers["x-genkit-span-id"], 16),
        "{:?}",
        reply.headers
    );
    assert_version_header(&reply, "runAction");
    let keys: Vec<&String> = reply.json.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["result", "telemetry"], "{}", reply.text);

    // Every run gets its own trace.
    let again = run_action(&p, r#"{"key":"/flow/multi_server_flow","input":"Bo"}"#);
    assert_eq!(again.json["result"], "Hello from multi-server, Bo!");
    assert_ne!(again.json["telemetry"]["traceId"], trace_id);

    // Optional and unknown fields are accepted and ignored.
    let extra = run_action(
        &p,
        r#"{"key":"/flow/multi_server_flow","input":"Cy","context":{"auth":{"uid":"u1"}},
            "telemetryLabels":{"label":"x"},"runtimeId":"whatever","somethingNew":[1,2]}"#,
    );
    assert_eq!(extra.status, 200, "{}", extra.text);
    assert_eq!(extra.json["result"], "Hello from multi-server, Cy!");

    // A structured input and output.
    let trip = run_action(
        &p,
        r#"{"key":"/flow/plan_trip","input":{"destination":"Lyon","days":2,"travelers":["Ann"],"pace":"packed"}}"#,
    );
    assert_eq!(trip.status, 200, "{}", trip.text);
    let plan = &trip.json["result"];
    assert_eq!(plan["destination"], "Lyon");
    assert_eq!(plan["travelers"], json!(["Ann"]));
    let days = plan["itinerary"].as_array().expect("itinerary");
    assert_eq!(days.len(), 2, "{plan}");
    for (i, day) in days.iter().enumerate() {
        assert_eq!(day["day"], i + 1);
        assert_eq!(day["activities"].as_array().unwrap().len(), 3, "{plan}");
    }
    assert_eq!(
        plan["summary"],
        "2 day(s) in Lyon for Ann at a packed pace."
    );
}

#[test]
fn run_action_streams_chunk_lines_then_one_final_object_without_newline() {
    let p = start_dev(&[]);
    let url = format!("{}/api/runAction?stream=true", p.url("reflection"));
    let reply = post(
        &url,
        "application/json",
        r#"{"key":"/flow/streaming_greeting","input":{"name":"Dee","interval_ms":0}}"#,
    );
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(
        reply.headers["content-type"].starts_with("text/plain"),
        "{:?}",
        reply.headers
    );
    assert_version_header(&reply, "runAction stream");
    assert!(!reply.text.ends_with('\n'), "{:?}", reply.text);
    let lines: Vec<&str> = reply.text.split('\n').collect();
    let (last, chunks) = lines.split_last().unwrap();
    assert!(chunks.len() > 3, "{}", reply.text);
    let mut words = Vec::new();
    for (i, line) in chunks.iter().enumerate() {
        let chunk: Value = serde_json::from_str(line).expect("chunk line is JSON");
        assert_eq!(chunk["index"], i, "{line}");
        words.push(chunk["text"].as_str().expect("text").to_owned());
    }
    let last: Value = serde_json::from_str(last).expect("final object is JSON");
    let greeting = "Hello from multi-server, Dee! Streaming, word by word.";
    assert_eq!(last["result"], greeting);
    assert_eq!(words.join(" "), greeting);
    assert_eq!(
        last["telemetry"]["traceId"],
        reply.headers["x-genkit-trace-id"]
    );

    // A flow that streams nothing: just the final object.
    let plain = post(
        &url,
        "application/json",
        r#"{"key":"/flow/multi_server_flow","input":"Eve"}"#,
    );
    assert_eq!(plain.status, 200, "{}", plain.text);
    assert!(!plain.text.contains('\n'), "{:?}", plain.text);
    assert_eq!(plain.json["result"], "Hello from multi-server, Eve!");

    // An error in stream mode: the final object is the error, still without a newline.
    let bad = post(
        &url,
        "application/json",
        r#"{"key":"/flow/streaming_greeting","input":{"name":1}}"#,
    );
    assert_eq!(bad.status, 200, "{}", bad.text);
    assert!(!bad.text.ends_with('\n'), "{:?}", bad.text);
    assert_eq!(bad.json["error"]["code"], 3, "{}", bad.text);
}

#[test]
fn run_action_errors_have_the_spec_status_codes_and_shapes() {
    let p = start_dev(&[]);

    // Input that fails the schema: 200 with a Status (code 3) that names the problem.
    let wrong_type = run_action(&p, r#"{"key":"/flow/multi_server_flow","input":42}"#);
    assert_eq!(wrong_type.status, 200, "{}", wrong_type.text);
    assert_version_header(&wrong_type, "invalid input");
    let error = &wrong_type.json["error"];
    assert_eq!(error["code"], 3, "{}", wrong_type.text);
    let message = error["message"].as_str().expect("message");
    assert!(message.contains("invalid type"), "{message}");
    let trace_id = error["details"]["traceId"]
        .as_str()
        .expect("details.traceId");
    assert!(is_hex(trace_id, 32), "{trace_id}");
    assert_eq!(wrong_type.headers["x-genkit-trace-id"], trace_id);
    assert!(
        wrong_type.json.get("result").is_none(),
        "{}",
        wrong_type.text
    );

    let missing_input = run_action(&p, r#"{"key":"/flow/multi_server_flow"}"#);
    assert_eq!(missing_input.status, 200, "{}", missing_input.text);
    assert_eq!(
        missing_input.json["error"]["code"], 3,
        "{}",
        missing_input.text
    );

    let days = run_action(
        &p,
        r#"{"key":"/flow/plan_trip","input":{"destination":"Oslo","days":"two","travelers":["A"]}}"#,
    );
    assert_eq!(days.json["error"]["code"], 3, "{}", days.text);
    assert!(
        days.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("days"),
        "{}",
        days.text
    );

    // A flow that fails on its own (its validation step): also 200 with the Status.
    let zero_days = run_action(
        &p,
        r#"{"key":"/flow/plan_trip","input":{"destination":"Oslo","days":0,"travelers":["A"]}}"#,
    );
    assert_eq!(zero_days.status, 200, "{}", zero_days.text);
    assert_eq!(zero_days.json["error"]["code"], 3, "{}", zero_days.text);
    assert!(
        zero_days.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("days must be from 1 to 14"),
        "{}",
        zero_days.text
    );
    assert!(is_hex(
        zero_days.json["error"]["details"]["traceId"]
            .as_str()
            .unwrap(),
        32
    ));

    // Malformed JSON, a missing key, an empty body: 400 with a JSON error.
    for (body, needle) in [
        (
            r#"{"key": "/flow/multi_server_flow", "input": "#,
            "invalid JSON",
        ),
        ("not json at all", "invalid JSON"),
        (r#"{"input":"Alice"}"#, "key is required"),
        (r#"{"key":"","input":"Alice"}"#, "key is required"),
        ("", "empty"),
    ] {
        let reply = run_action(&p, body);
        assert_eq!(reply.status, 400, "{body:?}: {}", reply.text);
        assert!(
            reply.headers["content-type"].starts_with("application/json"),
            "{body:?}"
        );
        assert_version_header(&reply, body);
        let error = reply.json["error"].as_str().unwrap_or_else(|| {
            panic!("{body:?}: no error string in {}", reply.text);
        });
        assert!(error.contains(needle), "{body:?}: {error}");
    }

    // An unknown key: 404 with an error.
    let unknown = run_action(&p, r#"{"key":"/flow/no_such_flow","input":"x"}"#);
    assert_eq!(unknown.status, 404, "{}", unknown.text);
    assert_version_header(&unknown, "unknown key");
    assert!(
        unknown.json["error"]
            .as_str()
            .is_some_and(|e| e.contains("/flow/no_such_flow")),
        "{}",
        unknown.text
    );

    // Still serving.
    let ok = run_action(&p, r#"{"key":"/flow/multi_server_flow","input":"Al"}"#);
    assert_eq!(ok.json["result"], "Hello from multi-server, Al!");
}

enum Event {
    Headers(u16, String),
    Line(String),
    End(Instant),
}

#[test]
fn cancel_action_stops_a_running_streaming_flow() {
    let p = start_dev(&[]);
    let base = p.url("reflection").to_owned();
    let url = format!("{base}/api/runAction?stream=true");
    // 8 words, 500 ms apart: the whole run takes 3.5 s.
    let full_run = Duration::from_millis(3500);
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    let reader = thread::spawn(move || {
        let mut stream = post_streaming(
            &url,
            &[("content-type", "application/json")],
            r#"{"key":"/flow/streaming_greeting","input":{"name":"Flo","interval_ms":500}}"#,
        );
        let trace_id = stream
            .headers
            .get("x-genkit-trace-id")
            .cloned()
            .unwrap_or_default();
        let _ = tx.send(Event::Headers(stream.status, trace_id));
        while let Some(line) = stream.next_line() {
            let _ = tx.send(Event::Line(line));
        }
        let _ = tx.send(Event::End(Instant::now()));
    });
    let Ok(Event::Headers(status, trace_id)) = rx.recv_timeout(WAIT) else {
        panic!("no response headers");
    };
    assert_eq!(status, 200);
    assert!(is_hex(&trace_id, 32), "{trace_id:?}");
    // The first word has arrived: the flow is running, sleeping before the second.
    let Ok(Event::Line(first)) = rx.recv_timeout(WAIT) else {
        panic!("no first chunk");
    };
    assert_eq!(
        serde_json::from_str::<Value>(&first).unwrap(),
        json!({"index": 0, "text": "Hello"})
    );

    let cancel_url = format!("{base}/api/cancelAction");
    let body = json!({ "traceId": trace_id }).to_string();
    let cancelled = post(&cancel_url, "application/json", &body);
    let cancelled_at = Instant::now();
    assert_eq!(cancelled.status, 200, "{}", cancelled.text);
    assert_eq!(cancelled.json, json!({"message": "Action cancelled"}));
    assert_version_header(&cancelled, "cancelAction");

    let mut lines = vec![first];
    let ended = loop {
        match rx.recv_timeout(WAIT) {
            Ok(Event::Line(line)) => lines.push(line),
            Ok(Event::End(at)) => break at,
            Ok(Event::Headers(..)) | Err(_) => panic!("the stream never ended: {lines:?}"),
        }
    };
    reader.join().expect("reader thread");
    assert!(
        ended.duration_since(started) < full_run,
        "the stream ran {:?}, as long as the uncancelled flow: {lines:?}",
        ended.duration_since(started)
    );
    assert!(
        ended.saturating_duration_since(cancelled_at) < Duration::from_millis(1500),
        "the stream ended {:?} after the cancel",
        ended.saturating_duration_since(cancelled_at)
    );
    let (last, chunks) = lines.split_last().unwrap();
    assert!(!last.ends_with('\n'), "{last:?}");
    assert!(chunks.len() < 8, "every chunk arrived: {lines:?}");
    for line in chunks {
        assert!(line.ends_with('\n'), "{line:?}");
        assert!(serde_json::from_str::<Value>(line).unwrap()["text"].is_string());
    }
    let last: Value = serde_json::from_str(last).expect("final object is JSON");
    assert_eq!(last["error"]["code"], 1, "{last}");
    assert_eq!(last["error"]["message"], "Action was cancelled", "{last}");
    assert_eq!(last["error"]["details"]["traceId"], trace_id.as_str());
    assert!(last.get("result").is_none(), "{last}");

    // Gone now.
    let again = post(&cancel_url, "application/json", &body);
    assert_eq!(again.status, 404, "{}", again.text);
    assert_eq!(
        again.json,
        json!({"message": "Action not found or already completed"})
    );
    assert_eq!(get(&format!("{base}/api/__health")).status, 200);
}

#[test]
fn cancel_action_validates_its_body() {
    let p = start_dev(&[]);
    let url = format!("{}/api/cancelAction", p.url("reflection"));
    for body in ["{}", r#"{"traceId":""}"#, r#"{"other":1}"#] {
        let reply = post(&url, "application/json", body);
        assert_eq!(reply.status, 400, "{body}: {}", reply.text);
        assert_eq!(
            reply.json,
            json!({"error": "traceId is required"}),
            "{body}"
        );
        assert_version_header(&reply, body);
    }
    let malformed = post(&url, "application/json", "{\"traceId\":");
    assert_eq!(malformed.status, 400, "{}", malformed.text);
    assert!(malformed.json["error"].is_string(), "{}", malformed.text);

    let unknown = post(
        &url,
        "application/json",
        r#"{"traceId":"0123456789abcdef0123456789abcdef"}"#,
    );
    assert_eq!(unknown.status, 404, "{}", unknown.text);
    assert_eq!(
        unknown.json,
        json!({"message": "Action not found or already completed"})
    );

    // A finished run cannot be cancelled either.
    let done = run_action(&p, r#"{"key":"/flow/multi_server_flow","input":"Al"}"#);
    let trace_id = done.json["telemetry"]["traceId"].as_str().unwrap();
    let late = post(
        &url,
        "application/json",
        &json!({ "traceId": trace_id }).to_string(),
    );
    assert_eq!(late.status, 404, "{}", late.text);
}

#[test]
fn notify_values_and_envs() {
    let p = start_dev(&[]);
    let base = p.url("reflection");

    let notify = post(
        &format!("{base}/api/notify"),
        "application/json",
        r#"{"reflectionApiSpecVersion":1}"#,
    );
    assert_eq!(notify.status, 200, "{}", notify.text);
    assert_eq!(notify.json, json!({}));
    assert_version_header(&notify, "notify");

    // Another version is a warning, not an error.
    let other = post(
        &format!("{base}/api/notify"),
        "application/json",
        r#"{"reflectionApiSpecVersion":2}"#,
    );
    assert_eq!(other.status, 200, "{}", other.text);
    assert_eq!(other.json, json!({}));
    p.wait_for_log("another reflection API version");

    for kind in ["defaultModel", "middleware", "x"] {
        let values = get(&format!("{base}/api/values?type={kind}"));
        assert_eq!(values.status, 200, "{kind}: {}", values.text);
        assert_eq!(values.json, json!({}));
        assert_version_header(&values, "values");
    }
    let no_type = get(&format!("{base}/api/values"));
    assert_eq!(no_type.status, 400, "{}", no_type.text);
    assert!(no_type.json["error"].is_string(), "{}", no_type.text);
    assert_version_header(&no_type, "values 400");

    let envs = get(&format!("{base}/api/envs"));
    assert_eq!(envs.status, 200, "{}", envs.text);
    assert_eq!(envs.json, json!(["dev"]));
    assert_version_header(&envs, "envs");
}

#[test]
fn every_response_carries_x_genkit_version_even_errors() {
    let p = start_dev(&[]);
    let base = p.url("reflection");
    let missing = get(&format!("{base}/api/no/such/endpoint"));
    assert_eq!(missing.status, 404, "{}", missing.text);
    assert!(missing.json["error"].is_string(), "{}", missing.text);
    assert_version_header(&missing, "404");

    let wrong_method = get(&format!("{base}/api/runAction"));
    assert_eq!(wrong_method.status, 405, "{}", wrong_method.text);
    assert!(
        wrong_method.json["error"].is_string(),
        "{}",
        wrong_method.text
    );
    assert_version_header(&wrong_method, "405");

    for path in [
        "/api/__health",
        "/api/actions",
        "/api/envs",
        "/api/values?type=t",
    ] {
        assert_version_header(&get(&format!("{base}{path}")), path);
    }
}

#[test]
fn discovery_file_has_the_cli_fields_and_sigterm_removes_it() {
    let mut p = start_dev(&[]);
    let cwd = p.dir().to_path_buf();
    let (path, file) = runtime_file(&p, &cwd);
    let port = port_of(p.url("reflection"));
    let pid = p.pid();

    let name = path.file_name().unwrap().to_str().unwrap();
    let stamp = name
        .strip_prefix(&format!("{pid}-{port}-"))
        .and_then(|rest| rest.strip_suffix(".json"))
        .unwrap_or_else(|| panic!("file name {name} is not <pid>-<port>-<ms>.json"));
    let ms: u128 = stamp.parse().expect("epoch millis");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    assert!(ms <= now && now - ms < 600_000, "{ms} vs now {now}");

    let object = file.as_object().expect("a JSON object");
    for key in object.keys() {
        assert!(
            [
                "id",
                "pid",
                "reflectionServerUrl",
                "timestamp",
                "genkitVersion",
                "reflectionApiSpecVersion",
                "name"
            ]
            .contains(&key.as_str()),
            "unexpected field {key}: {file}"
        );
    }
    assert_eq!(file["id"], format!("{pid}-{port}"));
    assert_eq!(file["pid"], pid);
    assert_eq!(
        file["reflectionServerUrl"],
        format!("http://localhost:{port}")
    );
    assert_eq!(file["reflectionApiSpecVersion"], 1);
    assert!(
        file["genkitVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("rust/")),
        "{file}"
    );
    let timestamp = file["timestamp"].as_str().expect("timestamp string");
    assert!(
        timestamp.len() >= 20
            && timestamp.ends_with('Z')
            && timestamp.as_bytes()[4] == b'-'
            && timestamp.as_bytes()[10] == b'T',
        "{timestamp}"
    );
    if let Some(name) = object.get("name") {
        assert!(name.is_string(), "{file}");
    }

    // The URL in the file works (the CLI connects to localhost) and the id health-checks.
    let via_file = get(&format!(
        "{}/api/__health?id={}",
        file["reflectionServerUrl"].as_str().unwrap(),
        file["id"].as_str().unwrap()
    ));
    assert_eq!(via_file.status, 200, "{}", via_file.text);

    p.signal("TERM");
    assert_eq!(p.wait_exit(EXIT_WAIT).code(), Some(0), "{}", p.stderr());
    assert!(!path.exists(), "runtime file left after SIGTERM: {path:?}");
    assert!(files_of(&runtimes_dir(&cwd), pid).is_empty());
}

#[test]
fn quitquitquit_stops_the_process_and_removes_the_discovery_file() {
    for method in ["POST", "GET"] {
        let mut p = start_dev(&[]);
        let cwd = p.dir().to_path_buf();
        let (path, _) = runtime_file(&p, &cwd);
        let reply = send(
            method,
            &format!("{}/api/__quitquitquit", p.url("reflection")),
            &[],
            None,
        );
        assert_eq!(reply.status, 200, "{method}: {}", reply.text);
        assert_version_header(&reply, "quit");
        assert_eq!(
            p.wait_exit(EXIT_WAIT).code(),
            Some(0),
            "{method}: {}",
            p.stderr()
        );
        assert!(!path.exists(), "{method}: runtime file left: {path:?}");
        assert!(
            p.stderr().contains("quit requested on server 'reflection'"),
            "{}",
            p.stderr()
        );
    }
}

#[test]
fn without_dev_there_is_no_reflection_server_and_no_discovery_file() {
    let p = start(&["--reflection-ports", "0", "--reflection-delay", "0s"]);
    assert!(
        !p.urls.contains_key("reflection"),
        "reflection server without --dev: {:?}",
        p.urls
    );
    assert!(!p.stdout().contains("dev mode"), "{}", p.stdout());
    // The flows API serves; give a (wrongly) started reflection server time to show up.
    assert_eq!(get(&format!("{}/flow/run", p.url("flows"))).status, 200);
    thread::sleep(Duration::from_millis(300));
    assert!(files_of(&runtimes_dir(p.dir()), p.pid()).is_empty());
    assert!(!p.dir().join(".genkit").exists());
    let info = get(&format!("{}/__serverz", p.url("flows"))).json;
    let names: Vec<&str> = info["servers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(!names.contains(&"reflection"), "{info}");
    assert!(
        !p.stderr().contains("runtime file written"),
        "{}",
        p.stderr()
    );
}

#[test]
fn genkit_env_dev_turns_the_reflection_server_on_too() {
    let args = ["--reflection-ports", "0", "--reflection-delay", "0s"];
    let mut all = vec!["--flows-ports", "0", "--flows-workers", "2"];
    all.extend_from_slice(&args);
    let mut env = DEV_ENV.to_vec();
    env.push(("GENKIT_ENV", "dev"));
    let p = Process::start_with_env(bin(), &all, &env);
    let health = get(&format!("{}/api/__health", p.url("reflection")));
    assert_eq!(health.status, 200, "{}", health.text);
    let cwd = p.dir().to_path_buf();
    runtime_file(&p, &cwd);
}

#[test]
fn the_discovery_file_goes_to_the_nearest_folder_the_cli_treats_as_root() {
    let base = temp_dir("marker");
    let project = base.join("project");
    let cwd = project.join("crate");
    fs::create_dir_all(&cwd).unwrap();
    fs::write(project.join("package.json"), "{}").unwrap();
    fs::write(cwd.join("Cargo.toml"), "[package]\n").unwrap();

    let mut p = Process::start_in(bin(), &dev_args(), DEV_ENV, &cwd);
    let dir = project.join(".genkit").join("runtimes");
    let path = eventually(
        "the runtime file is written under the package.json folder",
        || files_of(&dir, p.pid()).into_iter().next(),
    );
    assert!(
        !cwd.join(".genkit").exists(),
        "Cargo.toml must not be a root marker"
    );
    p.signal("TERM");
    assert_eq!(p.wait_exit(EXIT_WAIT).code(), Some(0), "{}", p.stderr());
    assert!(!path.exists(), "{path:?}");
}

#[test]
fn two_runtimes_in_one_folder_have_two_files_two_ports_and_their_own_ids() {
    let cwd = temp_dir("shared");
    let mut a = Process::start_in(bin(), &dev_args(), DEV_ENV, &cwd);
    let mut b = Process::start_in(bin(), &dev_args(), DEV_ENV, &cwd);
    let (path_a, file_a) = runtime_file(&a, &cwd);
    let (path_b, file_b) = runtime_file(&b, &cwd);
    assert_ne!(path_a, path_b);
    assert_eq!(path_a.parent(), path_b.parent(), "one runtimes folder");
    let (url_a, url_b) = (
        a.url("reflection").to_owned(),
        b.url("reflection").to_owned(),
    );
    assert_ne!(port_of(&url_a), port_of(&url_b));
    let id_a = file_a["id"].as_str().unwrap().to_owned();
    let id_b = file_b["id"].as_str().unwrap().to_owned();
    assert_eq!(id_a, runtime_id(&a));
    assert_eq!(id_b, runtime_id(&b));
    assert_ne!(id_a, id_b);

    // Both files, and only theirs, are in the folder.
    let dir = runtimes_dir(&cwd);
    let names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with(&format!("{}-", a.pid())) || n.starts_with(&format!("{}-", b.pid()))
        })
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");

    for (url, own, other) in [(&url_a, &id_a, &id_b), (&url_b, &id_b, &id_a)] {
        assert_eq!(get(&format!("{url}/api/__health?id={own}")).status, 200);
        assert_eq!(get(&format!("{url}/api/__health?id={other}")).status, 503);
        let run = post(
            &format!("{url}/api/runAction"),
            "application/json",
            r#"{"key":"/flow/multi_server_flow","input":"Twin"}"#,
        );
        assert_eq!(run.json["result"], "Hello from multi-server, Twin!");
    }

    // Stopping one removes its file only.
    a.signal("TERM");
    assert_eq!(a.wait_exit(EXIT_WAIT).code(), Some(0), "{}", a.stderr());
    assert!(!path_a.exists());
    assert!(path_b.exists(), "the other runtime's file must stay");
    assert_eq!(get(&format!("{url_b}/api/__health?id={id_b}")).status, 200);
    b.signal("TERM");
    assert_eq!(b.wait_exit(EXIT_WAIT).code(), Some(0), "{}", b.stderr());
    assert!(!path_b.exists());
    drop((a, b));
}

/// The trace posts for `trace_id` a recorder got, parsed, in arrival order.
fn trace_posts(recorder: &[multi_server_e2e::Recorded], trace_id: &str) -> Vec<Value> {
    recorder
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/api/traces")
        .filter_map(|r| serde_json::from_str::<Value>(&r.body).ok())
        .filter(|t| t["traceId"] == trace_id)
        .collect()
}

fn end_time(trace: &Value) -> f64 {
    trace["endTime"].as_f64().expect("endTime is a number")
}

/// Waits until the recorder holds a finished post of `trace_id`; checks that nothing of it
/// was posted as running after that.
fn wait_finished_trace(recorder: &Recorder, trace_id: &str) -> Vec<Value> {
    let requests = recorder.wait_until(&format!("a finished trace {trace_id}"), |got| {
        trace_posts(got, trace_id).iter().any(|t| end_time(t) > 0.0)
    });
    let posts = trace_posts(&requests, trace_id);
    let first_done = posts.iter().position(|t| end_time(t) > 0.0).unwrap();
    assert!(
        posts[first_done..].iter().all(|t| end_time(t) > 0.0),
        "a running post came after the end: {posts:#?}"
    );
    posts
}

#[test]
fn traces_are_exported_to_the_telemetry_server_from_the_environment() {
    let telemetry = Recorder::start();
    let notified = Recorder::start();
    let p = start_dev_env(&[], &[("GENKIT_TELEMETRY_SERVER", &telemetry.url)]);
    // The environment wins over what a tool announces later.
    let notify = post(
        &format!("{}/api/notify", p.url("reflection")),
        "application/json",
        &json!({"telemetryServerUrl": notified.url, "reflectionApiSpecVersion": 1}).to_string(),
    );
    assert_eq!(notify.status, 200);

    let run = run_action(&p, r#"{"key":"/flow/multi_server_flow","input":"Tel"}"#);
    assert_eq!(run.status, 200, "{}", run.text);
    let trace_id = run.headers["x-genkit-trace-id"].clone();
    let span_id = run.headers["x-genkit-span-id"].clone();
    let posts = wait_finished_trace(&telemetry, &trace_id);

    let done = posts.iter().rfind(|t| end_time(t) > 0.0).unwrap();
    assert_eq!(done["displayName"], "multi_server_flow");
    assert!(done["startTime"].as_f64().unwrap() > 1.7e12, "{done}");
    assert!(
        end_time(done) >= done["startTime"].as_f64().unwrap(),
        "{done}"
    );
    let span = &done["spans"][&span_id];
    assert_eq!(span["spanId"], span_id.as_str(), "{done}");
    assert_eq!(span["traceId"], trace_id.as_str());
    assert!(span.get("parentSpanId").is_none(), "root span: {span}");
    assert_eq!(span["displayName"], "multi_server_flow");
    assert_eq!(span["spanKind"], "INTERNAL");
    assert_eq!(
        span["instrumentationLibrary"],
        json!({"name": "genkit-tracer", "version": "v1"})
    );
    assert_eq!(span["status"]["code"], 0, "{span}");
    let attributes = &span["attributes"];
    assert_eq!(attributes["genkit:type"], "action");
    assert_eq!(attributes["genkit:metadata:subtype"], "flow");
    assert_eq!(attributes["genkit:name"], "multi_server_flow");
    assert_eq!(
        attributes["genkit:path"],
        "/{multi_server_flow,t:action,s:flow}"
    );
    assert_eq!(attributes["genkit:state"], "success");
    assert_eq!(attributes["genkit:input"], "\"Tel\"");
    assert_eq!(
        attributes["genkit:output"],
        "\"Hello from multi-server, Tel!\""
    );
    // Done inside the call that started it: posted once, finished.
    assert_eq!(posts.len(), 1, "{posts:#?}");

    assert!(
        notified.requests().is_empty(),
        "a notified URL overrode GENKIT_TELEMETRY_SERVER: {:?}",
        notified.requests()
    );
}

#[test]
fn traces_are_exported_to_the_telemetry_server_a_tool_notifies() {
    let telemetry = Recorder::start();
    let p = start_dev(&[]);
    let base = p.url("reflection");

    // No telemetry server known yet: nothing is exported.
    let before = run_action(&p, r#"{"key":"/flow/multi_server_flow","input":"Early"}"#);
    let early_trace = before.headers["x-genkit-trace-id"].clone();

    let notify = post(
        &format!("{base}/api/notify"),
        "application/json",
        &json!({"telemetryServerUrl": telemetry.url, "reflectionApiSpecVersion": 1}).to_string(),
    );
    assert_eq!(notify.status, 200, "{}", notify.text);
    assert_eq!(notify.json, json!({}));

    let run = run_action(
        &p,
        r#"{"key":"/flow/plan_trip","input":{"destination":"Rome","days":1,"travelers":["Ed"]}}"#,
    );
    assert_eq!(run.status, 200, "{}", run.text);
    let trace_id = run.headers["x-genkit-trace-id"].clone();
    let root_span = run.headers["x-genkit-span-id"].clone();
    let posts = wait_finished_trace(&telemetry, &trace_id);

    let done = posts.iter().rfind(|t| end_time(t) > 0.0).unwrap();
    let spans = done["spans"].as_object().expect("spans");
    assert_eq!(spans[&root_span]["attributes"]["genkit:state"], "success");
    let mut steps: Vec<&str> = spans
        .values()
        .filter(|s| s["parentSpanId"] == root_span.as_str())
        .map(|s| {
            assert_eq!(s["attributes"]["genkit:type"], "flowStep", "{s}");
            assert!(s["endTime"].as_f64().unwrap() > 0.0, "{s}");
            s["displayName"].as_str().unwrap()
        })
        .collect();
    steps.sort_unstable();
    assert_eq!(steps, ["plan_days", "summarize", "validate"], "{done}");

    // A run that waits is posted while it runs, then finished.
    let run = run_action(
        &p,
        r#"{"key":"/flow/streaming_greeting","input":{"name":"Ann","interval_ms":50}}"#,
    );
    assert_eq!(run.status, 200, "{}", run.text);
    let trace_id = run.headers["x-genkit-trace-id"].clone();
    let root_span = run.headers["x-genkit-span-id"].clone();
    let posts = wait_finished_trace(&telemetry, &trace_id);
    assert_eq!(
        end_time(&posts[0]),
        0.0,
        "the first post is the running run: {posts:#?}"
    );
    assert_eq!(posts[0]["spans"][&root_span]["endTime"], 0.0, "{posts:#?}");

    assert!(
        trace_posts(&telemetry.requests(), &early_trace).is_empty(),
        "a run from before the notify was exported"
    );
}

#[test]
fn run_action_sends_the_trace_headers_early_so_a_plain_run_can_be_cancelled() {
    let p = start_dev(&[]);
    let base = p.url("reflection");
    let started = Instant::now();
    // Not streaming: the body is only the final object, 3.5 s from now unless cancelled.
    let mut run = post_streaming(
        &format!("{base}/api/runAction"),
        &[("content-type", "application/json")],
        r#"{"key":"/flow/streaming_greeting","input":{"name":"Hal","interval_ms":500}}"#,
    );
    let headers_after = started.elapsed();
    assert_eq!(run.status, 200);
    assert!(
        headers_after < Duration::from_millis(2000),
        "headers came after {headers_after:?}, not before the result"
    );
    let trace_id = run.headers["x-genkit-trace-id"].clone();
    assert!(is_hex(&trace_id, 32), "{trace_id}");
    assert!(is_hex(&run.headers["x-genkit-span-id"], 16));
    let cancelled = post(
        &format!("{base}/api/cancelAction"),
        "application/json",
        &json!({ "traceId": trace_id }).to_string(),
    );
    assert_eq!(cancelled.status, 200, "{}", cancelled.text);
    let body = run.rest();
    assert!(
        started.elapsed() < Duration::from_millis(3500),
        "ran to the end: {:?}",
        started.elapsed()
    );
    let body: Value = serde_json::from_str(&body).expect("one JSON object");
    assert_eq!(
        body,
        json!({"error": {"code": 1, "message": "Action was cancelled", "details": {"traceId": trace_id}}})
    );
}

#[test]
fn a_reflection_stream_in_flight_at_sigterm_completes_and_the_file_goes() {
    let mut p = start_dev(&["--drain-deadline", "10s"]);
    let cwd = p.dir().to_path_buf();
    let (path, _) = runtime_file(&p, &cwd);
    // 8 words, 250 ms apart: about 1.75 s.
    let mut stream = post_streaming(
        &format!("{}/api/runAction?stream=true", p.url("reflection")),
        &[("content-type", "application/json")],
        r#"{"key":"/flow/streaming_greeting","input":{"name":"Ivy","interval_ms":250}}"#,
    );
    let first = stream.next_line().expect("first chunk");
    assert_eq!(
        serde_json::from_str::<Value>(&first).unwrap(),
        json!({"index": 0, "text": "Hello"})
    );
    p.signal("TERM");
    p.wait_for_log("shutting down");
    let rest = stream.rest();
    let mut lines: Vec<&str> = rest.split('\n').collect();
    let last: Value = serde_json::from_str(lines.pop().unwrap()).expect("final object");
    assert_eq!(
        last["result"], "Hello from multi-server, Ivy! Streaming, word by word.",
        "{rest}"
    );
    assert_eq!(lines.len(), 7, "{rest}");
    assert_eq!(p.wait_exit(EXIT_WAIT).code(), Some(0), "{}", p.stderr());
    assert!(!path.exists(), "{path:?}");
    assert!(p.stderr().contains("outcome=Clean"), "{}", p.stderr());
}

#[test]
fn sigint_sighup_and_a_failing_server_remove_the_discovery_file_too() {
    for signal in ["INT", "HUP"] {
        let mut p = start_dev(&[]);
        let cwd = p.dir().to_path_buf();
        let (path, _) = runtime_file(&p, &cwd);
        p.signal(signal);
        assert_eq!(
            p.wait_exit(EXIT_WAIT).code(),
            Some(0),
            "SIG{signal}: {}",
            p.stderr()
        );
        assert!(!path.exists(), "SIG{signal} left {path:?}");
    }

    // Another server fails after the reflection server is up: exit 1, file removed.
    let mut p = start_dev(&["--test-fail-startup-hook-after", "700ms"]);
    let cwd = p.dir().to_path_buf();
    let (path, _) = runtime_file(&p, &cwd);
    assert_eq!(p.wait_exit(EXIT_WAIT).code(), Some(1), "{}", p.stderr());
    assert!(
        p.stderr().contains("injected startup hook failure"),
        "{}",
        p.stderr()
    );
    assert!(!path.exists(), "a failing server left {path:?}");
}
