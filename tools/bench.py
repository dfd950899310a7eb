"""`make bench`: native vs through the backbone, side by side, in one run, against the targets.

Every case runs the same program twice per repeat, alternately:
- natively: in a network namespace of its own with only loopback up (`unshare --net`), as the
  INS's is, so both sides see the same network;
- forwarded: under `mwcomms run` against a backbone this harness brings up (`mwcomms up`, sim
  backend) and takes down. The micro-benchmarks (round trips, bulk, connection rate) run both
  ends under the shim, so every byte crosses mwcommsd and the rings twice; the real workloads
  run the server under the shim and the load generator natively in the INS's namespace, where
  it stands for the network (redis2/http2: both ends under the shim, no target); `hold` runs
  the client under the shim and the server in the INS's namespace.

The load programs are C (tools/bench/mwload.c, compiled here with gcc) wherever Python would be
the bottleneck; the real workloads are Debian's redis-benchmark against redis-server and wrk
against nginx (tools/bench/install-deps.sh installs them). Results: a ratio table on stdout,
<out>/results.json (one object per case) and <out>/results.png (bench_report).

    python -m mwcomms.tools.bench [--quick] [--cases a,b] [--repeats N] [--hog N] [--out DIR]

Benchmarks are not tests: nothing here asserts a speed; targets are printed as met/missed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform as _platform
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Callable

from mwcomms.tools import bench_report

MWCOMMS = os.path.join(os.path.dirname(sys.executable), "mwcomms")
RUN_TIMEOUT = 180


class BenchError(Exception):
    """One run of one case failed; the case is reported as failed, the bench goes on."""


@dataclass(frozen=True)
class Target:
    """A target from the issue: forwarded/native ratio `op` `goal` (and a must-have bound),
    or, with absolute=True, the forwarded value itself against `goal`."""
    op: str                     # "<=" or ">="
    goal: float
    must: float | None = None
    absolute: bool = False

    def met(self, value: float | None, bound: float | None = None) -> bool | None:
        bound = self.goal if bound is None else bound
        if value is None or bound is None:
            return None
        return value <= bound if self.op == "<=" else value >= bound

    def describe(self) -> str:
        what = "" if self.absolute else "x"
        must = f" (must {self.op} {self.must:g}{what})" if self.must is not None else ""
        return f"{self.op} {self.goal:g}{what}{must}"


@dataclass(frozen=True)
class Metric:
    """One row of the table: a value taken from each run's JSON by `key`."""
    name: str
    title: str
    unit: str
    key: str
    better: str                 # "lower" or "higher"
    target: Target | None = None
    scale: float = 1.0          # JSON value * scale = value in `unit`


@dataclass
class Case:
    """A benchmark: how to run it on one side, and which metrics its runs yield."""
    name: str
    metrics: list[Metric]
    run: Callable[["Side", "Params"], dict]
    op: str = "operation"                               # what one of its runs' "ops" is
    needs: list[str] = field(default_factory=list)      # programs it needs on PATH


@dataclass
class Params:
    """Sizes of one bench run (--quick shrinks them)."""
    # more, shorter repeats rather than fewer long ones: on a shared machine the median of
    # many short runs is what survives other people's bursts
    repeats: int = 7
    rr_count: int = 20000
    udp_count: int = 20000
    bulk_seconds: float = 1.5
    connect_seconds: float = 1.5
    conns: int = 10000
    redis_requests: int = 30000
    http_seconds: int = 2

    @classmethod
    def quick(cls) -> "Params":
        return cls(repeats=3, rr_count=3000, udp_count=3000, bulk_seconds=0.5,
                   connect_seconds=0.5, conns=1000, redis_requests=5000, http_seconds=1)

    @classmethod
    def smoke(cls) -> "Params":
        return cls(repeats=2, rr_count=200, udp_count=200, bulk_seconds=0.2, connect_seconds=0.2,
                   conns=50, redis_requests=500, http_seconds=1)


