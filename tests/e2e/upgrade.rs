//! In-place upgrade on the real binary: the process starts its successor with its listening
//! sockets, the successor takes over without one refused or failed request (probes on every
//! server, new connections and keep-alive), a slow request finishes on the old process, and
//! a new binary that fails (exits, or never gets ready) leaves the old one serving.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use multi_server_e2e::{Adopted, Process, TempDir, alive, eventually, get, post, temp_dir};
use serde_json::Value;

use super::bin;

const EXIT_WAIT: Duration = Duration::from_secs(20);

/// Clients that keep asking every server while an upgrade happens: one opening a new
/// connection per request, one on a keep-alive connection, per server.
struct Probes {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
    ok: Arc<Mutex<u64>>,
    failures: Arc<Mutex<Vec<String>>>,
}

impl Probes {
    fn start(urls: &[String]) -> Probes {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(Mutex::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for url in urls {
            for keep_alive in [false, true] {
                let (stop, ok, failures, url) =
                    (stop.clone(), ok.clone(), failures.clone(), url.clone());
                threads.push(thread::spawn(move || {
                    let agent = ureq::Agent::new_with_defaults();
                    while !stop.load(Ordering::Relaxed) {
                        let outcome = if keep_alive {
                            agent
                                .get(format!("{url}/__healthz"))
                                .call()
                                .map(|r| r.status().as_u16())
                                .map_err(|e| e.to_string())
                        } else {
                            fresh_get(&url)
                        };
                        match outcome {
                            Ok(200) => *ok.lock().unwrap() += 1,
                            Ok(status) => failures.lock().unwrap().push(format!("{url}: {status}")),
                            Err(err) => failures.lock().unwrap().push(format!("{url}: {err}")),
                        }
                        thread::sleep(Duration::from_millis(2));
                    }
                }));
            }
        }
        Probes {
            stop,
            threads,
            ok,
            failures,
        }
    }

    /// Stops them; how many requests succeeded, and what failed.
    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        let ok = *self.ok.lock().unwrap();
        let failures = self.failures.lock().unwrap().clone();
        (ok, failures)
    }
}

/// `GET /__healthz` on a connection of its own (refused and reset connections show here).
fn fresh_get(url: &str) -> Result<u16, String> {
    let addr = multi_server_e2e::addr(url);
    multi_server_e2e::try_once(addr, "GET", "/__healthz", &[("Connection", "close")], b"")
        .map(|answer| answer.status)
}

fn pid_of(admin: &str) -> u64 {
    get(&format!("{admin}/__serverz")).json["pid"]
        .as_u64()
        .unwrap_or_default()
}

fn upgrade_state(admin: &str) -> Value {
    get(&format!("{admin}/__serverz")).json["upgrade"].clone()
}

/// The dev servers and the admin listener.
fn start_dev(extra: &[&str]) -> Process {
    super::start_dev(&[&["--admin-ports", "0"][..], extra].concat())
}

