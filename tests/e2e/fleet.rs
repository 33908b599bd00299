//! A fleet behind a real load balancer: HAProxy in front of three instances bound to
//! 127.0.0.2, 127.0.0.3 and 127.0.0.4 on the same ports (as three hosts would be), health
//! checking `/__readyz` every 100 ms and retrying only what never reached a server (a refused
//! connection). Clients (keep-alive and new connections, GET and POST) run through it while
//! every instance in turn is stopped with SIGTERM (a drain delay longer than the check
//! interval) and started again, then upgraded in place. Every request is accounted for.
//! The figures are printed (`cargo test ... fleet -- --nocapture`).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use multi_server_e2e::{Process, WAIT, eventually, get, post, temp_dir};

use super::bin;

const HOSTS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(127, 0, 0, 2),
    Ipv4Addr::new(127, 0, 0, 3),
    Ipv4Addr::new(127, 0, 0, 4),
];
const EXIT_WAIT: Duration = Duration::from_secs(20);

/// A port free on every host (for the flows API, then for the admin listener).
fn common_free_port(taken: &[u16]) -> u16 {
    for _ in 0..100 {
        let probe = TcpListener::bind((HOSTS[0], 0)).unwrap();
        let port = probe.local_addr().unwrap().port();
        if taken.contains(&port) {
            continue;
        }
        let all: Option<Vec<TcpListener>> = HOSTS[1..]
            .iter()
            .map(|host| TcpListener::bind((*host, port)).ok())
            .collect();
        if all.is_some() {
            return port;
        }
    }
    panic!("no port free on all of {HOSTS:?}");
}

struct Fleet {
    flows_port: u16,
    admin_port: u16,
}

impl Fleet {
    fn args(&self, host: Ipv4Addr) -> Vec<String> {
        [
            "--host",
            &host.to_string(),
            "--flows-ports",
            &self.flows_port.to_string(),
            "--flows-workers",
            "2",
            "--admin-host",
            &host.to_string(),
            "--admin-ports",
            &self.admin_port.to_string(),
            // Longer than HAProxy's check interval (100 ms) and its fall count: it stops
            // sending before this instance stops accepting.
            "--drain-delay",
            "600ms",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    fn start(&self, host: Ipv4Addr) -> Process {
        let args = self.args(host);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Process::start(bin(), &args)
    }

    fn admin(&self, host: Ipv4Addr) -> String {
        format!("http://{host}:{}", self.admin_port)
    }
}

/// Debian's `haproxy` (in /usr/sbin, which a non-root PATH may lack).
fn haproxy_bin() -> &'static str {
    if Path::new("/usr/sbin/haproxy").exists() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    }
}

/// `haproxy -c`: the configuration at `path` is valid.
fn haproxy_check(path: &Path) {
    let check = Command::new(haproxy_bin())
        .arg("-c")
        .arg("-f")
        .arg(path)
        .output()
        .expect("run haproxy -c");
    assert!(
        check.status.success(),
        "haproxy -c {}: {}",
        path.display(),
        String::from_utf8_lossy(&check.stderr)
    );
}

/// HAProxy in the foreground, stopped when dropped.
struct Haproxy {
    child: Child,
    stats: PathBuf,
    url: String,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Haproxy {
    fn start(dir: &Path, fleet: &Fleet) -> Haproxy {
        let frontend = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let stats = dir.join("haproxy.sock");
        let servers: String = HOSTS
            .iter()
            .enumerate()
            .map(|(i, host)| format!("    server s{i} {host}:{} check\n", fleet.flows_port))
            .collect();
        let config = format!(
            include_str!("../../deploy/haproxy/haproxy.cfg.in"),
            stats = stats.display(),
            frontend = format!("127.0.0.1:{frontend}"),
            servers = servers,
        );
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        haproxy_check(&path);
        let child = Command::new(haproxy_bin())
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("haproxy.log")).unwrap())
            .spawn()
            .expect("start haproxy");
        let haproxy = Haproxy {
            child,
            stats,
            url: format!("http://127.0.0.1:{frontend}"),
        };
        eventually("HAProxy's stats socket", || haproxy.try_stat().map(|_| ()));
        haproxy
    }

    /// `show stat` for the backend's servers: (name, status, requests).
    fn try_stat(&self) -> Option<Vec<(String, String, u64)>> {
        let mut socket = UnixStream::connect(&self.stats).ok()?;
        socket.write_all(b"show stat\n").ok()?;
        let mut text = String::new();
        socket.read_to_string(&mut text).ok()?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (px, sv, status, req) = (
            col("pxname")?,
            col("svname")?,
            col("status")?,
            col("req_tot")?,
        );
        Some(
            lines
                .map(|l| l.split(',').collect::<Vec<_>>())
                .filter(|f| f.len() > req && f[px] == "fleet" && f[sv].starts_with('s'))
                .map(|f| {
                    (
                        f[sv].to_owned(),
                        f[status].to_owned(),
                        f[req].parse().unwrap_or(0),
                    )
                })
                .collect(),
        )
    }

    fn stat(&self) -> Vec<(String, String, u64)> {
        self.try_stat().expect("HAProxy's stats")
    }

    fn wait_status(&self, server: usize, wanted: &str) {
        let name = format!("s{server}");
        eventually(&format!("HAProxy seeing {name} {wanted}"), || {
            self.stat()
                .iter()
                .any(|(n, s, _)| *n == name && s.starts_with(wanted))
                .then_some(())
        });
    }
}

