//! systemd's service notifications on the real binary: the test owns the notify socket (a Unix
//! datagram socket, as systemd does for a `Type=notify` unit), sets `NOTIFY_SOCKET` and
//! `WATCHDOG_USEC`, and reads what the process says, in order, across start, watchdog ticks
//! and SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use multi_server_e2e::{Process, TempDir, temp_dir};

use super::bin;

/// Every datagram received until `until` says stop (or 20 s pass), each with its arrival.
fn collect(socket: UnixDatagram, stop: mpsc::Receiver<()>) -> Vec<(Instant, String)> {
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match socket.recv(&mut buf) {
            Ok(n) => got.push((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            )),
            Err(_) => {
                if stop.try_recv().is_ok() {
                    break;
                }
            }
        }
    }
    got
}

/// A stand-in for systemd's notify socket, read on a thread of its own.
struct Notifications {
    /// Holds the socket; goes with it.
    _dir: TempDir,
    path: String,
    stop: mpsc::Sender<()>,
    reader: thread::JoinHandle<Vec<(Instant, String)>>,
}

impl Notifications {
    fn listen(label: &str) -> Notifications {
        let dir = temp_dir(label);
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        let (stop, stop_rx) = mpsc::channel();
        let reader = thread::spawn(move || collect(socket, stop_rx));
        Notifications {
            path: path.to_str().unwrap().to_owned(),
            _dir: dir,
            stop,
            reader,
        }
    }

    /// Every line received, with when its datagram came.
    fn finish(self) -> Vec<(Instant, String)> {
        self.stop.send(()).unwrap();
        let got = self.reader.join().unwrap();
        got.iter()
            .flat_map(|(at, d)| d.lines().map(|l| (*at, l.to_owned())).collect::<Vec<_>>())
            .collect()
    }
}

#[test]
fn ready_status_watchdog_and_stopping_reach_systemd_in_order() {
    let notify = Notifications::listen("notify");
    let path_text = notify.path.clone();
    // A 400 ms watchdog: a heartbeat every 200 ms.
    let mut p = Process::start_with_env(
        bin(),
        &["--flows-ports", "0", "--drain-delay", "300ms"],
        &[("NOTIFY_SOCKET", &path_text), ("WATCHDOG_USEC", "400000")],
    );
    let started = Instant::now();
    thread::sleep(Duration::from_millis(1100));
    p.signal("TERM");
    assert!(p.wait_exit(Duration::from_secs(20)).success());
    thread::sleep(Duration::from_millis(100));
    let lines: Vec<String> = notify.finish().into_iter().map(|(_, l)| l).collect();
    let position = |needle: &str| lines.iter().position(|l| l == needle);
    let ready = position("READY=1").unwrap_or_else(|| panic!("no READY=1 in {lines:#?}"));
    let stopping = position("STOPPING=1").unwrap_or_else(|| panic!("no STOPPING=1 in {lines:#?}"));
    assert_eq!(
        lines.iter().filter(|l| *l == "READY=1").count(),
        1,
        "{lines:#?}"
    );
    assert_eq!(
        lines.iter().filter(|l| *l == "STOPPING=1").count(),
        1,
        "{lines:#?}"
    );
    assert!(ready < stopping, "{lines:#?}");
    // READY comes with the status that every server serves.
    let status_before_ready = lines[..ready]
        .iter()
        .rev()
        .find(|l| l.starts_with("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS before READY: {lines:#?}"));
    assert!(
        status_before_ready.starts_with("STATUS=live: ")
            && status_before_ready.contains("flows serving 127.0.0.1:")
            && status_before_ready.contains("admin serving 127.0.0.1:"),
        "{status_before_ready}"
    );
    // Heartbeats at about 200 ms while serving: 1.1 s gives four or more.
    let beats = lines[ready..stopping]
        .iter()
        .filter(|l| *l == "WATCHDOG=1")
        .count();
    assert!(
        beats >= 3,
        "{beats} heartbeats in {:?}: {lines:#?}",
        started.elapsed()
    );
    // Heartbeats go on through the drain, and the last word is the stop.
    let after: Vec<&String> = lines[stopping..].iter().collect();
    assert!(
        after.iter().any(|l| l.starts_with("STATUS=draining: ")),
        "{after:#?}"
    );
    assert!(
        after.iter().any(|l| *l == "WATCHDOG=1"),
        "beats in the 300 ms drain delay: {after:#?}"
    );
    let last = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("STATUS="))
        .unwrap();
    assert!(last.starts_with("STATUS=stopped: "), "{last}");
}

