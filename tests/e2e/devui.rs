//! The Developer UI in a real browser: Debian's chromium, headless, driven through
//! chromedriver (WebDriver) by fantoccini. The test starts the binary in dev mode and checks
//! what a developer sees: every server with its real port, a flow run and its result, a
//! streamed run whose chunks arrive one by one, a cancelled run, a schema error, the runs'
//! traces, a request to the flows API in the log tail, and no console errors. It saves a
//! screenshot at 1280x800 to `target/devui-screenshot.png` (and a narrow one next to it).
//!
//! Needs `chromium` and `chromedriver` (`apt-get install -y chromium chromium-driver`); without
//! them it fails and says so. `CHROMIUM` and `CHROMEDRIVER` override the paths.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use multi_server_e2e::{Process, TempDir, WAIT, get, temp_dir};
use serde_json::{Value, json};

use super::bin;

/// How often a wait polls the page.
const POLL: Duration = Duration::from_millis(50);

#[test]
fn the_developer_ui_works_in_a_real_browser() {
    let chromium = tool(
        "CHROMIUM",
        &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
    );
    let chromedriver = tool("CHROMEDRIVER", &["/usr/bin/chromedriver"]);
    // A genkit CLI that is not there: the v2 client's row shows what it dials and that it is
    // not connected.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let v2_url = format!(
        "ws://127.0.0.1:{}",
        unused.local_addr().expect("addr").port()
    );
    drop(unused);
    let mut p = Process::start_with_env(
        bin(),
        &[
            "--dev",
            "--flows-ports",
            "0",
            "--flows-workers",
            "2",
            "--reflection-ports",
            "0",
            "--reflection-delay",
            "0s",
            "--devui-ports",
            "0",
        ],
        &[
            ("GENKIT_TELEMETRY_SERVER", ""),
            ("GENKIT_REFLECTION_V2_SERVER", &v2_url),
        ],
    );
    let driver = Driver::start(&chromedriver);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let client = runtime.block_on(driver.session(&chromium));
    let result = runtime.block_on(async {
        let drive = drive(&client, &mut p, &driver, &v2_url);
        tokio::time::timeout(Duration::from_secs(120), drive).await
    });
    let _ = runtime.block_on(client.close());
    match result {
        Ok(()) => {}
        Err(_) => panic!("the browser test took longer than 120s"),
    }
}