#[test]
fn an_upgrade_under_load_refuses_nothing_and_the_successor_upgrades_again() {
    let mut p = start_dev(&[]);
    let urls: Vec<String> = ["flows", "reflection", "devui", "admin"]
        .iter()
        .map(|name| p.url(name).to_owned())
        .collect();
    let admin = p.url("admin").to_owned();
    let flows = p.url("flows").to_owned();
    let old_pid = u64::from(p.pid());
    let probes = Probes::start(&urls);
    thread::sleep(Duration::from_millis(200));

    // A slow request begun before the upgrade finishes on the old process.
    let slow = thread::spawn({
        let flows = flows.clone();
        move || get(&format!("{flows}/__test/slow?ms=1500"))
    });
    thread::sleep(Duration::from_millis(100));
    let answer = post(&format!("{admin}/__upgradez"), "application/json", "");
    assert_eq!(answer.status, 202, "{}", answer.json);
    let new_pid = answer.json["new_pid"].as_u64().expect("new_pid");
    let _successor = Adopted(u32::try_from(new_pid).unwrap());
    eventually("the new process answering", || {
        (pid_of(&admin) == new_pid).then_some(())
    });
    let slow = slow.join().unwrap();
    assert_eq!(slow.status, 200, "the slow request was cut: {}", slow.json);
    let status = p.wait_exit(EXIT_WAIT);
    assert!(status.success(), "old process: {status:?}\n{}", p.stderr());
    assert!(
        p.stderr().contains("upgrade: the new process is ready"),
        "{}",
        p.stderr()
    );

    // The successor upgrades again, through SIGUSR2 this time.
    thread::sleep(Duration::from_millis(200));
    let kill = std::process::Command::new("kill")
        .args(["-USR2", &new_pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let third = eventually("a third process answering", || {
        let pid = pid_of(&admin);
        (pid != new_pid && pid != old_pid).then_some(pid)
    });
    let _third = Adopted(u32::try_from(third).unwrap());
    eventually("the second process gone", || {
        (!alive(u32::try_from(new_pid).unwrap())).then_some(())
    });
    thread::sleep(Duration::from_millis(200));
    let (ok, failures) = probes.finish();
    assert!(
        failures.is_empty(),
        "{} failed of {}: {failures:#?}",
        failures.len(),
        ok + failures.len() as u64
    );
    assert!(ok > 100, "only {ok} probe requests");
}

/// A script standing in for a new binary that fails, and the directory that holds it.
fn script(label: &str, body: &str) -> (TempDir, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir(label);
    let path = dir.join("new-binary");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, path)
}

#[test]
fn a_new_binary_that_exits_or_hangs_leaves_the_old_process_serving() {
    // The real binary, never ready in time (a required server's startup hook takes 3 s) while
    // its other servers serve on the sockets: stopped, it must not shut them under the old
    // process.
    let serves_unready = format!("exec '{}' \"$@\" --test-slow-startup 3s", bin());
    for (label, body, timeout, why) in [
        (
            "serves but is not ready",
            serves_unready.as_str(),
            "1s",
            "not ready within",
        ),
        (
            "exits",
            "echo 'cannot open database' >&2; exit 1",
            "30s",
            "exited",
        ),
        ("hangs", "exec sleep 60", "1s", "not ready within"),
    ] {
        let (_dir, binary) = script(label, body);
        let binary = binary.to_str().unwrap();
        let mut p = start_dev(&["--upgrade-binary", binary, "--upgrade-timeout", timeout]);
        let admin = p.url("admin").to_owned();
        let urls: Vec<String> = ["flows", "admin"]
            .iter()
            .map(|n| p.url(n).to_owned())
            .collect();
        let probes = Probes::start(&urls);
        let answer = post(&format!("{admin}/__upgradez"), "application/json", "");
        assert_eq!(answer.status, 202, "{}", answer.json);
        let child = u32::try_from(answer.json["new_pid"].as_u64().unwrap()).unwrap();
        let _child = Adopted(child);
        let state = eventually("the upgrade failing", || {
            let state = upgrade_state(&admin);
            (state["state"] == "failed").then_some(state)
        });
        assert!(
            state["error"].as_str().unwrap().contains(why),
            "{label}: {state}"
        );
        eventually("the failed new process gone", || {
            (!alive(child)).then_some(())
        });
        // Still the same process, serving; and it can try again.
        assert_eq!(pid_of(&admin), u64::from(p.pid()));
        let again = post(&format!("{admin}/__upgradez"), "application/json", "");
        assert_eq!(
            again.status, 202,
            "{label}: a failed upgrade must not block the next: {}",
            again.json
        );
        let second = u32::try_from(again.json["new_pid"].as_u64().unwrap()).unwrap();
        let _second = Adopted(second);
        eventually("the second failure", || {
            let state = upgrade_state(&admin);
            (state["state"] == "failed" && state["pid"] == second).then_some(())
        });
        let (ok, failures) = probes.finish();
        assert!(failures.is_empty(), "{label}: {failures:#?}");
        assert!(ok > 10, "{label}: only {ok} probe requests");
        assert!(
            p.stderr().contains("upgrade failed; still serving"),
            "{}",
            p.stderr()
        );
        p.signal("TERM");
        assert!(p.wait_exit(EXIT_WAIT).success(), "{}", p.stderr());
    }
}

#[test]
fn upgrade_is_an_admin_change() {
    let p = start_dev(&[]);
    let admin = p.url("admin");
    let get = multi_server_e2e::request("GET", &format!("{admin}/__upgradez"));
    assert_eq!(get.status, 405);
    let cross_site = multi_server_e2e::send(
        "POST",
        &format!("{admin}/__upgradez"),
        &[("Origin", "http://evil.example")],
        Some(""),
    );
    assert_eq!(cross_site.status, 403, "{}", cross_site.json);
    let proxied = multi_server_e2e::send(
        "POST",
        &format!("{admin}/__upgradez"),
        &[("X-Forwarded-For", "203.0.113.9")],
        Some(""),
    );
    assert_eq!(proxied.status, 403, "{}", proxied.json);
    assert!(upgrade_state(admin).is_null());
}
