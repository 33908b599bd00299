#!/usr/bin/env python3
"""The benchmarks of bench/run.sh. Every figure is measured next to a baseline taken in the
same run, on the same machine, and reported as medians (and ratios), since these machines
are noisy. Loopback only; every load run is bounded in time.

Prints a markdown table and writes the same figures as JSON (path printed at the end).
"""

import argparse
import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Where cargo put the build: CARGO_TARGET_DIR as cargo reads it (relative to the repo root,
# where bench/run.sh runs cargo), else target/.
TARGET = ROOT / os.environ.get("CARGO_TARGET_DIR", "target")
RELEASE = TARGET / "release"
BINARY = RELEASE / "multi-server"
# The original Python sample, measured on a 2-core machine (shared/spec/lifecycle.md).
ORIGINAL = {"startup_ms": 820, "shutdown_idle_ms": 416, "shutdown_loaded_ms": 600,
            "rss_mib": 75, "greet_rps": 450, "reflection_run_rps": 1680}


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        kib = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
    return kib / 1024


def http_get(addr, path, timeout=2.0):
    """One HTTP/1.1 GET on a fresh connection; returns the status code or None."""
    host, port = addr
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            head = s.recv(64)
        return int(head.split()[1]) if head.startswith(b"HTTP/1.1 ") else None
    except OSError:
        return None


def scratch_dir(prefix):
    """A directory for the servers' logs (every request is logged: gigabytes over a full
    run), removed when the bench exits; kept with BENCH_KEEP_LOGS=1, to read after a failure."""
    path = tempfile.mkdtemp(prefix=prefix)
    if not os.environ.get("BENCH_KEEP_LOGS"):
        atexit.register(shutil.rmtree, path, True)
    return path


class Ours:
    """multi-server in dev mode (flows, reflection, devui; admin too with admin=True), delays
    0, logging at `log` (info: every request) to a file."""

    def __init__(self, workdir, extra=(), log="info", admin=False, cpu=None):
        self.log = open(Path(workdir) / f"multi-server-{time.monotonic_ns()}.log", "w")
        self.started = time.perf_counter()
        env = dict(os.environ, RUST_LOG=log)
        env.pop("GENKIT_TELEMETRY_SERVER", None)
        if cpu is not None:
            env["TOKIO_WORKER_THREADS"] = "1"
            extra = ("--flows-workers", "1", *extra)
        admin_args = ["--admin-ports", "0"] if admin else []
        want = 4 if admin else 3
        self.proc = subprocess.Popen(
            [str(BINARY), "--dev", "--flows-ports", "0", "--reflection-ports", "0",
             "--devui-ports", "0", "--reflection-delay", "0s", *admin_args, *extra],
            cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=self.log, text=True,
            preexec_fn=on_cpu(cpu))
        atexit.register(kill_if_running, self.proc)
        self.urls = {}
        deadline = time.time() + 20
        while len(self.urls) < want and time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = re.match(r"\s+(\w+)\s+\S+\s+http://([\d.]+):(\d+)", line)
            if m:
                self.urls[m.group(1)] = (m.group(2), int(m.group(3)))
        if len(self.urls) < want:
            self.stop()
            sys.exit(f"multi-server did not start: {self.urls}")

    def url(self, name, path):
        host, port = self.urls[name]
        return f"http://{host}:{port}{path}"

    def stop(self, sig=signal.SIGTERM):
        t = time.perf_counter()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.log.close()
        return code, (time.perf_counter() - t) * 1e3


class Bare:
    """A bench-only bare server (no manager, no middleware) on an ephemeral port; with
    log_to (a path), the peer: the same server with its framework's own request logging
    (`--log`, RUST_LOG=info), written to that file. With cpu, on that CPU with one worker."""

    def __init__(self, name, log_to=None, cpu=None):
        env = dict(os.environ, RUST_LOG="info")
        self.log = open(log_to, "w") if log_to else subprocess.DEVNULL
        args = [str(RELEASE / name), "0"] + (["--log"] if log_to else [])
        if cpu is not None:
            env["TOKIO_WORKER_THREADS"] = "1"
            if name == "bare-actix":
                args.insert(2, "1")  # its second argument: workers
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, env=env,
                                     text=True, preexec_fn=on_cpu(cpu))
        atexit.register(kill_if_running, self.proc)
        line = self.proc.stdout.readline()
        m = re.match(r"http://([\d.]+):(\d+)", line)
        if not m:
            self.stop()
            sys.exit(f"{name} did not start")
        self.addr = (m.group(1), int(m.group(2)))

    def url(self, path):
        return f"http://{self.addr[0]}:{self.addr[1]}{path}"

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.log is not subprocess.DEVNULL:
            self.log.close()


