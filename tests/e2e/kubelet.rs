//! Plays the kubelet (and the endpoint controller behind it) during a pod termination:
//! readiness is polled, clients keep sending, SIGTERM arrives. Readiness must fail at once,
//! requests must still be served for the whole drain delay (traffic takes that long to move
//! away), and the process must exit well before the grace period runs out — with no request
//! lost among those sent before the listeners closed.
//!
//! Each request is a fresh connection with `Connection: close`, written by hand, so a refused
//! connection (expected once the listeners close) is told apart from a failed request.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use multi_server_e2e::get;

use super::start;

const DRAIN_DELAY: Duration = Duration::from_millis(1500);
const DRAIN_DEADLINE: Duration = Duration::from_secs(2);
/// The grace period of this simulated pod: delay + deadline + a margin.
const GRACE: Duration = DRAIN_DELAY
    .saturating_add(DRAIN_DEADLINE)
    .saturating_add(Duration::from_secs(1));
/// How soon after SIGTERM readiness must answer 503.
const READINESS_FLIP: Duration = Duration::from_millis(100);
/// Clock slack around the moment the listeners close (signal delivery, scheduling).
const SLACK: Duration = Duration::from_millis(100);
const CLIENTS: usize = 4;
/// Upper bound per client, whatever happens.
const MAX_REQUESTS: usize = 3000;
const MAX_LOAD_TIME: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Status(u16),
    Refused,
    /// Any other transport error: reset, timeout, a truncated answer.
    Error(String),
}

#[derive(Debug, Clone)]
struct Sample {
    /// When the request was sent, from the test's start.
    sent: Duration,
    latency: Duration,
    outcome: Outcome,
}

/// `GET path` on a fresh connection, read to the end.
fn raw_get(addr: SocketAddr, path: &str) -> Outcome {
    let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(stream) => stream,
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Outcome::Refused;
        }
        Err(err) => return Outcome::Error(format!("connect: {err}")),
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    if let Err(err) = stream.write_all(request.as_bytes()) {
        return Outcome::Error(format!("write: {err}"));
    }
    let mut answer = Vec::new();
    if let Err(err) = stream.read_to_end(&mut answer) {
        return Outcome::Error(format!("read: {err} after {} bytes", answer.len()));
    }
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    match status {
        Some(code) => Outcome::Status(code),
        None => Outcome::Error(format!("no HTTP answer: {text:?}")),
    }
}

/// Sends `GET path` in a loop until `stop`, recording every request.
fn load(
    addr: SocketAddr,
    path: &'static str,
    start: Instant,
    stop: Arc<AtomicBool>,
    pause: Duration,
) -> thread::JoinHandle<Vec<Sample>> {
    thread::spawn(move || {
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed)
            && samples.len() < MAX_REQUESTS
            && start.elapsed() < MAX_LOAD_TIME
        {
            let sent = start.elapsed();
            let outcome = raw_get(addr, path);
            samples.push(Sample {
                sent,
                latency: start.elapsed() - sent,
                outcome,
            });
            thread::sleep(pause);
        }
        samples
    })
}

