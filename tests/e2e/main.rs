//! End-to-end tests: the real `multi-server` binary (built with `test-faults`), ephemeral
//! ports, real HTTP, real signals. Each test owns its process and kills it on drop.

mod conformance;
mod devui;
mod endpoints;
mod faults;
mod fleet;
mod flows_api;
mod hostile;
mod kubelet;
mod metrics;
mod ports;
mod reflection;
mod reflection_v2;
mod shutdown;
mod socket_activation;
mod systemd;
mod upgrade;

/// The binary under test: the one cargo built, or `MULTI_SERVER_E2E_BIN` (to run the suite
/// against another build, e.g. an older commit's, and see which tests it fails).
fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("MULTI_SERVER_E2E_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_multi-server").to_owned())
    })
}

/// Starts the binary with the flows API on an ephemeral port, plus `args`.
fn start(args: &[&str]) -> multi_server_e2e::Process {
    let mut all = vec!["--flows-ports", "0", "--flows-workers", "2"];
    all.extend_from_slice(args);
    multi_server_e2e::Process::start(bin(), &all)
}

/// Starts the binary in dev mode: the reflection server on an ephemeral port at once, the flows
/// API on an ephemeral port, plus `args`. No telemetry server unless `env` names one.
fn start_dev(args: &[&str]) -> multi_server_e2e::Process {
    start_dev_env(args, &[])
}

/// As [`start_dev`], with extra environment variables (they win over the defaults here).
fn start_dev_env(args: &[&str], env: &[(&str, &str)]) -> multi_server_e2e::Process {
    let mut all = dev_args();
    all.extend_from_slice(args);
    let mut all_env = DEV_ENV.to_vec();
    all_env.extend_from_slice(env);
    multi_server_e2e::Process::start_with_env(bin(), &all, &all_env)
}

/// The environment of [`start_dev`]: an empty `GENKIT_TELEMETRY_SERVER` is "no telemetry
/// server", whatever the test runner's environment says; the Developer UI (when the binary has
/// one) on an ephemeral port, so parallel dev processes do not compete for its default range.
const DEV_ENV: &[(&str, &str)] = &[
    ("GENKIT_TELEMETRY_SERVER", ""),
    ("MULTI_SERVER_DEVUI_PORTS", "0"),
];

/// The flags of [`start_dev`].
fn dev_args() -> Vec<&'static str> {
    vec![
        "--dev",
        "--reflection-ports",
        "0",
        "--reflection-delay",
        "0s",
        "--flows-ports",
        "0",
        "--flows-workers",
        "2",
    ]
}

/// The `/__serverz` entry of server `name`, read through server `via`.
fn server_entry(p: &multi_server_e2e::Process, via: &str, name: &str) -> serde_json::Value {
    let info = multi_server_e2e::get(&format!("{}/__serverz", p.url(via))).json;
    info["servers"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no server {name} in {info}"))
}

/// Waits until `n` requests are in flight on server `name` (read through server `via`; a poll
/// through the same server counts itself).
fn wait_in_flight(p: &multi_server_e2e::Process, via: &str, name: &str, n: u64) {
    let own = u64::from(via == name);
    multi_server_e2e::eventually(&format!("{n} requests in flight on {name}"), || {
        let entry = server_entry(p, via, name);
        (entry["requests"]["in_flight"].as_u64() >= Some(n + own)).then_some(())
    });
}