class Side:
    """Where a program runs: natively (own network namespace) or forwarded (mwcomms run)."""

    def __init__(self, name: str, prefix: list[str], env: dict):
        self.name = name
        self.prefix = prefix
        self.env = env
        self.mwload = ""        # set once compiled
        self.daemons: dict[str, int] = {}    # forwarded: mwcommsd and INS pids
        self.netns: str | None = None          # forwarded: the INS's network namespace
        self.overhead: dict[str, float] = {}    # what starting a program here costs

    def calibrate(self, n: int = 3) -> None:
        """Measure what starting a program costs on this side (unshare + sh, or `mwcomms run`,
        a Python program): it is taken off each run's CPU and switch counts, so that they
        are the load's own. Median of @n runs of `true`."""
        costs = []
        for _ in range(n):
            c0 = _cpu(self)
            self.run(["true"])
            c1 = _cpu(self)
            costs.append({k: c1[k] - c0[k] for k in c1})
        self.overhead = {"apps_cpu_s": statistics.median(c["apps_cpu_s"] for c in costs),
                         "apps_switches": statistics.median(c["apps_switches"] for c in costs)}

    def cmd(self, argv: list[str]) -> list[str]:
        return self.prefix + argv

    def run(self, argv: list[str], timeout: float = RUN_TIMEOUT) -> str:
        p = subprocess.Popen(self.cmd(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=self.env, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # the whole process group: servers a script started in the background too
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            raise BenchError(f"{self.name}: {argv[0]} did not finish within {timeout:.0f} s") from None
        if p.returncode != 0:
            tail = (out + err).strip().splitlines()[-6:]
            raise BenchError(f"{self.name}: {' '.join(argv[:2])} exited {p.returncode}: "
                             + " | ".join(tail))
        return out

    def mwload_json(self, *args: str, timeout: float = RUN_TIMEOUT) -> dict:
        out = self.run([self.mwload, *args], timeout)
        for line in out.splitlines():
            if line.startswith("{"):
                res = json.loads(line)
                if "error" in res:
                    raise BenchError(f"{self.name}: mwload {args[0]}: {res['error']}")
                return res
        raise BenchError(f"{self.name}: mwload {args[0]} printed no result: {out[-300:]}")


def native_side(env: dict) -> Side:
    unshare = ["unshare", "--net"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    return Side("native", unshare + ["--", "sh", "-c", 'ip link set lo up && exec "$0" "$@"'], env)


def forwarded_side(run_dir: str, env: dict) -> Side:
    return Side("forwarded", [MWCOMMS, "--dir", run_dir, "run", "--"], env)


# --- the cases -----------------------------------------------------------------------------

ROUND_TRIP = Target("<=", 1.5, must=2.0)
THROUGHPUT = Target(">=", 0.6, must=0.5)
CONN_RATE = Target(">=", 0.3)
WORKLOAD = Target(">=", 0.5)
MEMORY = Target("<=", 16.0, absolute=True)


# Each run's "ops" counts what it did (round trips with the warm-up, 64 KiB moved,
# connections, requests), so that CPU and context switches can be given per operation.

def run_rr(side: Side, p: Params) -> dict:
    warmup = max(100, p.rr_count // 10)
    res = side.mwload_json("rr", "--size", "64", "--count", str(p.rr_count), "--warmup", str(warmup))
    return dict(res, ops=p.rr_count + warmup)


def run_udp(side: Side, p: Params) -> dict:
    warmup = max(100, p.udp_count // 10)
    res = side.mwload_json("udp", "--size", "64", "--count", str(p.udp_count), "--warmup", str(warmup))
    return dict(res, ops=p.udp_count + warmup)


def run_bulk(streams: int) -> Callable[[Side, Params], dict]:
    def run(side: Side, p: Params) -> dict:
        res = side.mwload_json("bulk", "--streams", str(streams), "--seconds", str(p.bulk_seconds))
        return dict(res, ops=res["bytes"] / 65536)
    return run


def run_connect(side: Side, p: Params) -> dict:
    res = side.mwload_json("connect", "--seconds", str(p.connect_seconds))
    return dict(res, ops=res["count"])


def _mem(pid: int) -> dict:
    """Rss and Pss of a process in bytes (smaps_rollup), or zeros when it is gone."""
    out = {"rss": 0, "pss": 0}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Rss", "Pss"):
                    out[key.lower()] = int(rest.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return out


def _slab() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Slab:"):
                return int(line.split()[1]) * 1024
    return 0


def _read_json_line(proc: subprocess.Popen, timeout: float) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, end - time.monotonic()))
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:
            raise BenchError(f"mwload hold ended early: {proc.stderr.read()[-300:]}")
        if line.startswith("{"):
            res = json.loads(line)
            if "error" in res:
                raise BenchError(f"mwload hold: {res['error']}")
            return res
    raise BenchError(f"mwload hold said nothing within {timeout:.0f} s")


def _stop(proc: subprocess.Popen | None) -> None:
    """End a program that holds until its stdin closes."""
    if proc is None:
        return
    try:
        proc.stdin.close()
    except BrokenPipeError:
        pass
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_hold(side: Side, p: Params) -> dict:
    """Open p.conns idle connections and measure how much user-space memory that cost: the
    programs' own processes, and mwcommsd's and the INS's when forwarded (Pss: pages shared
    between the two daemons counted once).

    Natively both ends are one program. Forwarded, the client runs under the shim and the
    server natively in the INS's network namespace: each connection is then one forwarded
    socket, as for an application talking to the outside, and 10,000 of them fit in the
    daemons' fd limits (both ends forwarded would need 20,000 fds in each daemon)."""
    opened = lambda argv: subprocess.Popen(  # noqa: E731
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=side.env, start_new_session=True)
    server = proc = None
    try:
        argv = [side.mwload, "hold", "--conns", str(p.conns)]
        apps: list[int] = []
        if side.daemons:
            prefix = ["ip", "netns", "exec", side.netns] if side.netns else []
            server = opened(prefix + [side.mwload, "accept", "--conns", str(p.conns)])
            listening = _read_json_line(server, 30)
            apps += listening["pids"]
            argv += ["--port", str(listening["port"])]
        proc = opened(side.cmd(argv))
        start = _read_json_line(proc, 60)
        apps += start["pids"]
        watched = {**side.daemons, **{f"app{i}": a for i, a in enumerate(apps)}}
        time.sleep(0.2)
        before = {name: _mem(pid) for name, pid in watched.items()}
        slab0 = _slab()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        ready = _read_json_line(proc, max(60.0, p.conns / 50))
        time.sleep(0.5)     # let the accepts finish and the daemons settle
        after = {name: _mem(pid) for name, pid in watched.items()}
        slab1 = _slab()
    finally:
        _stop(proc)
        _stop(server)
    n = ready["conns"]
    if n <= 0:
        raise BenchError(f"{side.name}: no connection could be opened ({ready.get('stopped_by')})")

    def per_conn(names: list[str], key: str) -> float:
        return sum(after[k][key] - before[k][key] for k in names) / n

    app_names = [k for k in after if k.startswith("app")]
    daemon_names = list(side.daemons)
    res = {"conns": n, "ops": n, "wanted": ready["wanted"], "stopped_by": ready["stopped_by"],
           "forwarded_sockets_per_conn": 1 if side.daemons else 0,
           "apps_rss_per_conn": per_conn(app_names, "rss"),
           "kernel_slab_per_conn": (slab1 - slab0) / n}
    for name in daemon_names:
        res[f"{name}_pss_per_conn"] = per_conn([name], "pss")
        res[f"{name}_rss_per_conn"] = per_conn([name], "rss")
        res[f"{name}_pss_total"] = after[name]["pss"]
    # what the table compares: user-space memory per connection, everything this side runs
    res["user_per_conn"] = res["apps_rss_per_conn"] + (per_conn(daemon_names, "pss")
                                                       if daemon_names else 0.0)
    return res


_REDIS_PORT, _HTTP_PORT = 6390, 8090


def _serve_and_load(side: Side, server: str, port: int, load: str, both: bool) -> str:
    """Run the shell command @server, wait until it listens on @port, run the shell command
    @load against it and return what @load printed; then stop the server.

    Natively, and forwarded with @both, both are one script on @side (forwarded: both ends
    under the shim, every request crosses the backbone twice). Forwarded without @both, the
    server alone runs under the shim (the protected program) and the load generator natively
    in the INS's network namespace, where it stands for the network: that is how a protected
    server is used (its clients come from outside, through the INS), and each request crosses
    the backbone once."""
    wait = f'"$0" wait --port {port} --seconds 30 || exit 1\n'
    if not side.daemons or both:
        return side.run(["sh", "-c", f'{server} & pid=$!\ntrap "kill $pid; wait $pid" EXIT\n'
                         f"{wait}{load}\n", side.mwload])
    srv = subprocess.Popen(side.cmd(["sh", "-c", f"exec {server}"]), stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=side.env, start_new_session=True)
    try:
        # the INS's namespace; without one (no root, no ip) the INS shares the host's
        gen = Side(side.name, ["ip", "netns", "exec", side.netns] if side.netns else [], side.env)
        try:
            return gen.run(["sh", "-c", f"{wait}{load}\n", side.mwload])
        except BenchError as exc:
            if srv.poll() is not None:
                raise BenchError(f"{exc} (the server exited {srv.returncode})") from None
            raise
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(srv.pid, sig)
                srv.wait(timeout=30)
                break
            except ProcessLookupError:
                srv.wait()
                break
            except subprocess.TimeoutExpired:
                continue


def run_redis(both: bool) -> Callable[[Side, Params], dict]:
    def run(side: Side, p: Params) -> dict:
        server = (f'redis-server --port {_REDIS_PORT} --bind 127.0.0.1 --save "" '
                  f'--appendonly no --protected-mode no --loglevel warning --daemonize no '
                  f'>/dev/null')
        load = (f'redis-benchmark -h 127.0.0.1 -p {_REDIS_PORT} -c 50 -n {p.redis_requests} '
                f'-t set,get --csv')
        out = _serve_and_load(side, server, _REDIS_PORT, load, both)
        res = {}
        for line in out.splitlines():
            cols = [c.strip('"') for c in line.split('","')]
            if len(cols) > 1 and cols[0] in ("SET", "GET"):
                res[cols[0].lower() + "_per_s"] = float(cols[1])
        if len(res) != 2:
            raise BenchError(f"{side.name}: redis-benchmark printed no SET/GET rates: {out[-300:]}")
        return dict(res, ops=2 * p.redis_requests)
    return run


_NGINX_CONF = """daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {d}/www;
        location / {{ }}
    }}
}}
"""


def run_http(both: bool) -> Callable[[Side, Params], dict]:
    def run(side: Side, p: Params) -> dict:
        d = tempfile.mkdtemp(prefix="mwbench-nginx", dir="/tmp")
        try:
            os.makedirs(os.path.join(d, "www"))
            with open(os.path.join(d, "www", "index.html"), "w") as f:
                f.write("<html><body>" + "mwcomms bench " * 70 + "</body></html>\n")  # ~1 KiB
            with open(os.path.join(d, "nginx.conf"), "w") as f:
                f.write(_NGINX_CONF.format(d=d, port=_HTTP_PORT))
            out = _serve_and_load(
                side, f"nginx -p {d} -c {d}/nginx.conf -e {d}/error.log", _HTTP_PORT,
                f"wrk -t 1 -c 16 -d {max(1, round(p.http_seconds))}s "
                f"http://127.0.0.1:{_HTTP_PORT}/index.html", both)
        finally:
            shutil.rmtree(d, ignore_errors=True)
        requests = None
        for line in out.splitlines():
            if " requests in " in line:
                requests = int(line.split()[0])
            if line.startswith("Requests/sec:"):
                return {"req_per_s": float(line.split()[1]), "ops": requests}
        raise BenchError(f"{side.name}: wrk printed no rate: {out[-300:]}")
    return run


CASES = [
    Case("tcp_rr", [
        Metric("tcp_rr_p50", "TCP 64 B round trip p50", "us", "p50_us", "lower", ROUND_TRIP),
        Metric("tcp_rr_p99", "TCP 64 B round trip p99", "us", "p99_us", "lower", ROUND_TRIP)],
        run_rr, op="round trip"),
    Case("udp_rr", [
        Metric("udp_rr_p50", "UDP 64 B round trip p50", "us", "p50_us", "lower", ROUND_TRIP),
        Metric("udp_rr_p99", "UDP 64 B round trip p99", "us", "p99_us", "lower", ROUND_TRIP)],
        run_udp, op="round trip"),
    Case("bulk1", [Metric("bulk_1", "TCP bulk, 1 stream", "MB/s", "bytes_per_s", "higher",
                          THROUGHPUT, 1e-6)], run_bulk(1), op="64 KiB"),
    Case("bulk8", [Metric("bulk_8", "TCP bulk, 8 streams", "MB/s", "bytes_per_s", "higher",
                          THROUGHPUT, 1e-6)], run_bulk(8), op="64 KiB"),
    Case("connect", [Metric("conn_rate", "connect+accept+close", "1/s", "per_s", "higher",
                            CONN_RATE)], run_connect, op="connection"),
    Case("hold", [Metric("conn_memory", "idle connection, user-space memory", "KiB/conn",
                         "user_per_conn", "lower", MEMORY, 1 / 1024)], run_hold, op="connection"),
    Case("redis", [
        Metric("redis_set", "redis-benchmark SET", "req/s", "set_per_s", "higher", WORKLOAD),
        Metric("redis_get", "redis-benchmark GET", "req/s", "get_per_s", "higher", WORKLOAD)],
        run_redis(both=False), op="request", needs=["redis-server", "redis-benchmark"]),
    Case("http", [Metric("http", "wrk against nginx, 1 KiB page", "req/s", "req_per_s", "higher",
                         WORKLOAD)], run_http(both=False), op="request", needs=["nginx", "wrk"]),
    # the same with both ends under the shim: no target (the targets are for a program
    # and its network; this is two protected programs talking through the INS)
    Case("redis2", [
        Metric("redis2_set", "redis SET, both ends forwarded", "req/s", "set_per_s", "higher"),
        Metric("redis2_get", "redis GET, both ends forwarded", "req/s", "get_per_s", "higher")],
        run_redis(both=True), op="request", needs=["redis-server", "redis-benchmark"]),
    Case("http2", [Metric("http2", "wrk/nginx, both ends forwarded", "req/s", "req_per_s",
                          "higher")], run_http(both=True), op="request", needs=["nginx", "wrk"]),
]


# --- the machine and the run ---------------------------------------------------------------

def _proc_cpu(pid: int) -> tuple[float, int]:
    """CPU seconds a process has used (all its threads, from schedstat: nanoseconds, not
    ticks) and its context switches (voluntary + involuntary); zeros when it is gone."""
    cpu, switches = 0.0, 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                cpu += int(f.read().split()[0]) / 1e9
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if "ctxt_switches:" in line:
                        switches += int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, IndexError):
        pass
    return cpu, switches


def _cpu(side: Side) -> dict:
    """CPU seconds and context switches so far: of the programs this harness ran and waited
    for (every descendant that was reaped), and of the side's daemons."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = {"apps_cpu_s": ru.ru_utime + ru.ru_stime, "apps_switches": ru.ru_nvcsw + ru.ru_nivcsw}
    for name, pid in side.daemons.items():
        out[f"{name}_cpu_s"], out[f"{name}_switches"] = _proc_cpu(pid)
    return out


def machine() -> dict:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    return {"cpu": model, "cores": os.cpu_count(), "kernel": _platform.release(),
            "memory_bytes": mem, "python": _platform.python_version()}


def source_revision() -> str | None:
    """The git commit of the tree the bench runs from (+ "-dirty" with local changes), if any."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


class LoadSampler:
    """The 1-minute load average, sampled every second while the bench runs."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(1.0):
                return

    def __enter__(self) -> "LoadSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        s = self.samples or [os.getloadavg()[0]]
        return {"min": min(s), "median": statistics.median(s), "max": max(s),
                "end": list(os.getloadavg())}


class Hogs:
    """`n` CPU-bound processes for the bench's lifetime (--hog): the machine under contention,
    the same for both sides. Each is a shell busy loop in its own session, killed at the end."""

    def __init__(self, n: int):
        self.n = n
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "Hogs":
        for _ in range(self.n):
            self.procs.append(subprocess.Popen(["sh", "-c", "while :; do :; done"],
                                               stdin=subprocess.DEVNULL, start_new_session=True))
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def ring_reference(env: dict, round_trips: int) -> dict:
    """What one shared-memory ring costs on this machine now, without sockets: the link probe
    of `make demo` (a frontend and an INS process over the sim platform), one PING at a time
    with both sides sleeping on the doorbell, then spinning 20 us before sleeping. The
    forwarded round trip crosses two such ring round trips (plus the socketpairs)."""
    out = {}
    for name, spin in (("sleep", 0), ("spin20us", 20000)):
        try:
            p = subprocess.run([sys.executable, "-m", "mwcomms.tools.demo", "--link-only",
                                f"--round-trips={round_trips}", "--pings=100000",
                                f"--bytes={1 << 27}", f"--spin-ns={spin}"],
                               capture_output=True, text=True, timeout=120, env=env)
        except subprocess.TimeoutExpired:
            continue
        for line in p.stdout.splitlines():
            if "round trip, one PING at a time:" in line:
                out[f"ring_rtt_{name}_us"] = float(line.split(":")[1].split()[0])
            elif "byte stream:" in line:
                out[f"ring_stream_{name}_gb_per_s"] = float(line.split(":")[1].split()[0])
    return out


def compile_mwload(out_dir: str) -> str:
    src = resources.files("mwcomms.tools") / "bench" / "mwload.c"
    exe = os.path.join(out_dir, "bin", "mwload")
    os.makedirs(os.path.dirname(exe), exist_ok=True)
    with resources.as_file(src) as path:
        subprocess.run(["gcc", "-O2", "-g", "-Wall", "-Wextra", "-o", exe, str(path)], check=True)
    return exe


def _raise_nofile(want: int) -> None:
    """Let this process, and so the daemons `mwcomms up` starts, hold @want fds: each
    forwarded socket is one fd in mwcommsd and one in the INS (root may raise the hard
    limit; otherwise as far as it goes)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return
    for limits in ((want, max(hard, want)), (hard, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            return
        except (ValueError, OSError):
            continue


class Backbone:
    """`mwcomms up` in a private run directory for the bench's lifetime, then `down`."""

    def __init__(self, env: dict, nofile: int = 0):
        self.env = env
        self.nofile = nofile
        self.dir = tempfile.mkdtemp(prefix="mwbench", dir="/tmp")

    def __enter__(self) -> "Backbone":
        _raise_nofile(self.nofile)
        up = subprocess.run([MWCOMMS, "--dir", self.dir, "up"], capture_output=True, text=True,
                            timeout=120, env=self.env)
        if up.returncode != 0:
            self.__exit__()
            raise SystemExit(f"bench: mwcomms up failed: {up.stdout}{up.stderr}")
        with open(os.path.join(self.dir, "state.json")) as f:
            self.state = json.load(f)
        return self

    def __exit__(self, *exc) -> None:
        subprocess.run([MWCOMMS, "--dir", self.dir, "down"], capture_output=True, timeout=120,
                       env=self.env)
        shutil.rmtree(self.dir, ignore_errors=True)

    def daemons(self) -> dict:
        return {k: v for k, v in self.state["pids"].items() if k in ("mwcommsd", "ins")}


def summarise(case: Case, runs: dict[str, list[dict]], errors: list[str], repeats: int) -> list[dict]:
    """One result object per metric of @case from its runs on each side."""
    rows = []
    for m in case.metrics:
        row = {"case": m.name, "title": m.title, "unit": m.unit, "better": m.better,
               "repeats": repeats}
        for side in ("native", "forwarded"):
            vals = [r[m.key] * m.scale for r in runs.get(side, []) if r.get(m.key) is not None]
            row[f"{side}_runs"] = vals
            row[side] = statistics.median(vals) if vals else None
        row["spread"] = {side: bench_report.spread(row[f"{side}_runs"])
                         for side in ("native", "forwarded")}
        n, f = row["native"], row["forwarded"]
        row["ratio"] = f / n if n and f is not None else None
        if m.target:
            t = m.target
            value = f if t.absolute else row["ratio"]
            row["target"] = {"text": t.describe(), "op": t.op, "goal": t.goal, "must": t.must,
                             "absolute": t.absolute, "met": t.met(value),
                             "must_met": t.met(value, t.must) if t.must is not None else None}
        # where the time went: CPU microseconds and context switches per operation, per
        # process group (the programs; mwcommsd and the INS when forwarded), median of runs
        row["per_op"] = {"op": case.op}
        for side in ("native", "forwarded"):
            done = [r for r in runs.get(side, []) if r.get("cost") and r.get("ops")]
            if done:
                row["per_op"][side] = {
                    k.replace("_cpu_s", "_cpu_us"): statistics.median(
                        r["cost"][k] / r["ops"] * (1e6 if k.endswith("_cpu_s") else 1)
                        for r in done)
                    for k in done[0]["cost"]}
        if case.name == "hold":
            fw = runs.get("forwarded", [])
            if fw:
                row["detail"] = dict(fw[-1])
                short = min(r["conns"] for r in fw)
                if short < fw[-1]["wanted"] and m.target:
                    # a budget met for fewer connections than asked is not the target
                    row["target"]["met"] = False
                    row["target"]["text"] += (f" at {fw[-1]['wanted']} connections (only {short} "
                                              f"opened: {fw[-1]['stopped_by'] or 'stopped'})")
        if errors:
            row["errors"] = errors
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mwcomms.tools.bench",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts, 3 repeats (development)")
    ap.add_argument("--smoke", action="store_true", help="tiny counts, 2 repeats (the harness's test)")
    ap.add_argument("--repeats", type=int, help="runs per side per case")
    ap.add_argument("--conns", type=int, help="idle connections to open (default 10000)")
    ap.add_argument("--cases", default="all",
                    help="comma-separated subset of: " + ",".join(c.name for c in CASES))
    ap.add_argument("--out", default="build/bench", help="where results.json and results.png go")
    ap.add_argument("--no-chart", action="store_true", help="skip the PNG")
    ap.add_argument("--hog", type=int, default=0, metavar="N",
                    help="run N CPU-bound busy loops for the whole run: both sides measured on "
                         "a machine under contention (default 0)")
    args = ap.parse_args(argv)

    p = Params.smoke() if args.smoke else Params.quick() if args.quick else Params()
    if args.repeats:
        p.repeats = args.repeats
    if args.conns:
        p.conns = args.conns
    if args.hog < 0:
        ap.error(f"--hog {args.hog}: must be 0 or more")
    wanted = [c.strip() for c in args.cases.split(",")] if args.cases != "all" else [c.name for c in CASES]
    unknown = set(wanted) - {c.name for c in CASES}
    if unknown:
        ap.error(f"unknown cases: {', '.join(sorted(unknown))}")
    cases = [c for c in CASES if c.name in wanted]
    for tool in ("gcc", "unshare", "ip"):
        if not shutil.which(tool):
            print(f"bench: {tool} is missing (tools/bench/install-deps.sh installs it)", file=sys.stderr)
            return 1

    os.makedirs(args.out, exist_ok=True)
    env = dict(os.environ, PYTHONSAFEPATH="1")
    env.pop("LD_PRELOAD", None)
    mwload = compile_mwload(args.out)
    started = time.time()
    rows: list[dict] = []
    reference = ring_reference(env, max(1000, p.rr_count // 2))
    with Hogs(args.hog), LoadSampler() as load, Backbone(env, nofile=4 * p.conns + 4096) as bb:
        sides = [native_side(env), forwarded_side(bb.dir, env)]
        for s in sides:
            s.mwload = mwload
        sides[1].daemons = bb.daemons()
        sides[1].netns = bb.state.get("netns")
        for s in sides:
            s.calibrate()
        print(f"bench: {len(cases)} cases x {p.repeats} repeats x native/forwarded; "
              f"backbone in {bb.dir}", flush=True)
        for case in cases:
            missing = [t for t in case.needs if not shutil.which(t)]
            if missing:
                msg = f"skipped: {', '.join(missing)} not installed (tools/bench/install-deps.sh)"
                print(f"  {case.name}: {msg}", flush=True)
                rows += summarise(case, {}, [msg], 0)
                continue
            runs: dict[str, list[dict]] = {"native": [], "forwarded": []}
            errors: list[str] = []
            t0 = time.monotonic()
            for _ in range(p.repeats):
                for side in sides:      # alternate, so both sides see the same noise
                    try:
                        cost0 = _cpu(side)
                        res = case.run(side, p)
                        cost1 = _cpu(side)
                        res["cost"] = {k: cost1[k] - cost0[k] - side.overhead.get(k, 0)
                                       for k in cost1}
                        runs[side.name].append(res)
                    except BenchError as exc:
                        errors.append(str(exc))
            rows += summarise(case, runs, errors, p.repeats)
            status = f"{len(errors)} failed runs: {errors[0]}" if errors else "ok"
            print(f"  {case.name}: {time.monotonic() - t0:.1f} s, {status}", flush=True)
    result = {"machine": machine(), "load_average": load.summary(), "started": started,
              "start_overhead": {s.name: s.overhead for s in sides}, "reference": reference,
              "revision": source_revision(),
              "seconds": time.time() - started, "mode": "smoke" if args.smoke else
              "quick" if args.quick else "full", "backend": "sim", "repeats": p.repeats,
              "hogs": args.hog,
              "params": p.__dict__, "cases": rows}
    path = os.path.join(args.out, "results.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print()
    print(bench_report.table(result))
    print(f"\nresults: {path}")
    if not args.no_chart:
        png = os.path.join(args.out, "results.png")
        try:
            bench_report.chart(result, png)
            print(f"chart:   {png}")
        except ImportError:
            print("chart:   skipped (matplotlib is not installed: pip install '.[bench]')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
