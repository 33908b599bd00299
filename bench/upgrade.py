#!/usr/bin/env python3
"""In-place upgrade figures (issue 13), on the release binary in dev mode (all four servers).

1. Five upgrades in a row (POST /__upgradez) under `wrk -c50` on the flows API, with probe
   clients on every server (one opening a new connection per request, one keep-alive):
   requests failed, refused and reset; for each upgrade, a slow request (a streamed flow of
   about 2 s) begun just before it, which must finish on the old process; the time from the
   trigger to the new process answering; each old process's exit status (this script is a
   child subreaper, so every successor's exit status comes back to it).
2. A new binary that fails: one that exits 1, one that hangs (never ready; --upgrade-timeout
   2s): the old process keeps serving, with the probes' failures counted.

Usage: bench/upgrade.sh (builds the release binary first).
"""
import ctypes
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time

import bench

PR_SET_CHILD_SUBREAPER = 36


def start(extra=()):
    """The release binary in dev mode with the admin listener (bench.Ours), JSON logs; its
    stdout drained from then on (successors print their banner there too)."""
    ours = bench.Ours(bench.scratch_dir("upgrade-bench-"),
                      extra=["--log-format", "json", *extra], admin=True)
    threading.Thread(target=ours.proc.stdout.read, daemon=True).start()
    urls = {name: ours.url(name, "") for name in ours.urls}
    return ours.proc, urls


def request(url, method="GET", path="/__healthz", body=None, keep=None, timeout=15):
    host = url.removeprefix("http://")
    conn = keep or http.client.HTTPConnection(host, timeout=timeout)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if keep is None:
        headers["Connection"] = "close"
    conn.request(method, path, body=body, headers=headers)
    res = conn.getresponse()
    data = res.read()
    if res.getheader("Connection", "").lower() == "close" and keep is not None:
        conn.close()
    if keep is None:
        conn.close()
    return res.status, data


class Probes:
    def __init__(self, urls):
        self.stop = False
        # idle_closed: a keep-alive connection the server closed while idle, just as the client
        # reused it (the race every keep-alive client has; HTTP clients retry it on a new
        # connection, and so does this one: the retry is counted as its own request).
        self.counts = {"ok": 0, "failed": 0, "refused": 0, "reset": 0, "idle_closed": 0}
        self.errors = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(u, k), daemon=True) for u in urls for k in (False, True)]
        for t in self.threads:
            t.start()

    def count(self, what, detail=None):
        with self.lock:
            self.counts[what] += 1
            if detail and len(self.errors) < 20:
                self.errors.append(detail)

    def run(self, url, keep_alive):
        conn = None
        while not self.stop:
            try:
                if keep_alive and conn is None:
                    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
                status, _ = request(url, keep=conn if keep_alive else None)
                if keep_alive and conn.sock is None:
                    conn = None  # the server said Connection: close; the next request reconnects
                self.count("ok" if status == 200 else "failed", None if status == 200 else f"{url} {status}")
            except ConnectionRefusedError as e:
                self.count("refused", f"{url} {e}")
                conn = None
            except ConnectionResetError as e:
                self.count("reset", f"{url} {e}")
                conn = None
            except (http.client.RemoteDisconnected, BrokenPipeError) as e:
                # A keep-alive connection the server closed while idle: the client retries
                # at once on a new one (what every HTTP client library does); not a failure.
                conn = None
                self.count("idle_closed" if keep_alive else "reset", f"{url} {e!r}")
                continue
            except Exception as e:  # noqa: BLE001
                self.count("failed", f"{url} {e!r}")
                conn = None
            time.sleep(0.002)

    def finish(self):
        self.stop = True
        for t in self.threads:
            t.join()
        return self.counts, self.errors


def server_pid(admin):
    try:
        return json.loads(request(admin, path="/__serverz")[1])["pid"]
    except Exception:  # noqa: BLE001
        return None