#[test]
fn sigterm_fails_readiness_at_once_serves_through_the_drain_delay_and_exits_in_time() {
    let delay = format!("{}ms", DRAIN_DELAY.as_millis());
    let deadline = format!("{}ms", DRAIN_DEADLINE.as_millis());
    let mut p = start(&["--drain-delay", &delay, "--drain-deadline", &deadline]);
    let base = p.url("flows").to_owned();
    let addr: SocketAddr = base
        .strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .expect("flows address");

    // The kubelet's readiness probe: the pod only gets traffic once it says ready.
    multi_server_e2e::eventually("readiness 200", || {
        (get(&format!("{base}/__readyz")).status == 200).then_some(())
    });

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            load(
                addr,
                "/greet",
                start,
                Arc::clone(&stop),
                Duration::from_millis(2),
            )
        })
        .collect();
    let probe = load(
        addr,
        "/__readyz",
        start,
        Arc::clone(&stop),
        Duration::from_millis(5),
    );
    thread::sleep(Duration::from_millis(400));

    let term = start.elapsed();
    p.signal("TERM");
    let remaining = GRACE.saturating_sub(start.elapsed() - term);
    let status = p.wait_exit(remaining);
    let exited = start.elapsed() - term;
    stop.store(true, Ordering::Relaxed);
    let requests: Vec<Sample> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client thread"))
        .collect();
    let probes = probe.join().expect("probe thread");
    let log = p.stderr();
    assert_eq!(status.code(), Some(0), "{log}");

    // Readiness: 200 before SIGTERM, 503 within READINESS_FLIP after it, and never 200 again.
    let flipped = probes
        .iter()
        .find(|s| s.outcome == Outcome::Status(503))
        .unwrap_or_else(|| panic!("readiness never answered 503: {probes:?}"));
    let flip_after = (flipped.sent + flipped.latency).saturating_sub(term);
    assert!(
        flip_after <= READINESS_FLIP,
        "readiness answered 503 only {flip_after:?} after SIGTERM"
    );
    assert!(
        probes
            .iter()
            .filter(|s| s.sent < term)
            .all(|s| s.outcome == Outcome::Status(200)),
        "readiness failed before SIGTERM: {probes:?}"
    );
    let late_200: Vec<&Sample> = probes
        .iter()
        .filter(|s| s.sent > flipped.sent && s.outcome == Outcome::Status(200))
        .collect();
    assert!(
        late_200.is_empty(),
        "readiness went back to 200: {late_200:?}"
    );

    // Requests: every one sent before the listeners closed (SIGTERM + drain delay; `term` is
    // taken before the signal is sent, so the real moment is a little later) got its 200.
    // After that, no real client sends any (the endpoint is long gone); a new connection is
    // refused, or, in the few milliseconds while the frameworks' accept loops stop, reset
    // before any answer: both unanswered and safe to retry, counted apart.
    let closing = term + DRAIN_DELAY;
    let served_in_delay = requests
        .iter()
        .filter(|s| {
            s.sent > term + SLACK
                && s.sent + s.latency < closing - SLACK
                && s.outcome == Outcome::Status(200)
        })
        .count();
    let (before, after): (Vec<&Sample>, Vec<&Sample>) =
        requests.iter().partition(|s| s.sent < closing);
    let unanswered_reset = |s: &Sample| matches!(&s.outcome, Outcome::Error(e) if e.starts_with("read: ") && e.ends_with("after 0 bytes"));
    let refused = after
        .iter()
        .filter(|s| s.outcome == Outcome::Refused)
        .count();
    let reset = after.iter().filter(|s| unanswered_reset(s)).count();
    let failed: Vec<&&Sample> = before
        .iter()
        .filter(|s| s.outcome != Outcome::Status(200))
        .chain(after.iter().filter(|s| {
            !matches!(s.outcome, Outcome::Status(200) | Outcome::Refused) && !unanswered_reset(s)
        }))
        .collect();
    let ok = requests
        .iter()
        .filter(|s| s.outcome == Outcome::Status(200))
        .count();
    let worst = before.iter().map(|s| s.latency).max().unwrap_or_default();
    println!(
        "kubelet: {} requests sent, {} before the listeners closed; {ok} ok, {} failed; after \
         close {refused} refused and {reset} reset unanswered (expected); {served_in_delay} \
         served during the drain delay; readiness 503 {flip_after:?} after SIGTERM; exit \
         {exited:?} after SIGTERM (grace {GRACE:?}); worst latency before close {worst:?}",
        requests.len(),
        before.len(),
        failed.len(),
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}\n{log}");
    assert!(
        served_in_delay > 10,
        "requests must be served during the drain delay, got {served_in_delay}"
    );
    assert!(
        exited >= DRAIN_DELAY,
        "exited {exited:?} after SIGTERM, before the drain delay ended"
    );
    assert!(log.contains("reason=SIGTERM received"), "{log}");
}