/// Everything the browser does, in order.
async fn drive(c: &Client, p: &mut Process, driver: &Driver, v2_url: &str) {
    let devui = p.url("devui").to_owned();
    let servers = serving_servers(&devui);
    c.goto(&devui).await.expect("open the Developer UI");
    viewport(c, 1280, 800).await;

    // Every server, with the port it really listens on.
    for (name, address) in &servers {
        let row = format!("#servers-table tr[data-server=\"{name}\"]");
        wait_text(c, &row, &format!("{name} listed at {address}"), |t| {
            t.contains(name.as_str()) && t.contains(address.as_str()) && t.contains("serving")
        })
        .await;
    }
    let row = "#servers-table tr[data-server=\"reflection-v2\"]";
    wait_text(c, row, "the v2 client, what it dials and its status", |t| {
        t.contains(&format!("dials {v2_url}"))
            && t.contains("not connected")
            && t.contains("serving")
    })
    .await;
    wait_text(c, "#process-state", "process live", |t| {
        t.contains("process live")
    })
    .await;
    wait_text(c, "#flow-list", "the flows", |t| {
        ["multi_server_flow", "streaming_greeting", "plan_trip"]
            .iter()
            .all(|f| t.contains(f))
    })
    .await;

    // The run form is prefilled with a valid example; run multi_server_flow with "Alice".
    click(c, "#flow-list button[data-flow=\"multi_server_flow\"]").await;
    let example = value_of(c, "#flow-input").await;
    assert_eq!(
        serde_json::from_str::<Value>(&example).ok(),
        Some(json!("Alice")),
        "example input: {example}"
    );
    type_input(c, "\"Alice\"").await;
    click(c, "#run").await;
    wait_text(c, "#result", "the flow's result", |t| {
        t.contains("Hello from multi-server, Alice!")
    })
    .await;
    // Its trace: selected, finished, with the input and output of the root span.
    wait_text(c, "#trace-detail", "the run's trace", |t| {
        t.contains("multi_server_flow") && t.contains("succeeded") && t.contains("Alice")
    })
    .await;
    let trace_id = newest_trace_id(p, "multi_server_flow");
    let listed = c
        .find(Locator::Css(&format!(
            "#trace-list button[data-trace=\"{trace_id}\"]"
        )))
        .await;
    assert!(listed.is_ok(), "trace {trace_id} is not in the list");
    assert!(
        text_of(c, "#trace-detail").await.contains(&trace_id),
        "the detail shows another trace than {trace_id}"
    );

    // A structured flow runs with its prefilled example unchanged: the example is valid.
    click(c, "#flow-list button[data-flow=\"plan_trip\"]").await;
    click(c, "#run").await;
    wait_text(c, "#result", "plan_trip's result", |t| {
        t.contains("\"itinerary\"")
    })
    .await;
    wait_text(c, "#trace-detail", "plan_trip's trace and its steps", |t| {
        [
            "plan_trip",
            "succeeded",
            "validate",
            "plan_days",
            "summarize",
        ]
        .iter()
        .all(|w| t.contains(w))
    })
    .await;
    let plan_trace = newest_trace_id(p, "plan_trip");

    // Bad input: the schema error is shown.
    click(c, "#flow-list button[data-flow=\"streaming_greeting\"]").await;
    type_input(c, r#"{"name": 5}"#).await;
    click(c, "#run").await;
    wait_text(c, "#run-error", "the schema error", |t| {
        t.contains("Input rejected by the schema")
            && t.contains("Schema validation failed")
            && t.contains("name")
    })
    .await;

    // Cancel: a slow streamed run stops with CANCELLED after its first chunk.
    type_input(c, r#"{"name": "Cy", "interval_ms": 2000}"#).await;
    click(c, "#run").await;
    wait_text(c, "#chunk-count", "the first chunk", |t| t == "1").await;
    click(c, "#cancel").await;
    wait_text(c, "#run-error", "the cancellation", |t| {
        t.contains("Cancelled") && t.contains("Action was cancelled")
    })
    .await;
    wait_text(c, "#trace-detail", "the cancelled run's trace", |t| {
        t.contains("failed") && t.contains("Action was cancelled")
    })
    .await;

    // A streamed run: the chunk count grows one by one while the result is still empty.
    type_input(c, r#"{"name": "Bo", "interval_ms": 300}"#).await;
    click(c, "#run").await;
    let words = "Hello from multi-server, Bo! Streaming, word by word."
        .split(' ')
        .count() as u32;
    let started = Instant::now();
    let mut seen: Vec<u32> = Vec::new();
    loop {
        // The result first: once it shows, every chunk (sent before it) is counted too.
        let result = text_of(c, "#result").await;
        let count: u32 = text_of(c, "#chunk-count").await.parse().unwrap_or(0);
        if seen.last() != Some(&count) {
            seen.push(count);
        }
        if result.contains("Hello from multi-server, Bo!") {
            break;
        }
        assert!(
            result.is_empty(),
            "a result other than the greeting after {count} chunks: {result:?}"
        );
        assert!(
            started.elapsed() < WAIT,
            "streaming run did not finish; counts seen {seen:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(seen.last(), Some(&words), "final chunk count: {seen:?}");
    let partial = seen.iter().filter(|n| **n > 0 && **n < words).count();
    assert!(
        partial >= 4,
        "chunks did not appear one by one (counts seen: {seen:?})"
    );
    let chunks = text_of(c, "#chunks").await;
    assert!(
        chunks.contains("Streaming,") && chunks.contains("word."),
        "{chunks}"
    );
    wait_text(c, "#trace-detail", "the streamed run's trace", |t| {
        t.contains("streaming_greeting") && t.contains("succeeded")
    })
    .await;

    // A plain HTTP request to the flows API shows up in the live log tail.
    let flows = p.url("flows").to_owned();
    assert_eq!(get(&format!("{flows}/greet")).status, 200);
    wait_text(
        c,
        "#log-table tbody",
        "GET /greet of the flows server in the log",
        |t| {
            t.lines()
                .any(|l| l.contains("flows") && l.contains("/greet") && l.contains("200"))
        },
    )
    .await;

    // Readiness controls: fail it, then restore it; /__readyz of every server follows.
    click(c, "#ready-fail").await;
    wait_text(c, "#readiness", "readiness failing", |t| {
        t.contains("not ready") && t.contains("operator")
    })
    .await;
    assert_eq!(get(&format!("{flows}/__readyz")).status, 503);
    click(c, "#ready-ok").await;
    wait_text(c, "#readiness", "readiness restored", |t| t == "ready").await;
    assert_eq!(get(&format!("{flows}/__readyz")).status, 200);

    // The charts move after a burst: 300 requests on the flows API show in its requests/s
    // chart (its highest second: at least 100/s, which nothing before the burst comes near),
    // and the flows that ran have cards of their own.
    let burst = {
        let flows = flows.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut conn = multi_server_e2e::Conn::connect(multi_server_e2e::addr(&flows)).unwrap();
            for _ in 0..300 {
                assert_eq!(conn.request("GET", "/greet", &[], b"").unwrap().status, 200);
            }
        })
    };
    burst.await.expect("the burst");
    let rps = r#"[data-server-chart="flows"] [data-chart="requests/s"]"#;
    wait_text(c, rps, "the burst in the flows chart", |t| {
        t.rsplit_once("max ")
            .and_then(|(_, max)| max.trim_end_matches("/s").parse::<f64>().ok())
            .is_some_and(|max| max >= 100.0)
    })
    .await;
    wait_text(
        c,
        r#"[data-flow-chart="plan_trip"] h4"#,
        "plan_trip's run count",
        |t| t.contains("runs"),
    )
    .await;
    let charts: Value = c
        .execute(
            "return [...document.querySelectorAll('svg.chart')].map(s => [s.getAttribute('tabindex'), s.getAttribute('aria-label')]);",
            vec![],
        )
        .await
        .expect("charts");
    let charts = charts.as_array().cloned().unwrap_or_default();
    assert!(charts.len() >= 4, "{charts:?}");
    for chart in &charts {
        assert_eq!(chart[0], "0", "keyboard reachable: {chart}");
        assert!(
            chart[1]
                .as_str()
                .is_some_and(|l| l.contains("last five minutes: now")),
            "{chart}"
        );
    }
    // A focused chart keeps the focus across the once-a-second updates.
    c.execute("document.querySelector('svg.chart').focus();", vec![])
        .await
        .expect("focus");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let focused: Value = c
        .execute(
            "return document.activeElement && document.activeElement.classList.contains('chart');",
            vec![],
        )
        .await
        .expect("focus");
    assert_eq!(
        focused,
        Value::Bool(true),
        "a chart lost the focus to an update"
    );
    c.execute(
        "window.scrollTo(0, document.getElementById('charts-h').getBoundingClientRect().top + window.scrollY - 70); document.activeElement.blur();",
        vec![],
    )
    .await
    .expect("scroll");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let charts_shot = screenshot_path("devui-charts.png");
    std::fs::write(&charts_shot, c.screenshot().await.expect("screenshot"))
        .expect("save screenshot");
    println!("Developer UI charts (1280x800): {}", charts_shot.display());

    // Nothing went wrong in the page. The one expected entry: Chrome reports the deliberate
    // bad input's HTTP 400 as a failed resource load.
    let problems: Vec<Value> = driver
        .browser_log(c)
        .await
        .into_iter()
        .filter(|e| e["level"] == "SEVERE")
        .filter(|e| {
            let message = e["message"].as_str().unwrap_or("");
            !(message.contains("/api/flows/streaming_greeting/run") && message.contains("400"))
        })
        .collect();
    assert!(problems.is_empty(), "console errors: {problems:#?}");

    // The screenshots: 1280x800 from the top, with plan_trip's trace (four spans) selected,
    // then a narrow window.
    click(
        c,
        &format!("#trace-list button[data-trace=\"{plan_trace}\"]"),
    )
    .await;
    wait_text(c, "#trace-detail", "plan_trip's trace again", |t| {
        t.contains(&plan_trace)
    })
    .await;
    c.execute(
        "window.scrollTo(0, 0); document.activeElement.blur();",
        vec![],
    )
    .await
    .expect("scroll");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let path = screenshot_path("devui-screenshot.png");
    std::fs::write(&path, c.screenshot().await.expect("screenshot")).expect("save screenshot");
    println!("Developer UI screenshot (1280x800): {}", path.display());
    c.execute("window.scrollTo(0, document.body.scrollHeight);", vec![])
        .await
        .expect("scroll");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let bottom = screenshot_path("devui-screenshot-bottom.png");
    std::fs::write(&bottom, c.screenshot().await.expect("screenshot")).expect("save screenshot");
    println!(
        "Developer UI screenshot (1280x800, scrolled down): {}",
        bottom.display()
    );
    c.execute("window.scrollTo(0, 0);", vec![])
        .await
        .expect("scroll");
    viewport(c, 420, 900).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let narrow = screenshot_path("devui-screenshot-narrow.png");
    std::fs::write(&narrow, c.screenshot().await.expect("screenshot")).expect("save screenshot");
    println!("Developer UI screenshot (narrow): {}", narrow.display());
    let overflow: bool = c
        .execute(
            "return document.documentElement.scrollWidth > window.innerWidth + 1;",
            vec![],
        )
        .await
        .expect("measure")
        .as_bool()
        .unwrap_or(true);
    assert!(!overflow, "the page scrolls sideways in a narrow window");

    // Quit is behind a confirmation: "Keep running" keeps it running, "Quit" stops the
    // process cleanly.
    viewport(c, 1280, 800).await;
    let dialog_open = "return document.getElementById('quit-dialog').open;";
    click(c, "#quit").await;
    assert_eq!(
        c.execute(dialog_open, vec![]).await.expect("dialog"),
        json!(true)
    );
    click(c, "#quit-keep").await;
    assert_eq!(
        c.execute(dialog_open, vec![]).await.expect("dialog"),
        json!(false)
    );
    assert_eq!(get(&format!("{flows}/__healthz")).status, 200);
    click(c, "#quit").await;
    click(c, "#quit-confirm").await;
    let status = p.wait_exit(WAIT);
    assert!(
        status.success(),
        "exit after quit: {status}\n{}",
        p.stderr()
    );
    assert!(
        p.stderr().contains("quit requested on server 'devui'"),
        "{}",
        p.stderr()
    );
}

/// Sizes the window so that the page itself (the viewport) is `width` x `height`.
async fn viewport(c: &Client, width: u32, height: u32) {
    let script =
        "return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight];";
    let chrome = c.execute(script, vec![]).await.expect("measure the window");
    let extra = |i: usize| chrome[i].as_u64().unwrap_or(0) as u32;
    c.set_window_size(width + extra(0), height + extra(1))
        .await
        .expect("resize the window");
}

/// Name → `host:port` of every server, once all of them serve (the reflection server starts
/// a moment after the banner).
fn serving_servers(devui: &str) -> Vec<(String, String)> {
    let deadline = Instant::now() + WAIT;
    loop {
        let info = get(&format!("{devui}/api/servers")).json;
        let servers = info["process"]["servers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        // Four servers and the v2 client, which has no address.
        let all_serving = servers.len() == 5 && servers.iter().all(|s| s["state"] == "serving");
        if all_serving {
            return servers
                .iter()
                .filter(|s| s["dials"].is_null())
                .map(|s| {
                    (
                        s["name"].as_str().unwrap().to_owned(),
                        s["address"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
        }
        assert!(Instant::now() < deadline, "not every server serves: {info}");
        std::thread::sleep(POLL);
    }
}

/// The id of the newest trace of `flow`, from the API.
fn newest_trace_id(p: &Process, flow: &str) -> String {
    let traces = get(&format!("{}/api/traces", p.url("devui"))).json;
    traces["traces"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["displayName"] == flow))
        .and_then(|t| t["traceId"].as_str())
        .unwrap_or_else(|| panic!("no trace of {flow}: {traces}"))
        .to_owned()
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("find {css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

/// Replaces the run form's input by typing, as a person would.
async fn type_input(c: &Client, text: &str) {
    let input = c
        .find(Locator::Css("#flow-input"))
        .await
        .expect("the input box");
    input.clear().await.expect("clear the input");
    input.send_keys(text).await.expect("type the input");
    assert_eq!(value_of(c, "#flow-input").await, text);
}

async fn value_of(c: &Client, css: &str) -> String {
    let script = "return document.querySelector(arguments[0]).value;";
    c.execute(script, vec![json!(css)])
        .await
        .unwrap_or_else(|e| panic!("value of {css}: {e}"))
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The element's rendered text (`innerText`), or "" when it is not there.
async fn text_of(c: &Client, css: &str) -> String {
    let script = "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';";
    c.execute(script, vec![json!(css)])
        .await
        .unwrap_or_else(|e| panic!("text of {css}: {e}"))
        .as_str()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Waits until `ready` holds for the text of `css`, or fails naming `what`.
async fn wait_text(c: &Client, css: &str, what: &str, ready: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = text_of(c, css).await;
        if ready(&text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed {what} in {css}; it shows:\n{text}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Where the screenshot goes: `target/<name>`, found from this test binary's own path
/// (`target/debug/deps/e2e-*`), so it works with any `CARGO_TARGET_DIR`.
fn screenshot_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let target = exe
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join(name)
}

/// A program the test needs, from its environment variable or the usual places.
fn tool(var: &str, candidates: &[&str]) -> PathBuf {
    if let Ok(path) = std::env::var(var) {
        return PathBuf::from(path);
    }
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "the Developer UI browser test needs chromium and chromedriver: none of {candidates:?} \
                 exists (install them with `apt-get install -y chromium chromium-driver`, or set {var})"
            )
        })
}

/// A chromedriver the test started, in its own process group, and the browser profile it uses.
/// Dropping it ends the browser session and kills that group (chromedriver and the chromium
/// it started), by id.
struct Driver {
    child: Child,
    url: String,
    profile: TempDir,
    /// Chromedriver's log.
    _logs: TempDir,
}

impl Driver {
    fn start(chromedriver: &Path) -> Driver {
        let port = {
            let probe = TcpListener::bind("127.0.0.1:0").expect("bind");
            probe.local_addr().expect("addr").port()
        };
        let logs = temp_dir("chromedriver");
        let log = logs.join("chromedriver.log");
        let mut command = Command::new(chromedriver);
        command
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", chromedriver.display()));
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            profile: temp_dir("chromium-profile"),
            _logs: logs,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(reply) = multi_server_e2e::try_get(&format!("{}/status", driver.url))
                && reply.json["value"]["ready"] == true
            {
                return driver;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready on port {port} within {WAIT:?}"
            );
            std::thread::sleep(POLL);
        }
    }

    /// A new headless chromium session at 1280x800 with a fresh, empty profile.
    async fn session(&self, chromium: &Path) -> Client {
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--no-first-run",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-quic",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,800",
                    format!("--user-data-dir={}", self.profile.display()),
                ],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("start a chromium session through chromedriver: {e}"))
    }

    /// The browser's console log (chromedriver's log endpoint).
    async fn browser_log(&self, c: &Client) -> Vec<Value> {
        let session = c.session_id().await.ok().flatten().expect("a session id");
        let url = format!("{}/session/{session}/se/log", self.url);
        let reply = tokio::task::spawn_blocking(move || {
            multi_server_e2e::post(&url, "application/json", r#"{"type":"browser"}"#)
        })
        .await
        .expect("log request");
        assert_eq!(reply.status, 200, "browser log: {}", reply.text);
        reply.json["value"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Only the group this test started: chromedriver and the browser it launched.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Then the profile and the log go, unless the test failed.
    }
}