#[test]
fn an_upgrade_under_systemd_hands_over_the_main_pid() {
    let notify = Notifications::listen("notify-upgrade");
    let path_text = notify.path.clone();
    // As systemd starts it: WATCHDOG_PID names the service's process (the shell execs the
    // binary, so `$$` is its pid).
    let mut p = Process::start_with_env(
        "sh",
        &[
            "-c",
            r#"WATCHDOG_PID=$$ exec "$0" "$@""#,
            bin(),
            "--flows-ports",
            "0",
            "--admin-ports",
            "0",
        ],
        &[("NOTIFY_SOCKET", &path_text), ("WATCHDOG_USEC", "400000")],
    );
    let admin = p.url("admin").to_owned();
    p.signal("USR2");
    let new_pid = multi_server_e2e::eventually("the new process answering", || {
        let pid = multi_server_e2e::get(&format!("{admin}/__serverz")).json["pid"].as_u64()?;
        (pid != u64::from(p.pid())).then_some(pid)
    });
    let successor = multi_server_e2e::Adopted(u32::try_from(new_pid).unwrap());
    assert!(
        p.wait_exit(Duration::from_secs(20)).success(),
        "{}",
        p.stderr()
    );
    let old_gone = Instant::now();
    // Heartbeats of the new process alone: 200 ms apart.
    thread::sleep(Duration::from_millis(700));
    let stopped_new = Instant::now();
    drop(successor);
    thread::sleep(Duration::from_millis(200));
    let lines = notify.finish();
    let main_pid = lines
        .iter()
        .position(|(_, l)| *l == format!("MAINPID={new_pid}"))
        .unwrap_or_else(|| panic!("no MAINPID={new_pid}: {lines:#?}"));
    // Both said READY=1, the new one before the old handed over.
    let readies: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, (_, l))| l == "READY=1")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(readies.len(), 2, "{lines:#?}");
    assert!(readies[1] < main_pid, "{lines:#?}");
    // After MAINPID= the old process says nothing (a STOPPING=1 from it would stop the
    // unit): until the new process is stopped, no stop and no draining status at all.
    let before_stop: Vec<&String> = lines[main_pid..]
        .iter()
        .filter(|(at, _)| *at < stopped_new)
        .map(|(_, l)| l)
        .collect();
    assert!(
        !before_stop.iter().any(|l| *l == "STOPPING=1"
            || l.starts_with("STATUS=draining")
            || l.starts_with("STATUS=stopped")),
        "{lines:#?}"
    );
    // The new process beats on its own, though WATCHDOG_PID named the old one.
    let beats = lines[main_pid..]
        .iter()
        .filter(|(at, l)| *at > old_gone && *at < stopped_new && l == "WATCHDOG=1")
        .count();
    assert!(
        beats >= 2,
        "{beats} heartbeats of the new process: {lines:#?}"
    );
}

#[test]
fn the_deploy_units_pass_systemd_analyze_verify() {
    // The shipped units, with ExecStart pointing at the binary under test (verify checks that
    // the command exists and is executable).
    let dir = temp_dir("units");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/systemd");
    let mut units = Vec::new();
    for name in ["multi-server.service", "multi-server.socket"] {
        let text = std::fs::read_to_string(root.join(name)).unwrap();
        let text = text.replace("/usr/local/bin/multi-server", bin());
        std::fs::write(dir.join(name), text).unwrap();
        units.push(dir.join(name));
    }
    let service = std::fs::read_to_string(&units[0]).unwrap();
    for line in [
        "Type=notify",
        "NotifyAccess=all",
        "WatchdogSec=",
        "ExecReload=/bin/kill -USR2 $MAINPID",
    ] {
        assert!(
            service.lines().any(|l| l.starts_with(line)),
            "{line} in the unit"
        );
    }
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .expect("systemd-analyze (Debian package systemd; tests/run.sh installs it)");
    let said = String::from_utf8_lossy(&out.stderr);
    // An unknown key or a bad value is only a warning (exit 0): none about these units.
    let ours: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("multi-server."))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {}{said}",
        String::from_utf8_lossy(&out.stdout)
    );
}