def kill_if_running(proc):
    """At exit, whatever way the bench ends: a server it started and did not stop is killed
    (by its pid, which is still ours until reaped)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def on_cpu(cpu):
    """A preexec_fn that keeps the child (and every thread it starts) on CPU `cpu`; None for
    no pinning."""
    return None if cpu is None else (lambda: os.sched_setaffinity(0, {cpu}))


def on_cpu_ns(pid):
    """Per thread of a process, the nanoseconds it has run on a CPU so far (schedstat: the
    scheduler's own clock, finer than /proc's ticks), by thread id."""
    times = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                times[tid] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended between the listing and the read
    if not times:
        sys.exit(f"cannot read the CPU time of process {pid} (/proc/{pid}/task/*/schedstat)")
    return times


def cpu_ns_since(pid, before):
    """CPU nanoseconds the threads of `pid` ran since `before` (an `on_cpu_ns` snapshot);
    a thread that started meanwhile counts from 0. A thread that ended meanwhile is missed:
    the servers measured keep their threads."""
    return sum(ns - before.get(tid, 0) for tid, ns in on_cpu_ns(pid).items())


def parse_ms(text):
    value = float(re.match(r"[\d.]+", text).group(0))
    if text.endswith("us"):
        return value / 1000
    if text.endswith("ms"):
        return value
    if text.endswith("s"):
        return value * 1000
    return value


def wrk(url, seconds, connections=50, script=None):
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=seconds + 30).stdout
    return wrk_summary(out)


def wrk_side_by_side(contenders, seconds, cpu):
    """One `wrk -t1 -c50` per (url, pid) of `contenders`, all at once, all on the one CPU
    `cpu` (started in turn, so the order is the caller's to alternate); each run's figures
    with `cpu_ns`, the server's CPU time per request meanwhile, and `busy`, the share of one
    CPU the server used."""
    before = [on_cpu_ns(pid) for _, pid in contenders]
    started = time.perf_counter()
    procs = []
    try:
        for url, _ in contenders:
            procs.append(subprocess.Popen(
                ["wrk", "-t1", "-c50", f"-d{seconds}s", "--latency", url],
                stdout=subprocess.PIPE, text=True, preexec_fn=on_cpu(cpu)))
        outs = [p.communicate(timeout=seconds + 30)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    wall = time.perf_counter() - started
    runs = [wrk_summary(out) for out in outs]
    for run, (url, pid), ns in zip(runs, contenders, before):
        spent = cpu_ns_since(pid, ns)
        if run["requests"] == 0 or spent <= 0:
            sys.exit(f"no requests served or no CPU time used at {url} in a {seconds}s run")
        run["cpu_ns"] = spent / run["requests"]
        run["busy"] = spent / 1e9 / wall
    return runs


def wrk_summary(out):
    """The figures of one wrk run's output (`--latency` for p50/p99)."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {p: parse_ms(v) for p, v in re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M)}
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return {"rps": rps, "p50_ms": lat.get("50"), "p99_ms": lat.get("99"), "requests": total,
            "socket_errors": dict(zip(["connect", "read", "write", "timeout"],
                                      map(int, errors.groups()))) if errors else {},
            "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def cpu_seconds(pid):
    """User + system CPU time of a process so far (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk_costed(url, seconds, pid):
    """`wrk` on url, with the CPU time the server process `pid` spent per request meanwhile:
    the cost of a request whatever share of the cores the scheduler gave the server."""
    before = cpu_seconds(pid)
    run = wrk(url, seconds)
    run["cpu_us"] = (cpu_seconds(pid) - before) * 1e6 / max(run["requests"], 1)
    return run


def median_of(runs, key):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


# Per framework: our server's name, the path measured, its bare server and the framework.
CASES = (("flows", "/greet", "bare-actix", "actix-web"),
         ("reflection", "/api/__health", "bare-poem", "poem"),
         ("devui", "/__healthz", "bare-salvo", "salvo"),
         ("admin", "/__healthz", "bare-axum", "axum"))

# The contenders of the overhead table, in the order each round runs them.
CONTENDERS = ("bare", "peer", "ours", "ours_quiet")


def overhead(workdir, seconds, rounds):
    """Per framework: the bare server, its peer (the bare server with the framework's own
    request logging), ours with every request logged and ours with RUST_LOG=warn, taking
    turns in every round (in reverse order every other round, so that a drift of the machine
    does not favour one), same machine, same run.

    A ratio is the median over rounds of that round's req/s over bare's in the same round:
    on a 2-core machine shared with wrk, medians of the contenders taken apart moved by up to
    0.25 between runs of the same code, while neighbouring runs move together. `cpu_us` is
    the server's CPU time per request (user + system, all threads), which depends less on
    how the scheduler shared the cores."""
    ours = Ours(workdir, admin=True)
    quiet = Ours(workdir, log="warn", admin=True)
    rss_start = rss_mib(ours.proc.pid)
    results = []
    try:
        for server, path, bare_name, framework in CASES:
            peer_log = Path(workdir) / f"peer-{bare_name}.log"
            bare, peer = Bare(bare_name), Bare(bare_name, log_to=peer_log)
            urls = {"bare": bare.url(path), "peer": peer.url(path),
                    "ours": ours.url(server, path), "ours_quiet": quiet.url(server, path)}
            pids = {"bare": bare.proc.pid, "peer": peer.proc.pid, "ours": ours.proc.pid,
                    "ours_quiet": quiet.proc.pid}
            runs = {c: [] for c in CONTENDERS}
            try:
                for c in CONTENDERS:
                    wrk(urls[c], 1)  # warm-up
                for i in range(rounds):
                    for c in CONTENDERS if i % 2 == 0 else reversed(CONTENDERS):
                        runs[c].append(wrk_costed(urls[c], seconds, pids[c]))
            finally:
                bare.stop()
                peer.stop()
            row = {"framework": framework, "endpoint": f"GET {path}",
                   "peer_log_lines": sum(1 for _ in open(peer_log)),
                   "errors": sum(sum(r["socket_errors"].values()) + r["non_2xx"]
                                 for c in ("ours", "ours_quiet") for r in runs[c])}
            for c in CONTENDERS:
                row[c] = {k: median_of(runs[c], k) for k in ("rps", "p50_ms", "p99_ms", "cpu_us")}
                paired = [r["rps"] / b["rps"] for r, b in zip(runs[c], runs["bare"])]
                row[c]["ratio"] = statistics.median(paired)
                row[c]["ratio_quartiles"] = quartiles(paired)
            row["ratio"] = row["ours"]["ratio"]
            results.append(row)
        rss_loaded = rss_mib(ours.proc.pid)
        log_lines = sum(1 for _ in open(ours.log.name))
    finally:
        code, _ = ours.stop()
        quiet.stop()
    return results, {"rss_after_start_mib": rss_start, "rss_after_load_mib": rss_loaded,
                     "log_lines": log_lines, "exit": code}


# The contenders of the capacity table, each set against bare at the same moment.
CAPACITY = ("bare_again", "ours", "ours_quiet")


def capacity(workdir, seconds, rounds):
    """Per framework: what a request costs a server that has one CPU and more work than it
    can do. The contender and bare (one worker each) share one CPU, each loaded by its own
    `wrk -t1 -c50`, both wrks on a second CPU, at the same time; so a change of the machine's
    speed (on a VM it moves req/s by 25% between seconds) hits both alike. In each round,
    capacity is bare's CPU time per request over the contender's (the req/s one CPU would
    serve, relative to bare), with the contenders' req/s ratio next to it; medians over
    rounds, the start order alternating. `bare_again` is a second bare server: the method's
    own error. `server_cpu_busy` is the least share of the servers' CPU the two used in a
    round: under 1, the servers waited for requests at times (both wrks share one CPU), and
    the req/s ratio says less than the capacity, which is a cost per request either way.

    None when fewer than two CPUs can be used."""
    if not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2:
        return None
    server_cpu, load_cpu = sorted(os.sched_getaffinity(0))[:2]
    results = []
    with contextlib.ExitStack() as started:
        ours = Ours(workdir, admin=True, cpu=server_cpu)
        started.callback(ours.stop)
        quiet = Ours(workdir, log="warn", admin=True, cpu=server_cpu)
        started.callback(quiet.stop)
        for server, path, bare_name, framework in CASES:
            with contextlib.ExitStack() as bares:
                bare = Bare(bare_name, cpu=server_cpu)
                bares.callback(bare.stop)
                again = Bare(bare_name, cpu=server_cpu)
                bares.callback(again.stop)
                contender = {"bare_again": (again.url(path), again.proc.pid),
                             "ours": (ours.url(server, path), ours.proc.pid),
                             "ours_quiet": (quiet.url(server, path), quiet.proc.pid)}
                baseline = (bare.url(path), bare.proc.pid)
                runs = {c: [] for c in CAPACITY}
                for c in CAPACITY:
                    pair = [baseline, contender[c]]
                    wrk_side_by_side(pair, 1, load_cpu)  # warm-up
                    for i in range(rounds):
                        order = pair if i % 2 == 0 else pair[::-1]
                        got = wrk_side_by_side(order, seconds, load_cpu)
                        base, run = got if i % 2 == 0 else got[::-1]
                        runs[c].append((base, run))
            row = {"framework": framework, "endpoint": f"GET {path}",
                   "errors": sum(sum(r["socket_errors"].values()) + r["non_2xx"]
                                 for c in CAPACITY for pair in runs[c] for r in pair),
                   "server_cpu_busy": min(b["busy"] + r["busy"]
                                          for c in CAPACITY for b, r in runs[c])}
            for c in CAPACITY:
                cap = [b["cpu_ns"] / r["cpu_ns"] for b, r in runs[c]]
                rps = [r["rps"] / b["rps"] for b, r in runs[c]]
                row[c] = {
                    "capacity": statistics.median(cap),
                    "capacity_quartiles": quartiles(cap),
                    "rps_ratio": statistics.median(rps),
                    "cpu_ns": statistics.median(r["cpu_ns"] for _, r in runs[c]),
                    "bare_cpu_ns": statistics.median(b["cpu_ns"] for b, _ in runs[c]),
                    "p99_ms": median_of([r for _, r in runs[c]], "p99_ms"),
                    "bare_p99_ms": median_of([b for b, _ in runs[c]], "p99_ms"),
                }
            results.append(row)
    return {"server_cpu": server_cpu, "load_cpu": load_cpu, "rows": results}


def quartiles(values):
    """First and third quartile (inclusive: within the values, however few)."""
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return [q[0], q[2]]


def startup(workdir, runs):
    """exec -> every server answering /__healthz, with every delay 0."""
    times = []
    for _ in range(runs):
        ours = Ours(workdir)
        for addr in ours.urls.values():
            while http_get(addr, "/__healthz") != 200:
                if time.perf_counter() - ours.started > 10:
                    sys.exit("a server never answered /__healthz")
        times.append((time.perf_counter() - ours.started) * 1e3)
        ours.stop()
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times)}


def probe(addr, signalled, tally, stop):
    """One keep-alive client on GET /greet that records what became of each request:
    answered, lost (sent before the signal and never answered), or refused/closed after."""
    request = f"GET /greet HTTP/1.1\r\nHost: {addr[0]}\r\n\r\n".encode()
    while not stop.is_set():
        try:
            conn = socket.create_connection(addr, timeout=5)
        except ConnectionRefusedError:
            tally["refused_after_signal" if signalled[0] else "refused_before_signal"] += 1
            if signalled[0]:
                return
            continue
        except OSError:
            tally["lost"] += 1
            return
        with conn:
            while not stop.is_set():
                sent_before_signal = not signalled[0]
                try:
                    conn.sendall(request)
                    buf = b""
                    while b"\r\n\r\n" not in buf:
                        chunk = conn.recv(4096)
                        if not chunk:
                            raise ConnectionResetError("closed")
                        buf += chunk
                    head, body = buf.split(b"\r\n\r\n", 1)
                    length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
                    while len(body) < length:
                        chunk = conn.recv(4096)
                        if not chunk:
                            raise ConnectionResetError("closed mid-body")
                        body += chunk
                except OSError:
                    # Before the signal nothing may fail; after it, a keep-alive connection
                    # closed under a request in flight is HTTP/1.1's race (clients retry).
                    tally["lost" if sent_before_signal else "closed_after_signal"] += 1
                    break
                if not head.startswith(b"HTTP/1.1 200"):
                    tally["lost"] += 1
                    break
                tally["ok"] += 1
                if re.search(rb"connection: close", head, re.I):
                    break


def shutdown(workdir, runs, load):
    """SIGTERM -> exit, idle or under wrk -c50 on /greet. Under load, 8 probe clients next to
    wrk account for every request: none sent before the signal may fail."""
    import threading
    times, tallies = [], []
    for _ in range(runs):
        ours = Ours(workdir)
        if load:
            w = subprocess.Popen(["wrk", "-t2", "-c50", "-d3s", ours.url("flows", "/greet")],
                                 stdout=subprocess.DEVNULL)
            signalled, stop = [False], threading.Event()
            tally = dict(ok=0, lost=0, refused_before_signal=0, refused_after_signal=0,
                         closed_after_signal=0)
            probes = [threading.Thread(target=probe, args=(ours.urls["flows"], signalled, tally, stop))
                      for _ in range(8)]
            for t in probes:
                t.start()
            time.sleep(1.0)
            signalled[0] = True
        code, ms = ours.stop()
        times.append(ms)
        if load:
            stop.set()
            for t in probes:
                t.join(timeout=10)
            w.wait(timeout=30)
            tallies.append(tally)
        if code != 0:
            sys.exit(f"exit status {code} after SIGTERM")
    result = {"median_ms": statistics.median(times), "max_ms": max(times)}
    if load:
        for key in tallies[0]:
            result[f"probe_{key}"] = sum(t[key] for t in tallies)
    return result


def scale(sizes):
    rows = []
    for n in sizes:
        out = subprocess.run(["bash", "-c", f'ulimit -n 8192 && exec "{RELEASE / "scale"}" {n}'],
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            sys.exit(f"scale {n} failed: {out.stderr}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def reflection(workdir, seconds, rounds):
    """runAction of multi_server_flow against the same server's GET /api/__health."""
    script = Path(workdir) / "run_action.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      'wrk.body = \'{"key":"/flow/multi_server_flow","input":"Alice"}\'\n')
    ours = Ours(workdir)
    try:
        health, run = [], []
        for _ in range(rounds):
            health.append(wrk(ours.url("reflection", "/api/__health"), seconds))
            run.append(wrk(ours.url("reflection", "/api/runAction"), seconds, script=str(script)))
    finally:
        ours.stop()
    h = {k: median_of(health, k) for k in ("rps", "p50_ms", "p99_ms")}
    r = {k: median_of(run, k) for k in ("rps", "p50_ms", "p99_ms")}
    return {"health": h, "run_action": r, "ratio": r["rps"] / h["rps"],
            "errors": sum(sum(x["socket_errors"].values()) + x["non_2xx"] for x in run)}


def fmt(v, digits=0):
    return "-" if v is None else f"{v:,.{digits}f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=int, default=2, help="length of each wrk run")
    ap.add_argument("--rounds", type=int, default=9, help="alternating runs per comparison")
    ap.add_argument("--runs", type=int, default=10, help="start/stop runs for the medians")
    ap.add_argument("--out", default=str(TARGET / "bench" / "results.json"))
    args = ap.parse_args()
    if args.rounds < 1 or args.seconds < 1 or args.runs < 1:
        ap.error("--seconds, --rounds and --runs must be at least 1")
    workdir = scratch_dir("multi-server-bench-")

    over, memory = overhead(workdir, args.seconds, args.rounds)
    cap = capacity(workdir, args.seconds, args.rounds)
    start = startup(workdir, args.runs)
    idle = shutdown(workdir, args.runs, load=False)
    loaded = shutdown(workdir, args.runs, load=True)
    sizes = scale([1, 16, 128, 512])
    refl = reflection(workdir, args.seconds, args.rounds)

    results = {"machine": {"cpus": os.cpu_count(), "kernel": os.uname().release},
               "settings": vars(args), "overhead": over, "capacity": cap, "memory": memory,
               "startup": start, "shutdown_idle": idle, "shutdown_loaded": loaded, "scale": sizes,
               "reflection": refl, "original_python_sample": ORIGINAL}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))

    print(f"## multi-server benchmarks ({os.cpu_count()} CPUs; wrk -t2 -c50, "
          f"{args.seconds}s x {args.rounds} alternating rounds, medians)\n")
    print("### 1. Manager overhead: bare, peer (bare + the framework's own request logger, to a file), "
          "ours (manager + edge + every request logged to a file), ours with RUST_LOG=warn\n")
    print("Ratios: the median over rounds of req/s / bare's req/s in the same round, with the "
          "quartiles. CPU: the server's CPU time per request (user + system, all threads).\n")
    print("| server | endpoint | bare req/s | peer req/s (ratio) | ours req/s (ratio, goal >= 0.95) "
          "| ours quiet req/s (ratio) | p99 ms bare / peer / ours / quiet "
          "| CPU us/req bare / peer / ours / quiet |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in over:
        cells = " | ".join(
            f"{fmt(r[c]['rps'])} ({r[c]['ratio']:.3f}; {r[c]['ratio_quartiles'][0]:.2f}-"
            f"{r[c]['ratio_quartiles'][1]:.2f})" for c in CONTENDERS[1:])
        p99 = " / ".join(fmt(r[c]["p99_ms"], 2) for c in CONTENDERS)
        cpu = " / ".join(f"{r[c]['cpu_us']:.2f}" for c in CONTENDERS)
        print(f"| {r['framework']} | {r['endpoint']} | {fmt(r['bare']['rps'])} | {cells} | {p99} "
              f"| {cpu} |")
    print(f"\nErrors during our load runs: {sum(r['errors'] for r in over)}; "
          f"request log lines written: ours {memory['log_lines']:,}, peers "
          f"{sum(r['peer_log_lines'] for r in over):,}\n")
    if cap is None:
        print("### 1b. Capacity: left out (it needs two CPUs)\n")
    else:
        print("### 1b. Capacity on one CPU: each contender and bare share CPU "
              f"{cap['server_cpu']}, loaded at the same time by a wrk -t1 -c50 each on CPU "
              f"{cap['load_cpu']} "
              "(one worker per server)\n")
        print("Capacity: bare's CPU time per request over the contender's, in the same round "
              "(median, quartiles): the req/s one CPU serves, relative to bare (goal >= 0.95). "
              "A second bare server measures the method's own error.\n")
        print("| server | endpoint | bare again | ours (req/s ratio) | ours quiet (req/s ratio) "
              "| CPU ns/req bare / ours, same rounds | p99 ms bare / ours, same rounds "
              "| servers' CPU busy, least |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for r in cap["rows"]:
            cells = " | ".join(
                f"{r[c]['capacity']:.3f} ({r[c]['capacity_quartiles'][0]:.3f}-"
                f"{r[c]['capacity_quartiles'][1]:.3f})"
                + ("" if c == "bare_again" else f" ({r[c]['rps_ratio']:.3f})") for c in CAPACITY)
            # Only within one pairing: the machine's speed moves between pairings.
            cpu = f"{r['ours']['bare_cpu_ns']:,.0f} / {r['ours']['cpu_ns']:,.0f}"
            p99 = f"{fmt(r['ours']['bare_p99_ms'], 2)} / {fmt(r['ours']['p99_ms'], 2)}"
            print(f"| {r['framework']} | {r['endpoint']} | {cells} | {cpu} | {p99} "
                  f"| {r['server_cpu_busy']:.2f} |")
        print(f"\nErrors during the capacity runs: {sum(r['errors'] for r in cap['rows'])}\n")
    print("### 2-4. Startup, shutdown, memory (original Python sample in brackets)\n")
    print("| measure | figure | goal |")
    print("|---|---:|---|")
    print(f"| exec -> all 3 servers answer /__healthz, median of {args.runs} | {start['median_ms']:.1f} ms "
          f"(min {start['min_ms']:.1f}, max {start['max_ms']:.1f}) [820 ms] | <= 20 ms |")
    print(f"| SIGTERM -> exit, idle, median of {args.runs} | {idle['median_ms']:.1f} ms (max {idle['max_ms']:.1f}) [416 ms] | <= 50 ms |")
    print(f"| SIGTERM -> exit under wrk -c50, median of {args.runs} | {loaded['median_ms']:.1f} ms (max {loaded['max_ms']:.1f}) [~600 ms] | - |")
    print(f"| probe requests sent before SIGTERM that failed, all loaded runs | {loaded['probe_lost']} "
          f"(of {loaded['probe_ok'] + loaded['probe_lost']:,} probe requests; after the signal: "
          f"{loaded['probe_refused_after_signal']} refused, {loaded['probe_closed_after_signal']} "
          f"keep-alive closes) | 0 |")
    print(f"| RSS after start (3 servers) | {memory['rss_after_start_mib']:.1f} MiB [75 MiB] | <= 20 MiB |")
    print(f"| RSS after the load runs | {memory['rss_after_load_mib']:.1f} MiB | <= 20 MiB |")
    print("\n### 5. Scale: N servers, frameworks in turn (actix with 1 worker)\n")
    print("| N | manager live ms | all answered /__healthz ms | stop ms | RSS MiB | RSS per server KiB |")
    print("|---:|---:|---:|---:|---:|---:|")
    for s in sizes:
        print(f"| {s['servers']} | {s['live_ms']:.1f} | {s['all_answered_ms']:.1f} | {s['stop_ms']:.1f} "
              f"| {s['rss_mib']:.1f} | {s['rss_per_server_kib']:.0f} |")
    print("\n### 6. Reflection: runAction(multi_server_flow) vs GET /api/__health, same server\n")
    print("| endpoint | req/s | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|")
    print(f"| GET /api/__health (baseline) | {fmt(refl['health']['rps'])} | {fmt(refl['health']['p50_ms'], 2)} | {fmt(refl['health']['p99_ms'], 2)} |")
    print(f"| POST /api/runAction [original ~1,680 req/s] | {fmt(refl['run_action']['rps'])} | {fmt(refl['run_action']['p50_ms'], 2)} | {fmt(refl['run_action']['p99_ms'], 2)} |")
    print(f"\nrunAction / health = {refl['ratio']:.2f}; errors during runAction load: {refl['errors']}")
    print(f"\nJSON: {args.out}")


if __name__ == "__main__":
    main()