def wait_exit(pid, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    return None


def five_in_a_row():
    proc, urls = start()
    admin, flows = urls["admin"], urls["flows"]
    print(" servers:", urls)
    probes = Probes(list(urls.values()))
    wrk = subprocess.Popen(["wrk", "-t2", "-c50", "-d25s", f"{flows}/greet"], stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    rows = []
    pid = proc.pid
    for n in range(1, 6):
        slow = {}

        def slow_request():
            body = json.dumps({"name": "Slow", "interval_ms": 250})
            try:
                status, data = request(flows, "POST", "/flow/streaming_greeting", body, timeout=30)
                slow["result"] = (status, b"word by word" in data)
            except Exception as e:  # noqa: BLE001
                slow["result"] = (repr(e), False)

        t = threading.Thread(target=slow_request)
        t.start()
        time.sleep(0.3)
        began = time.time()
        status, data = request(admin, "POST", "/__upgradez", body="")
        new_pid = json.loads(data)["new_pid"]
        while server_pid(admin) != new_pid and time.time() - began < 30:
            time.sleep(0.005)
        took = (time.time() - began) * 1000
        t.join()
        code = proc.wait(30) if pid == proc.pid else wait_exit(pid)
        rows.append((n, status, pid, new_pid, took, slow["result"], code))
        pid = new_pid
        time.sleep(1.5)
    wrk_out = wrk.communicate()[0]
    counts, errors = probes.finish()
    os.kill(pid, signal.SIGTERM)
    last = wait_exit(pid)
    print("in-place upgrade, five in a row under wrk -c50 on flows + 8 probe clients (4 servers x new/keep-alive):")
    print(" n  answer  old pid -> new pid   trigger->new serving   slow request (status, complete)   old exit")
    for n, status, old, new, took, slow_result, code in rows:
        print(f" {n}  {status}     {old:>7} -> {new:<7}  {took:8.1f} ms            {str(slow_result):<30}   {code}")
    summary = bench.wrk_summary(wrk_out)
    requests, non2xx = summary["requests"], summary["non_2xx"]
    connect, read, write, timeout = (summary["socket_errors"].get(k, 0)
                                     for k in ("connect", "read", "write", "timeout"))
    print(f" wrk: {requests} requests, socket errors connect {connect} read {read} write {write} timeout {timeout}, non-2xx {non2xx}")
    print(f" probes: {counts}  {errors[:5]}")
    print(f" last process exit: {last}")
    return rows, counts, (connect, read, write, timeout, non2xx)


def failing(label, script, timeout):
    path = os.path.join(bench.scratch_dir("upgrade-bench-"), "new-binary")
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\n{script}\n")
    os.chmod(path, 0o755)
    proc, urls = start(["--upgrade-binary", path, "--upgrade-timeout", timeout])
    admin = urls["admin"]
    probes = Probes(list(urls.values()))
    time.sleep(0.5)
    began = time.time()
    status, data = request(admin, "POST", "/__upgradez", body="")
    state = {}
    while time.time() - began < 30:
        state = json.loads(request(admin, path="/__serverz")[1]).get("upgrade") or {}
        if state.get("state") == "failed":
            break
        time.sleep(0.01)
    took = (time.time() - began) * 1000
    time.sleep(0.5)
    same = server_pid(admin) == proc.pid
    counts, errors = probes.finish()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(30)
    print(f"failing new binary ({label}): answer {status}, failed after {took:.0f} ms: {state.get('error')!r}; "
          f"old still serving: {same}; probes {counts} {errors[:3]}; old exit {code}")


def main():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("warning: cannot become a child subreaper; old exit statuses after the first are unknown")
    five_in_a_row()
    failing("exits 1", "echo 'new binary: cannot open its database' >&2; exit 1", "30s")
    failing("hangs before ready", "exec sleep 60", "2s")


if __name__ == "__main__":
    sys.exit(main())
