//! Port specs: a busy port is skipped, an exhausted range is one clear error and exit 1.

use std::time::Duration;

use multi_server_e2e::{Process, busy_block, busy_first_of_free_block, get};

use super::bin;

#[test]
fn a_busy_port_moves_the_server_to_the_next_one() {
    let (_held, port) = busy_first_of_free_block(4);
    let spec = format!("{port}..{}", port + 4);
    let p = Process::start(bin(), &["--flows-ports", &spec]);
    let url = p.url("flows").to_owned();
    let chosen: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        chosen > port && chosen < port + 4,
        "chose {chosen} for {spec}"
    );
    assert_eq!(get(&format!("{url}/greet")).status, 200);
    p.wait_for_log(&format!(
        "port busy, trying the next one server=\"flows\" addr=127.0.0.1:{port}"
    ));
}

#[test]
fn a_fully_busy_range_exits_1_naming_server_host_and_range() {
    let (_held, port) = busy_block(3);
    let spec = format!("{port}..{}", port + 3);
    let mut p = Process::spawn(bin(), &["--flows-ports", &spec], &[]);
    let status = p.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{}", p.stderr());
    let expected = format!("error: server 'flows': no free port in 127.0.0.1:{spec}");
    assert!(
        p.stderr().lines().any(|l| l == expected),
        "want {expected:?} in:\n{}",
        p.stderr()
    );
}

#[test]
fn a_bad_flag_exits_2_with_one_clear_line() {
    let mut p = Process::spawn(bin(), &["--flows-ports", "3410..3400"], &[]);
    let status = p.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(2));
    let first = p.stderr().lines().next().unwrap_or_default().to_owned();
    assert!(
        first.contains("--flows-ports") && first.contains("'3410..3400'"),
        "{first}"
    );

    let mut p = Process::spawn(bin(), &["--drain-deadline", "forever"], &[]);
    assert_eq!(p.wait_exit(Duration::from_secs(20)).code(), Some(2));
    assert!(p.stderr().contains("--drain-deadline"), "{}", p.stderr());
}