/// One request's fate.
#[derive(Debug, Clone)]
struct Outcome {
    kind: &'static str,
    at: Instant,
    latency: Duration,
    error: Option<String>,
}

/// The clients: GET and POST, on keep-alive and on new connections, through HAProxy.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
}

impl Load {
    fn start(url: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for kind in [
            "get keep-alive",
            "post keep-alive",
            "get new connection",
            "post new connection",
        ] {
            for _ in 0..2 {
                let (stop, outcomes, url) = (stop.clone(), outcomes.clone(), url.to_owned());
                threads.push(thread::spawn(move || {
                    let agent = ureq::Agent::new_with_defaults();
                    let addr = multi_server_e2e::addr(&url);
                    while !stop.load(Ordering::Relaxed) {
                        let at = Instant::now();
                        let result = match kind {
                            "get keep-alive" => agent
                                .get(format!("{url}/greet"))
                                .call()
                                .map_err(|e| e.to_string())
                                .and_then(|mut r| {
                                    r.body_mut().read_to_string().map_err(|e| e.to_string())
                                })
                                .and_then(|b| if b.contains("Hello") { Ok(()) } else { Err(b) }),
                            "post keep-alive" => agent
                                .post(format!("{url}/flow/multi_server_flow"))
                                .header("content-type", "application/json")
                                .send("\"Fleet\"")
                                .map_err(|e| e.to_string())
                                .and_then(|mut r| {
                                    r.body_mut().read_to_string().map_err(|e| e.to_string())
                                })
                                .and_then(|b| {
                                    if b.contains("Hello from multi-server, Fleet!") {
                                        Ok(())
                                    } else {
                                        Err(b)
                                    }
                                }),
                            "get new connection" => once(addr, "GET", "/greet", "", "Hello"),
                            _ => once(
                                addr,
                                "POST",
                                "/flow/multi_server_flow",
                                "\"Fleet\"",
                                "Fleet!",
                            ),
                        };
                        outcomes.lock().unwrap().push(Outcome {
                            kind,
                            at,
                            latency: at.elapsed(),
                            error: result.err(),
                        });
                        thread::sleep(Duration::from_millis(3));
                    }
                }));
            }
        }
        Load {
            stop,
            threads,
            outcomes,
        }
    }

    fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        self.outcomes.lock().unwrap().clone()
    }
}

/// One request on a connection of its own: a 200 whose body holds `expect`, or what went wrong.
fn once(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    expect: &str,
) -> Result<(), String> {
    let headers = [
        ("Connection", "close"),
        ("Content-Type", "application/json"),
    ];
    let answer = multi_server_e2e::try_once(addr, method, path, &headers, body.as_bytes())?;
    let text = answer.text();
    if answer.status == 200 && text.contains(expect) {
        Ok(())
    } else {
        Err(format!(
            "{} {}",
            answer.status,
            text.lines().last().unwrap_or_default()
        ))
    }
}

fn worst(outcomes: &[Outcome], from: Instant, to: Instant) -> Duration {
    outcomes
        .iter()
        .filter(|o| o.at >= from && o.at <= to)
        .map(|o| o.latency)
        .max()
        .unwrap_or_default()
}

