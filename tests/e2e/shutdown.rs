//! Signals, quit, drain deadline, forced exit, hooks and failure policy, on the real binary.

use std::thread;
use std::time::Duration;

use multi_server_e2e::{get, post, try_get};

use super::{start, wait_in_flight};

const EXIT_WAIT: Duration = Duration::from_secs(20);

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn sigterm_lets_the_in_flight_request_finish_then_exits_0() {
    let mut p = start(&["--drain-deadline", "10s"]);
    let slow = format!("{}/__test/slow?ms=1200", p.url("flows"));
    let client = thread::spawn(move || get(&slow));
    wait_in_flight(&p, "flows", "flows", 1);
    p.signal("TERM");
    let reply = client.join().unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json["slept_ms"], 1200);
    assert_eq!(p.wait_exit(EXIT_WAIT).code(), Some(0), "{}", p.stderr());
    let log = p.stderr();
    assert!(log.contains("reason=SIGTERM received"), "{log}");
    assert!(log.contains("outcome=Clean"), "{log}");
}

#[test]
fn a_drain_deadline_shorter_than_the_request_cuts_it_logs_it_and_exits_3() {
    let mut p = start(&["--drain-deadline", "300ms"]);
    let slow = format!("{}/__test/slow?ms=10000", p.url("flows"));
    let client = thread::spawn(move || try_get(&slow).map(|r| r.status));
    wait_in_flight(&p, "flows", "flows", 1);
    p.signal("TERM");
    let status = p.wait_exit(EXIT_WAIT);
    assert_eq!(status.code(), Some(3), "{}", p.stderr());
    assert!(
        client.join().unwrap().is_err(),
        "the cut request must not look answered"
    );
    let log = p.stderr();
    assert!(
        log.contains("drain deadline passed: requests cut") && log.contains("cut=1"),
        "{log}"
    );
    assert!(
        log.contains("path=\"/__test/slow\" status=\"aborted\" reason=\"drain deadline\""),
        "{log}"
    );
    assert!(
        log.contains("error: drain deadline (300ms) cut 1 in-flight request(s)"),
        "{log}"
    );
}

#[test]
fn a_second_signal_forces_exit_with_128_plus_signal() {
    let mut p = start(&["--drain-deadline", "60s"]);
    let slow = format!("{}/__test/slow?ms=30000", p.url("flows"));
    let _client = thread::spawn(move || try_get(&slow).map(|r| r.status));
    wait_in_flight(&p, "flows", "flows", 1);
    p.signal("TERM");
    p.wait_for_log("shutting down");
    p.signal("INT");
    let status = p.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(130), "{}", p.stderr());
    assert!(
        p.stderr().contains("SIGINT received again: forced exit"),
        "{}",
        p.stderr()
    );
}

#[test]
fn quit_by_post_shuts_down_gracefully() {
    let mut p = start(&[]);
    let reply = post(
        &format!("{}/__quitquitquitz", p.url("flows")),
        "application/json",
        "",
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json, serde_json::json!({"status": "OK"}));
    assert_eq!(p.wait_exit(EXIT_WAIT).code(), Some(0), "{}", p.stderr());
    assert!(p.stderr().contains("quit requested on server 'flows'"));
}

#[test]
fn sigint_and_sighup_are_graceful_too() {
    for signal in ["INT", "HUP"] {
        let mut p = start(&[]);
        assert_eq!(get(&format!("{}/greet", p.url("flows"))).status, 200);
        p.signal(signal);
        assert_eq!(
            p.wait_exit(EXIT_WAIT).code(),
            Some(0),
            "SIG{signal}: {}",
            p.stderr()
        );
        assert!(p.stderr().contains(&format!("SIG{signal} received")));
    }
}

#[test]
fn hooks_run_exactly_once_each() {
    let mut p = start(&[]);
    assert_eq!(get(&format!("{}/greet", p.url("flows"))).status, 200);
    p.signal("TERM");
    assert_eq!(p.wait_exit(EXIT_WAIT).code(), Some(0));
    let log = p.stderr();
    assert_eq!(count(&log, "startup hook server=\"flows\""), 1, "{log}");
    assert_eq!(count(&log, "shutdown hook server=\"flows\""), 1, "{log}");
    let startup = log.find("startup hook").unwrap();
    let serving = log.find("serving server=\"flows\"").unwrap();
    let shutdown = log.find("shutdown hook").unwrap();
    assert!(startup < serving && serving < shutdown, "{log}");
}

#[test]
fn a_failing_startup_hook_stops_the_others_cleanly_and_exits_1() {
    let mut p = start(&["--test-fail-startup-hook-after", "500ms"]);
    assert_eq!(get(&format!("{}/greet", p.url("flows"))).status, 200);
    let status = p.wait_exit(EXIT_WAIT);
    assert_eq!(status.code(), Some(1), "{}", p.stderr());
    let log = p.stderr();
    assert!(
        log.contains("error: server 'faulty': startup hook failed: injected startup hook failure"),
        "{log}"
    );
    assert!(log.contains("reason=server 'faulty' failed"), "{log}");
    assert_eq!(count(&log, "shutdown hook server=\"flows\""), 1, "{log}");
    assert_eq!(count(&log, "shutdown hook server=\"faulty\""), 0, "{log}");
}

#[test]
fn readiness_fails_at_once_while_the_drain_delay_keeps_serving() {
    let mut p = start(&["--drain-delay", "1500ms"]);
    let flows = p.url("flows").to_owned();
    assert_eq!(get(&format!("{flows}/__readyz")).status, 200);
    p.signal("TERM");
    p.wait_for_log("shutting down");
    let ready = get(&format!("{flows}/__readyz"));
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json["state"], "draining");
    assert_eq!(ready.json["ready"], false);
    let greet = get(&format!("{flows}/greet"));
    assert_eq!(greet.status, 200, "still serving during the delay");
    assert_eq!(
        greet.headers.get("connection").map(String::as_str),
        Some("close"),
        "keep-alive clients are asked to move away during the delay: {:?}",
        greet.headers
    );
    assert_eq!(p.wait_exit(EXIT_WAIT).code(), Some(0), "{}", p.stderr());
}
