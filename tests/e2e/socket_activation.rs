//! Socket activation: the binary started by `systemd-socket-activate` serves every server on
//! the sockets it inherits (`LISTEN_FDS`), matched by order or by `LISTEN_FDNAMES`, and says
//! clearly when their number does not fit the servers.
//!
//! Needs `systemd-socket-activate` (Debian package `systemd`; CI installs it). It listens on
//! every `-l` address, waits for the first connection, then execs the binary in its own place
//! (same pid, so `LISTEN_PID` fits), passing on only `PATH`, `HOME`, `TERM`, `USER` and `-E`
//! variables.

use std::process::Command;
use std::time::Duration;

use multi_server_e2e::{Process, free_ports, get, try_get};

use super::bin;

const TOOL: &str = "systemd-socket-activate";

/// Panics with what to install when the tool is missing.
fn require_tool() {
    let found = Command::new(TOOL)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        found,
        "{TOOL} not found: install Debian's `systemd` package (apt-get install -y systemd); \
         CI installs it in .ci/run"
    );
}

/// The dev-mode flags: three servers (flows, reflection, devui), the reflection one at once.
const DEV: &[&str] = &["--dev", "--reflection-delay", "0s", "--flows-workers", "2"];

/// Starts the binary under `systemd-socket-activate` on `n` free loopback ports (one `-l` per
/// port), with `extra` options for the tool, then the binary's `args`, and waits until the tool
/// listens (before that a connection would be refused). Returns the process and the ports.
///
/// A port taken by a parallel test between the check and the tool's bind makes the tool exit;
/// then it starts again on other ports.
fn activated(n: usize, extra: &[&str], args: &[&str]) -> (Process, Vec<u16>) {
    require_tool();
    for _ in 0..5 {
        let ports = free_ports(n);
        let listen: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut all: Vec<&str> = Vec::new();
        for address in &listen {
            all.extend(["-l", address.as_str()]);
        }
        // The tool hands its child a minimal environment: what the binary needs goes with -E.
        all.extend(["-E", "RUST_LOG=info", "-E", "GENKIT_TELEMETRY_SERVER="]);
        all.extend_from_slice(extra);
        all.push(bin());
        all.extend_from_slice(args);
        let p = Process::spawn(TOOL, &all, &[]);
        let listening = multi_server_e2e::eventually("systemd-socket-activate listening", || {
            let log = p.stderr();
            if log.contains("Failed") {
                return Some(false);
            }
            ports
                .iter()
                .all(|port| log.contains(&format!("Listening on 127.0.0.1:{port}")))
                .then_some(true)
        });
        if listening {
            return (p, ports);
        }
    }
    panic!("{TOOL} could not listen on free ports five times in a row");
}

/// The first connection makes the tool exec the binary; this request waits in the backlog
/// of the inherited socket until the binary accepts it.
fn activate(p: &mut Process, first_port: u16) {
    let reply = get(&format!("http://127.0.0.1:{first_port}/__healthz"));
    assert_eq!(reply.status, 200, "{}", p.stderr());
    p.wait_banner();
}

fn assert_serves_on(p: &Process, expected: &[(&str, u16)]) {
    for (server, port) in expected {
        let url = format!("http://127.0.0.1:{port}");
        assert_eq!(p.url(server), url, "banner: {}", p.stdout());
        let reply = get(&format!("{url}/__healthz"));
        assert_eq!(reply.status, 200, "{server} on {url}");
        assert_eq!(reply.json["status"], "ok");
    }
    // Every server answers for the same process, which bound nothing itself.
    let info = get(&format!("{}/__serverz", p.url("flows"))).json;
    assert_eq!(info["pid"].as_u64(), Some(u64::from(p.pid())), "{info}");
    for (server, port) in expected {
        let found = info["servers"]
            .as_array()
            .expect("servers")
            .iter()
            .find(|s| s["name"] == *server)
            .unwrap_or_else(|| panic!("{server} missing in {info}"));
        assert_eq!(found["state"], "serving", "{found}");
        assert!(
            found["address"]
                .as_str()
                .is_some_and(|a| a.ends_with(&format!(":{port}"))),
            "{found}"
        );
    }
}

fn stop_cleanly(mut p: Process) {
    p.signal("TERM");
    let status = p.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", p.stderr());
}

#[test]
fn serves_every_server_on_sockets_inherited_by_order() {
    let (mut p, ports) = activated(4, &[], DEV);
    activate(&mut p, ports[0]);
    // By order: the n-th server added gets the n-th socket.
    assert_serves_on(
        &p,
        &[
            ("flows", ports[0]),
            ("reflection", ports[1]),
            ("devui", ports[2]),
            ("admin", ports[3]),
        ],
    );
    assert!(
        !p.stderr().contains("LISTEN_FDS"),
        "no complaint about the sockets: {}",
        p.stderr()
    );
    stop_cleanly(p);
}

#[test]
fn matches_named_sockets_to_servers_whatever_their_order() {
    // The sockets come devui, flows, reflection; the servers are added flows, reflection,
    // devui, admin. Only matching by name puts each on its own socket; admin, with no socket
    // of its name, binds its own port.
    let (mut p, ports) = activated(3, &["--fdname=devui:flows:reflection"], DEV);
    activate(&mut p, ports[1]);
    assert_serves_on(
        &p,
        &[
            ("devui", ports[0]),
            ("flows", ports[1]),
            ("reflection", ports[2]),
        ],
    );
    stop_cleanly(p);
}

#[test]
fn too_few_sockets_is_one_clear_error_and_exit_1() {
    let (mut p, ports) = activated(2, &[], DEV);
    // Triggers the exec; the binary refuses to start, so this connection is closed unanswered.
    let _ = try_get(&format!("http://127.0.0.1:{}/__healthz", ports[0]));
    let log = assert_one_mismatch_error(&mut p, "2 socket(s) inherited but 4 server(s)");
    assert!(!log.contains("serving"), "no server may start: {log}");
    assert!(p.stdout().is_empty(), "no banner: {}", p.stdout());
}

#[test]
fn too_many_sockets_is_one_clear_error_and_exit_1() {
    // Without dev mode there are two servers (flows, admin) for three sockets.
    let (mut p, ports) = activated(3, &[], &["--flows-workers", "2"]);
    let _ = try_get(&format!("http://127.0.0.1:{}/__healthz", ports[0]));
    assert_one_mismatch_error(&mut p, "3 socket(s) inherited but 2 server(s)");
}

/// The process exits 1 with exactly one `error:` line, naming LISTEN_FDS and `detail`;
/// returns the log.
fn assert_one_mismatch_error(p: &mut Process, detail: &str) -> String {
    let status = p.wait_exit(Duration::from_secs(20));
    let log = p.stderr();
    assert_eq!(status.code(), Some(1), "{log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(
        errors[0].contains("LISTEN_FDS") && errors[0].contains(detail),
        "{}",
        errors[0]
    );
    log
}