#[test]
fn a_fleet_behind_haproxy_restarts_and_upgrades_one_by_one_without_failing_a_request() {
    let flows_port = common_free_port(&[]);
    let admin_port = common_free_port(&[flows_port]);
    let fleet = Fleet {
        flows_port,
        admin_port,
    };
    let dir = temp_dir("fleet");
    let mut instances: Vec<Process> = HOSTS.iter().map(|host| fleet.start(*host)).collect();
    let haproxy = Haproxy::start(&dir, &fleet);
    for i in 0..HOSTS.len() {
        haproxy.wait_status(i, "UP");
    }
    let load = Load::start(&haproxy.url);
    thread::sleep(Duration::from_millis(300));

    // (a) Rolling restart: SIGTERM (readiness fails, HAProxy takes the instance out within
    // its check interval, then the drain delay ends and it drains), start again, wait until
    // HAProxy has it back.
    let restarts_began = Instant::now();
    let mut restart_worst = Vec::new();
    let mut phases = vec![(Instant::now(), "start".to_owned())];
    for (i, host) in HOSTS.iter().enumerate() {
        let began = Instant::now();
        phases.push((began, format!("restart of {host}")));
        instances[i].signal("TERM");
        haproxy.wait_status(i, "DOWN");
        let status = instances[i].wait_exit(EXIT_WAIT);
        assert!(
            status.success(),
            "{host}: {status:?}\n{}",
            instances[i].stderr()
        );
        instances[i] = fleet.start(*host);
        haproxy.wait_status(i, "UP");
        thread::sleep(Duration::from_millis(200));
        restart_worst.push(worst(&load.outcomes.lock().unwrap(), began, Instant::now()));
    }
    let restarts_took = restarts_began.elapsed();

    // (b) Rolling upgrade in place: no instance ever leaves HAProxy's pool.
    let mut successors = Vec::new();
    let mut upgrade_worst = Vec::new();
    for (i, host) in HOSTS.iter().enumerate() {
        let began = Instant::now();
        phases.push((began, format!("upgrade of {host}")));
        let admin = fleet.admin(*host);
        let answer = post(&format!("{admin}/__upgradez"), "application/json", "");
        assert_eq!(answer.status, 202, "{host}: {}", answer.json);
        let new_pid = answer.json["new_pid"].as_u64().unwrap();
        successors.push(multi_server_e2e::Adopted(u32::try_from(new_pid).unwrap()));
        eventually(&format!("{host} upgraded"), || {
            (get(&format!("{admin}/__serverz")).json["pid"] == new_pid).then_some(())
        });
        let status = instances[i].wait_exit(EXIT_WAIT);
        assert!(
            status.success(),
            "{host}: {status:?}\n{}",
            instances[i].stderr()
        );
        thread::sleep(Duration::from_millis(200));
        upgrade_worst.push(worst(&load.outcomes.lock().unwrap(), began, Instant::now()));
    }
    thread::sleep(Duration::from_millis(300));
    let outcomes = load.finish();
    let stats = haproxy.stat();

    let failed: Vec<(String, &Outcome)> = outcomes
        .iter()
        .filter(|o| o.error.is_some())
        .map(|o| {
            let phase = phases
                .iter()
                .rev()
                .find(|(at, _)| *at <= o.at)
                .map(|(_, p)| p.clone());
            (phase.unwrap_or_default(), o)
        })
        .collect();
    let total = outcomes.len();
    let shares: Vec<String> = stats
        .iter()
        .map(|(name, _, requests)| format!("{name} {requests}"))
        .collect();
    println!(
        "fleet: {total} requests, {} failed; per instance (HAProxy req_tot): {}; rolling restart {:?} \
         (worst latency per instance {:?}); rolling upgrade worst latency per instance {:?}",
        failed.len(),
        shares.join(", "),
        restarts_took,
        restart_worst,
        upgrade_worst
    );
    for kind in [
        "get keep-alive",
        "post keep-alive",
        "get new connection",
        "post new connection",
    ] {
        let n = outcomes.iter().filter(|o| o.kind == kind).count();
        println!("fleet: {kind}: {n}");
        assert!(n > 20, "{kind}: only {n} requests");
    }
    assert!(
        failed.is_empty(),
        "{} of {total} failed: {:#?}",
        failed.len(),
        &failed[..failed.len().min(20)]
    );
    assert!(
        stats.iter().all(|(_, _, requests)| *requests > 0),
        "{stats:?}"
    );
    assert!(
        restart_worst
            .iter()
            .chain(&upgrade_worst)
            .all(|w| *w < WAIT)
    );
    drop(successors);
}

#[test]
fn the_haproxy_recipe_is_valid() {
    let dir = temp_dir("haproxy-recipe");
    // The recipe's stats socket lives in /run/haproxy; check it with one of our own.
    let recipe = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/haproxy/haproxy.cfg"
    ))
    .unwrap();
    // The same settings as the template the fleet test runs, filled in for three hosts, so
    // the two files cannot drift apart.
    let filled = format!(
        include_str!("../../deploy/haproxy/haproxy.cfg.in"),
        stats = "/run/haproxy/admin.sock",
        frontend = ":80",
        servers = (1..=3)
            .map(|i| format!("    server host{i} 10.0.0.1{i}:3400 check\n"))
            .collect::<String>(),
    );
    let settings = |text: &str| -> Vec<String> {
        text.lines()
            .map(str::trim_end)
            .filter(|line| !line.is_empty() && !line.trim_start().starts_with('#'))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        settings(&recipe),
        settings(&filled),
        "deploy/haproxy/haproxy.cfg is haproxy.cfg.in filled in for three hosts"
    );
    let recipe = recipe.replace(
        "/run/haproxy/admin.sock",
        &dir.join("admin.sock").display().to_string(),
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, recipe).unwrap();
    haproxy_check(&path);
}
