//! Every endpoint's status and JSON, errors included.

use multi_server_e2e::{Process, get, post, request};

use super::{bin, start};

#[test]
fn public_routes_answer_like_the_original() {
    let p = start(&[]);
    let flows = p.url("flows");
    let greet = get(&format!("{flows}/greet"));
    assert_eq!(greet.status, 200);
    assert_eq!(
        greet.json,
        serde_json::json!({"greeting": "Hello from greeting endpoints app!"})
    );
    assert!(greet.headers["content-type"].starts_with("application/json"));
    assert!(greet.headers.contains_key("x-request-id"));
    let flow = get(&format!("{flows}/flow/run"));
    assert_eq!(flow.status, 200);
    assert_eq!(
        flow.json,
        serde_json::json!({"flow": "Running flow endpoint!"})
    );
}

#[test]
fn admin_endpoints_report_live_data_and_no_environment() {
    let secret = "s3cr3t-value-that-must-not-leak";
    let p = Process::start_with_env(
        bin(),
        &["--flows-ports", "0"],
        &[("MULTI_SERVER_E2E_SECRET", secret)],
    );
    let flows = p.url("flows");

    let health = get(&format!("{flows}/__healthz"));
    assert_eq!(health.status, 200);
    assert_eq!(health.json["status"], "ok");
    assert!(health.json["timestamp"].as_f64().unwrap() > 1.7e9);
    assert!(health.json["uptime_seconds"].as_f64().unwrap() >= 0.0);

    let ready = get(&format!("{flows}/__readyz"));
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json["ready"], true);
    assert_eq!(ready.json["state"], "live");

    let first = get(&format!("{flows}/__serverz"));
    assert_eq!(first.status, 200);
    let info = &first.json;
    assert_eq!(info["pid"], p.pid());
    assert_eq!(info["state"], "live");
    assert_eq!(info["log_lines_dropped"], 0, "the log output keeps up");
    assert!(
        info["argv"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--flows-ports")
    );
    let server = &info["servers"][0];
    assert_eq!(server["name"], "flows");
    assert_eq!(server["framework"], "actix-web");
    assert_eq!(server["state"], "serving");
    assert_eq!(server["url"], flows);
    assert!(
        !first.text.contains(secret),
        "serverz leaked the environment"
    );
    assert!(!first.text.contains("\"PATH\""));

    // Live on every call: the request count moves.
    let served =
        |r: &multi_server_e2e::Reply| r.json["servers"][0]["requests"]["served"].as_u64().unwrap();
    let second = get(&format!("{flows}/__serverz"));
    assert!(served(&second) > served(&first));
    assert!(second.json["uptime_seconds"].as_f64() > first.json["uptime_seconds"].as_f64());
}

#[test]
fn errors_are_json_4xx() {
    let p = start(&[]);
    let flows = p.url("flows");

    let missing = get(&format!("{flows}/no/such/route"));
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json["error"], "not found");
    assert_eq!(missing.json["path"], "/no/such/route");

    let wrong_method = post(&format!("{flows}/greet"), "application/json", "{}");
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.json["error"], "method not allowed");
    assert_eq!(wrong_method.headers["allow"], "GET");

    let quit_by_get = get(&format!("{flows}/__quitquitquitz"));
    assert_eq!(quit_by_get.status, 405);
    assert_eq!(quit_by_get.headers["allow"], "POST");
    assert_eq!(request("DELETE", &format!("{flows}/__serverz")).status, 405);

    let bad_query = get(&format!("{flows}/__test/slow?ms=soon"));
    assert_eq!(bad_query.status, 400);
    assert!(
        bad_query.json["error"]
            .as_str()
            .unwrap()
            .contains("invalid digit"),
        "{}",
        bad_query.text
    );

    // Still serving after all of that.
    assert_eq!(get(&format!("{flows}/greet")).status, 200);
}

#[test]
fn a_handler_panic_is_a_500_and_the_server_keeps_serving() {
    let p = start(&[]);
    let flows = p.url("flows");
    for _ in 0..3 {
        let crash = get(&format!("{flows}/__test/panic"));
        assert_eq!(crash.status, 500);
        assert_eq!(crash.json["error"], "internal error");
        assert_eq!(get(&format!("{flows}/greet")).status, 200);
    }
    let info = get(&format!("{flows}/__serverz")).json;
    assert_eq!(info["servers"][0]["requests"]["server_errors"], 3);
    assert_eq!(info["servers"][0]["state"], "serving");
    p.wait_for_log("handler panicked");
}

#[test]
fn every_request_is_logged_with_server_id_status_and_latency() {
    let p = start(&[]);
    let flows = p.url("flows");
    let id = get(&format!("{flows}/greet")).headers["x-request-id"].clone();
    p.wait_for_log(&format!(
        "id={id} method=\"GET\" path=\"/greet\" status=200 latency_ms="
    ));
    assert!(p.stderr().contains("server=\"flows\""));
}

#[test]
fn quit_can_be_left_to_the_admin_listener() {
    let mut p = start(&["--quit-on-admin-only"]);
    let refused = post(
        &format!("{}/__quitquitquitz", p.url("flows")),
        "application/json",
        "",
    );
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert!(
        refused.json["error"].as_str().unwrap().contains("admin"),
        "{}",
        refused.text
    );
    assert!(refused.headers.contains_key("x-request-id"));
    assert_eq!(get(&format!("{}/__readyz", p.url("flows"))).status, 200);
    let quit = post(
        &format!("{}/__quitquitquitz", p.url("admin")),
        "application/json",
        "",
    );
    assert_eq!(quit.status, 200, "{}", quit.text);
    let status = p.wait_exit(multi_server_e2e::WAIT);
    assert_eq!(status.code(), Some(0), "{}", p.stderr());
}
