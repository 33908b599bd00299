//! `POST /flow/<name>` on the actix flows API: results, JSON errors, NDJSON and SSE streaming,
//! and a stream that outlives a SIGTERM.

use std::time::Duration;

use multi_server_e2e::{Reply, get, post, post_streaming, send};
use serde_json::{Value, json};

use super::start;

const EXIT_WAIT: Duration = Duration::from_secs(20);
const GREETING: &str = "Hello from multi-server, Gus! Streaming, word by word.";

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn run(flows: &str, name: &str, body: &str) -> Reply {
    post(&format!("{flows}/flow/{name}"), "application/json", body)
}

/// A JSON error answer with `status` whose message contains `needle`.
fn assert_error(reply: &Reply, status: u16, needle: &str) {
    assert_eq!(reply.status, status, "{}", reply.text);
    assert!(
        reply
            .headers
            .get("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{:?}",
        reply.headers
    );
    let message = reply.json["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {}", reply.text));
    assert!(message.contains(needle), "{needle:?} not in {message:?}");
}

#[test]
fn a_flow_answers_its_result_as_json() {
    let p = start(&[]);
    let flows = p.url("flows");

    let hello = run(flows, "multi_server_flow", r#""Alice""#);
    assert_eq!(hello.status, 200, "{}", hello.text);
    assert!(hello.headers["content-type"].starts_with("application/json"));
    assert_eq!(hello.json["result"], "Hello from multi-server, Alice!");
    if let Some(trace_id) = hello.json.get("traceId") {
        let trace_id = trace_id.as_str().expect("traceId string");
        assert!(is_hex(trace_id, 32), "{trace_id}");
        assert_eq!(hello.headers["x-genkit-trace-id"], trace_id);
    }

    let trip = run(
        flows,
        "plan_trip",
        r#"{"destination":"Lyon","days":3,"travelers":["Ann","Bo"],"pace":"relaxed"}"#,
    );
    assert_eq!(trip.status, 200, "{}", trip.text);
    let plan = &trip.json["result"];
    assert_eq!(plan["destination"], "Lyon");
    assert_eq!(plan["travelers"], json!(["Ann", "Bo"]));
    let days = plan["itinerary"].as_array().expect("itinerary");
    assert_eq!(days.len(), 3, "{plan}");
    for (i, day) in days.iter().enumerate() {
        assert_eq!(day["day"], i + 1, "{plan}");
        assert_eq!(day["activities"].as_array().unwrap().len(), 1, "{plan}");
    }
    assert_eq!(
        plan["summary"],
        "3 day(s) in Lyon for Ann, Bo at a relaxed pace."
    );

    // The default pace is balanced: two activities a day.
    let default_pace = run(
        flows,
        "plan_trip",
        r#"{"destination":"Nice","days":1,"travelers":["Cy"]}"#,
    );
    assert_eq!(default_pace.status, 200, "{}", default_pace.text);
    assert_eq!(
        default_pace.json["result"]["itinerary"][0]["activities"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // The streaming flow, asked for a whole answer, answers whole.
    let whole = run(
        flows,
        "streaming_greeting",
        r#"{"name":"Gus","interval_ms":0}"#,
    );
    assert_eq!(whole.status, 200, "{}", whole.text);
    assert_eq!(whole.json["result"], GREETING);
}

#[test]
fn bad_requests_are_json_4xx_that_name_the_problem() {
    let p = start(&[]);
    let flows = p.url("flows");

    let unknown = run(flows, "no_such_flow", r#""x""#);
    assert_error(&unknown, 404, "no_such_flow");

    assert_error(&run(flows, "multi_server_flow", "42"), 400, "invalid type");
    assert_error(
        &run(flows, "multi_server_flow", "null"),
        400,
        "invalid type",
    );
    let no_body = post(
        &format!("{flows}/flow/multi_server_flow"),
        "application/json",
        "",
    );
    assert_eq!(no_body.status, 400, "{}", no_body.text);
    assert!(no_body.json["error"].is_string(), "{}", no_body.text);

    assert_error(
        &run(
            flows,
            "plan_trip",
            r#"{"destination":"Oslo","days":"two","travelers":["A"]}"#,
        ),
        400,
        "days",
    );
    assert_error(
        &run(
            flows,
            "plan_trip",
            r#"{"destination":"Oslo","days":0,"travelers":["A"]}"#,
        ),
        400,
        "days must be from 1 to 14",
    );
    assert_error(
        &run(
            flows,
            "plan_trip",
            r#"{"destination":"Oslo","days":15,"travelers":["A"]}"#,
        ),
        400,
        "days must be from 1 to 14",
    );
    assert_error(
        &run(flows, "plan_trip", r#"{"destination":"Oslo","days":2}"#),
        400,
        "travelers",
    );
    assert_error(
        &run(
            flows,
            "plan_trip",
            r#"{"destination":"Oslo","days":2,"travelers":["A"],"budget":9}"#,
        ),
        400,
        "budget",
    );
    assert_error(
        &run(
            flows,
            "plan_trip",
            r#"{"destination":"Oslo","days":2,"travelers":["A"],"pace":"frantic"}"#,
        ),
        400,
        "frantic",
    );
    assert_error(
        &run(
            flows,
            "streaming_greeting",
            r#"{"name":"A","interval_ms":5000}"#,
        ),
        400,
        "interval_ms must be at most 2000",
    );
    let invalid = run(flows, "multi_server_flow", "42");
    assert_eq!(invalid.json["code"], "INVALID_ARGUMENT", "{}", invalid.text);

    assert_error(
        &run(flows, "multi_server_flow", r#"{"name": "#),
        400,
        "invalid JSON",
    );
    assert_error(
        &post(
            &format!("{flows}/flow/multi_server_flow"),
            "text/plain",
            "Alice",
        ),
        415,
        "application/json",
    );

    let get_flow = get(&format!("{flows}/flow/multi_server_flow"));
    assert_error(&get_flow, 405, "method not allowed");
    assert_eq!(get_flow.headers["allow"], "POST");

    // Still serving, and the original fixed route is unchanged.
    let fixed = get(&format!("{flows}/flow/run"));
    assert_eq!(fixed.status, 200, "{}", fixed.text);
    assert_eq!(fixed.json, json!({"flow": "Running flow endpoint!"}));
    assert_eq!(
        run(flows, "multi_server_flow", r#""Al""#).json["result"],
        "Hello from multi-server, Al!"
    );
}

/// The words of the chunks, checking each chunk's index.
fn words(chunks: &[Value]) -> String {
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            assert_eq!(chunk["index"], i, "{chunk}");
            chunk["text"].as_str().expect("text").to_owned()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn stream_true_answers_ndjson_chunks_then_the_result() {
    let p = start(&[]);
    let reply = post(
        &format!("{}/flow/streaming_greeting?stream=true", p.url("flows")),
        "application/json",
        r#"{"name":"Gus","interval_ms":0}"#,
    );
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(
        reply.headers["content-type"].starts_with("application/x-ndjson"),
        "{:?}",
        reply.headers
    );
    let lines: Vec<Value> = reply
        .text
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    let (last, chunks) = lines.split_last().expect("lines");
    assert_eq!(last, &json!({"result": GREETING}), "{}", reply.text);
    let chunks: Vec<Value> = chunks
        .iter()
        .map(|line| {
            let object = line.as_object().expect("object line");
            assert_eq!(object.len(), 1, "{line}");
            line["chunk"].clone()
        })
        .collect();
    assert_eq!(chunks.len(), 8, "{}", reply.text);
    assert_eq!(words(&chunks), GREETING);

    // Input the schema rejects is a plain 400, even when a stream was asked for.
    let rejected = post(
        &format!("{}/flow/streaming_greeting?stream=true", p.url("flows")),
        "application/json",
        r#"{"name":7}"#,
    );
    assert_error(&rejected, 400, "name");
}

#[test]
fn accept_event_stream_answers_sse_data_events_then_a_result_event() {
    let p = start(&[]);
    let reply = send(
        "POST",
        &format!("{}/flow/streaming_greeting", p.url("flows")),
        &[
            ("content-type", "application/json"),
            ("accept", "text/event-stream"),
        ],
        Some(r#"{"name":"Gus","interval_ms":0}"#),
    );
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(
        reply.headers["content-type"].starts_with("text/event-stream"),
        "{:?}",
        reply.headers
    );
    assert!(reply.text.ends_with("\n\n"), "{:?}", reply.text);
    let events: Vec<&str> = reply.text.split("\n\n").filter(|e| !e.is_empty()).collect();
    let (last, data) = events.split_last().expect("events");
    let chunks: Vec<Value> = data
        .iter()
        .map(|event| {
            let payload = event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {event:?}"));
            serde_json::from_str(payload).expect("data is JSON")
        })
        .collect();
    assert_eq!(words(&chunks), GREETING);
    let mut lines = last.lines();
    assert_eq!(lines.next(), Some("event: result"), "{last:?}");
    let payload = lines
        .next()
        .and_then(|l| l.strip_prefix("data: "))
        .unwrap_or_else(|| panic!("no data in {last:?}"));
    assert_eq!(
        serde_json::from_str::<Value>(payload).unwrap(),
        json!({"result": GREETING})
    );
}

#[test]
fn a_stream_in_flight_at_sigterm_completes_then_the_process_exits_0() {
    let mut p = start(&["--drain-deadline", "10s"]);
    // 8 words, 300 ms apart: about 2.1 s.
    let mut stream = post_streaming(
        &format!("{}/flow/streaming_greeting?stream=true", p.url("flows")),
        &[("content-type", "application/json")],
        r#"{"name":"Gus","interval_ms":300}"#,
    );
    assert_eq!(stream.status, 200);
    let first = stream.next_line().expect("first chunk");
    assert_eq!(
        serde_json::from_str::<Value>(&first).unwrap(),
        json!({"chunk": {"index": 0, "text": "Hello"}})
    );
    p.signal("TERM");
    p.wait_for_log("shutting down");
    let mut lines = vec![first];
    while let Some(line) = stream.next_line() {
        lines.push(line);
    }
    let values: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let (last, chunks) = values.split_last().unwrap();
    assert_eq!(last, &json!({"result": GREETING}), "{lines:?}");
    let chunks: Vec<Value> = chunks.iter().map(|c| c["chunk"].clone()).collect();
    assert_eq!(words(&chunks), GREETING);
    assert_eq!(p.wait_exit(EXIT_WAIT).code(), Some(0), "{}", p.stderr());
    let log = p.stderr();
    assert!(log.contains("reason=SIGTERM received"), "{log}");
    assert!(log.contains("outcome=Clean"), "{log}");
}

/// A JSON string input of about `len` bytes for `multi_server_flow`.
fn long_name(len: usize) -> String {
    json!("n".repeat(len)).to_string()
}

#[test]
fn a_body_under_the_1_mib_limit_is_accepted() {
    let p = start(&[]);
    let reply = run(p.url("flows"), "multi_server_flow", &long_name(600 * 1024));
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(
        reply.json["result"]
            .as_str()
            .is_some_and(|r| r.starts_with("Hello from multi-server, nnn")),
        "{:.200}",
        reply.text
    );
}

#[test]
fn a_body_over_the_limit_is_a_json_413() {
    let p = start(&[]);
    let reply = run(
        p.url("flows"),
        "multi_server_flow",
        &long_name(2 * 1024 * 1024),
    );
    assert_error(&reply, 413, "1 MiB");
    // Still serving.
    assert_eq!(
        run(p.url("flows"), "multi_server_flow", r#""Al""#).json["result"],
        "Hello from multi-server, Al!"
    );
}

#[test]
fn a_json_content_type_with_parameters_is_accepted() {
    let p = start(&[]);
    let reply = post(
        &format!("{}/flow/multi_server_flow", p.url("flows")),
        "application/json; charset=utf-8",
        r#""Zed""#,
    );
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json["result"], "Hello from multi-server, Zed!");
}
