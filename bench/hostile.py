#!/usr/bin/env python3
"""The budgets of issue 10 under attack, on the release binary (bench/hostile.sh builds it):

1. RSS after 100 anonymous POST /flow/plan_trip with a 1 MB input (production mode);
2. RSS and /__healthz latency with 1,000 connections stalled mid-body on the public port;
3. stderr a pipe nobody reads for 10 s under wrk load: /__healthz p99 on the public and the
   admin port, the log lines dropped, and SIGTERM to exit.

Each figure is printed next to its baseline from the same run (the idle process; /__healthz
unloaded). Loopback only; every step bounded in time. Goals (issue 10): <= 64 MiB both, the
process answers /__healthz under 100 ms throughout, exit within the drain deadline.
"""

import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / os.environ.get("CARGO_TARGET_DIR", "target") / "release" / "multi-server"


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024


def start(args, stderr):
    env = dict(os.environ, MULTI_SERVER_ADMIN_PORTS="0", RUST_LOG="info")
    env.pop("GENKIT_ENV", None)
    p = subprocess.Popen([str(BINARY), "--flows-ports", "0", *args], stdout=subprocess.PIPE,
                         stderr=stderr, env=env)
    urls, deadline = {}, time.time() + 20
    while "admin" not in urls and time.time() < deadline:
        line = p.stdout.readline().decode()
        if not line:
            break
        m = re.match(r"\s+(\S+)\s+\S+\s+(http://\S+)", line)
        if m:
            urls[m.group(1)] = m.group(2)
    if "admin" not in urls:
        p.kill()
        sys.exit(f"no banner from {BINARY}")
    return p, {k: tuple(v[7:].rsplit(":", 1)) for k, v in urls.items()}


def addr(hostport):
    return hostport[0], int(hostport[1])


def healthz_ms(hostport, timeout=5.0):
    """One GET /__healthz on a fresh connection, in ms (None when it failed)."""
    started = time.perf_counter()
    try:
        with socket.create_connection(addr(hostport), timeout=timeout) as s:
            s.sendall(b"GET /__healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        ok = data.startswith(b"HTTP/1.1 200")
    except OSError:
        ok = False
    return (time.perf_counter() - started) * 1000 if ok else None


def p99(samples):
    samples = sorted(samples)
    return samples[min(len(samples) - 1, len(samples) * 99 // 100)]


def probe(hostports, n, pause=0.0):
    samples, failed = [], 0
    for _ in range(n):
        for hp in hostports:
            ms = healthz_ms(hp)
            if ms is None:
                failed += 1
            else:
                samples.append(ms)
        time.sleep(pause)
    return samples, failed


def stop(p, timeout=30):
    started = time.perf_counter()
    p.send_signal(signal.SIGTERM)
    code = p.wait(timeout)
    return (time.perf_counter() - started) * 1000, code


def large_inputs():
    p, urls = start([], subprocess.DEVNULL)
    idle = rss_mib(p.pid)
    base = f"http://{':'.join(urls['flows'])}"
    body = json.dumps({"destination": "x" * 1_000_000, "days": 1, "travelers": ["Ann"]}).encode()
    for _ in range(100):
        req = urllib.request.Request(f"{base}/flow/plan_trip", data=body,
                                     headers={"content-type": "application/json"})
        urllib.request.urlopen(req, timeout=20).read()
    after = rss_mib(p.pid)
    samples, failed = probe([urls["flows"]], 50)
    stop(p)
    return {"rss_idle_mib": idle, "rss_after_mib": after,
            "healthz_p99_ms": p99(samples), "healthz_failed": failed}


def stalled_bodies():
    p, urls = start([], subprocess.DEVNULL)
    idle = rss_mib(p.pid)
    unloaded, _ = probe([urls["flows"], urls["admin"]], 50)
    head = (b"POST /flow/multi_server_flow HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"a\":1")
    conns = []
    for _ in range(1000):
        s = socket.create_connection(addr(urls["flows"]), timeout=5)
        s.sendall(head)
        conns.append(s)
    time.sleep(1.0)
    during = rss_mib(p.pid)
    loaded, failed = probe([urls["flows"], urls["admin"]], 50)
    for s in conns:
        s.close()
    stop(p)
    return {"rss_idle_mib": idle, "rss_during_mib": during,
            "healthz_p99_unloaded_ms": p99(unloaded), "healthz_p99_ms": p99(loaded),
            "healthz_failed": failed}


def stalled_log(seconds):
    # stderr a pipe this script never reads while the load runs.
    p, urls = start(["--drain-deadline", "5s"], subprocess.PIPE)
    unloaded, _ = probe([urls["flows"], urls["admin"]], 50)
    long_path = "/" + "a" * 2000
    wrk = subprocess.Popen(["wrk", "-t2", "-c20", f"-d{seconds}s",
                            f"http://{':'.join(urls['flows'])}{long_path}"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    samples, failed = [], 0
    until = time.time() + seconds
    while time.time() < until:
        s, f = probe([urls["flows"], urls["admin"]], 1, 0.02)
        samples += s
        failed += f
    out = wrk.communicate(timeout=seconds + 30)[0].decode()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    with urllib.request.urlopen(f"http://{':'.join(urls['admin'])}/__serverz", timeout=5) as r:
        dropped = json.load(r)["log_lines_dropped"]
    exit_ms, code = stop(p)
    p.stderr.close()
    return {"seconds": seconds, "wrk_rps": rps, "healthz_probes": len(samples),
            "healthz_failed": failed, "healthz_p99_unloaded_ms": p99(unloaded),
            "healthz_p99_ms": p99(samples), "healthz_max_ms": max(samples),
            "lines_dropped": dropped, "sigterm_to_exit_ms": exit_ms, "exit_code": code}


def main():
    figures = {"large_inputs": large_inputs(), "stalled_bodies": stalled_bodies(),
               "stalled_log": stalled_log(10)}
    a, b, c = figures["large_inputs"], figures["stalled_bodies"], figures["stalled_log"]
    print("| attack | baseline (same run) | under attack | goal |")
    print("|---|---:|---:|---|")
    print(f"| 100 x 1 MB plan_trip: RSS | {a['rss_idle_mib']:.1f} MiB idle | "
          f"{a['rss_after_mib']:.1f} MiB | <= 64 MiB |")
    print(f"| 1,000 stalled bodies: RSS | {b['rss_idle_mib']:.1f} MiB idle | "
          f"{b['rss_during_mib']:.1f} MiB | <= 64 MiB |")
    print(f"| 1,000 stalled bodies: /__healthz p99 | {b['healthz_p99_unloaded_ms']:.2f} ms | "
          f"{b['healthz_p99_ms']:.2f} ms ({b['healthz_failed']} failed) | < 100 ms |")
    print(f"| stderr stalled {c['seconds']} s under wrk ({c['wrk_rps']:.0f} req/s): "
          f"/__healthz p99 (max) | {c['healthz_p99_unloaded_ms']:.2f} ms | "
          f"{c['healthz_p99_ms']:.2f} ms ({c['healthz_max_ms']:.1f}), "
          f"{c['healthz_failed']} of {c['healthz_probes']} failed | answered throughout |")
    print(f"| stderr stalled: lines dropped | 0 | {c['lines_dropped']} | counted |")
    print(f"| stderr stalled: SIGTERM to exit | | {c['sigterm_to_exit_ms']:.0f} ms "
          f"(exit {c['exit_code']}) | within the 5 s drain deadline |")
    out = ROOT / os.environ.get("CARGO_TARGET_DIR", "target") / "bench" / "hostile.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2))
    print(f"\nJSON: {out}")


if __name__ == "__main__":
    main()
