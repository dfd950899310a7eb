"""Where the forwarded time goes: one bench load run natively and forwarded, with every
process's system calls counted (`perf trace -s`, Debian's linux-perf) and divided by the
operations the load did, plus the hottest symbols of mwcommsd and the INS (`perf record`).

    python -m mwcomms.tools.bench_profile [--load rr|udp|connect|bulk8] [--out DIR]

It prints, per process (the load programs, mwcommsd, the INS), system calls per operation
by name with how many failed (EAGAIN reads are the usual ones), and the top of the daemons'
profile. The evidence behind the optimisation requests in docs/bench.md comes from here.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

from mwcomms.tools import bench

LOADS = {
    "rr": ["rr", "--size", "64", "--count", "20000", "--warmup", "0"],
    "udp": ["udp", "--size", "64", "--count", "20000", "--warmup", "0"],
    "connect": ["connect", "--seconds", "2"],
    "bulk8": ["bulk", "--streams", "8", "--seconds", "2"],
}

# the real workloads: only the daemons are traced (the programs are Debian's)
WORKLOADS = ("redis", "http")

_SECTION = re.compile(r"^\s*(\S.*?) \((\d+)\), \d+ events")
_ROW = re.compile(r"^\s+([a-z_0-9]+)\s+(\d+)\s+(\d+)\s")


def parse_trace(text: str) -> dict[str, dict[str, list[int]]]:
    """`perf trace -s` output -> {process name: {syscall: [calls, errors]}}, threads summed."""
    out: dict[str, dict[str, list[int]]] = {}
    cur = None
    for line in text.splitlines():
        m = _SECTION.match(line)
        if m:
            cur = out.setdefault(m.group(1), {})
            continue
        m = _ROW.match(line)
        if m and cur is not None:
            calls = cur.setdefault(m.group(1), [0, 0])
            calls[0] += int(m.group(2))
            calls[1] += int(m.group(3))
    return out


def ops_of(load: str, res: dict) -> float:
    if load in ("rr", "udp"):
        return res["count"]
    if load == "connect":
        return res["count"]
    return res["bytes"] / 65536


def _show(title: str, table: dict[str, list[int]], ops: float, top: int = 12) -> list[str]:
    total = sum(c for c, _ in table.values())
    lines = [f"  {title}: {total / ops:.1f} system calls per operation"]
    for name, (calls, errors) in sorted(table.items(), key=lambda kv: -kv[1][0])[:top]:
        err = f"  ({errors / ops:.2f} failed)" if errors else ""
        lines.append(f"    {name:<16} {calls / ops:7.2f}{err}")
    return lines


def threads(pid: int) -> dict[int, tuple[float, int]]:
    """Per thread of @pid: CPU seconds (schedstat) and context switches so far."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                sw = sum(int(l.split()[1]) for l in f if "ctxt_switches:" in l)
            out[int(tid)] = (ns / 1e9, sw)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def thread_split(before: dict, after: dict, ops: float) -> str:
    """The busiest thread (the C engine loop) against all the others (Python control)."""
    delta = {t: (after[t][0] - before.get(t, (0, 0))[0], after[t][1] - before.get(t, (0, 0))[1])
             for t in after}
    if not delta:
        return "no threads"
    busiest = max(delta, key=lambda t: delta[t][0])
    rest = sum(d[0] for t, d in delta.items() if t != busiest)
    total = sum(d[0] for d in delta.values()) or 1e-9
    return (f"engine thread {delta[busiest][0] * 1e6 / ops:.1f} us and "
            f"{delta[busiest][1] / ops:.2f} switches per operation; the other "
            f"{len(delta) - 1} threads (Python) {100 * rest / total:.1f}% of the process's CPU")


def _trace_daemon(pid: int, path: str) -> subprocess.Popen:
    return subprocess.Popen(["perf", "trace", "-s", "-p", str(pid), "-o", path],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mwcomms.tools.bench_profile",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--load", choices=sorted(LOADS) + sorted(WORKLOADS), default="rr")
    ap.add_argument("--out", default="build/bench/profile")
    ap.add_argument("--no-record", action="store_true", help="skip perf record")
    args = ap.parse_args(argv)
    if not shutil.which("perf"):
        print("bench_profile: perf is missing (Debian: linux-perf)", file=sys.stderr)
        return 1
    os.makedirs(args.out, exist_ok=True)
    env = dict(os.environ, PYTHONSAFEPATH="1")
    env.pop("LD_PRELOAD", None)
    mwload = bench.compile_mwload(args.out)
    report = []
    with bench.Backbone(env) as bb:
        native = bench.native_side(env)
        fwd = bench.forwarded_side(bb.dir, env)
        native.mwload = fwd.mwload = mwload
        daemons = bb.daemons()
        if args.load in WORKLOADS:
            report = _workload(args, fwd, daemons)
            return _finish(args, report)
        load = [mwload] + LOADS[args.load]
        results = {}
        # the engine thread vs the Python threads, measured without tracing
        before = {n: threads(pid) for n, pid in daemons.items()}
        res = fwd.mwload_json(*LOADS[args.load])
        ops = ops_of(args.load, res)
        report.append(f"forwarded, untraced: {json.dumps(res)}")
        for n, pid in daemons.items():
            report.append(f"  {n}: {thread_split(before[n], threads(pid), ops)}")
        for side in (native, fwd):
            app_trace = os.path.join(args.out, f"{args.load}.{side.name}.apps.trace")
            tracers = {}
            if side is fwd:
                for name, pid in daemons.items():
                    tracers[name] = _trace_daemon(pid, os.path.join(args.out, f"{args.load}.{name}.trace"))
                time.sleep(1.0)         # perf trace attaches before the load starts
            out = side.run(["perf", "trace", "-s", "-o", app_trace, "--"] + load)
            for t in tracers.values():
                t.send_signal(signal.SIGINT)
                t.wait(30)
            res = json.loads([l for l in out.splitlines() if l.startswith("{")][-1])
            ops = ops_of(args.load, res)
            results[side.name] = res
            with open(app_trace) as f:
                apps = parse_trace(f.read())
            report.append(f"{side.name}: {json.dumps(res)}")
            report += _show("load programs (mwload, both ends)", apps.get("mwload", {}), ops)
            for name in tracers:
                report += _show(name, _daemon_table(os.path.join(args.out, f"{args.load}.{name}.trace")), ops)
        if not args.no_record:
            data = os.path.join(args.out, f"{args.load}.perf.data")
            rec = subprocess.Popen(["perf", "record", "-q", "-g", "-o", data, "-p",
                                    ",".join(str(p) for p in daemons.values())],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            fwd.run(load)
            rec.send_signal(signal.SIGINT)
            rec.wait(60)
            rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort",
                                  "comm,dso,sym", "--stdio", "-g", "none"],
                                 capture_output=True, text=True)
            top = [l for l in rep.stdout.splitlines() if "%" in l and not l.startswith("#")][:15]
            report += ["", f"perf record -g of mwcommsd + INS during the forwarded run "
                           f"(cpu-clock samples; {data}):"] + top
    return _finish(args, report)


def _daemon_table(path: str) -> dict[str, list[int]]:
    """One daemon's `perf trace -s` file, all its threads summed."""
    table: dict[str, list[int]] = {}
    with open(path) as f:
        for per in parse_trace(f.read()).values():
            for sc, (c, e) in per.items():
                table.setdefault(sc, [0, 0])
                table[sc][0] += c
                table[sc][1] += e
    return table


def _workload(args, fwd: bench.Side, daemons: dict[str, int]) -> list[str]:
    """A real workload (quick sizes) forwarded, untraced then with the daemons traced."""
    case = {c.name: c for c in bench.CASES}[args.load]
    params = bench.Params.quick()
    before = {n: threads(pid) for n, pid in daemons.items()}
    res = case.run(fwd, params)
    report = [f"forwarded, untraced: {json.dumps(res)}"]
    for n, pid in daemons.items():
        report.append(f"  {n}: {thread_split(before[n], threads(pid), res['ops'])}")
    paths = {n: os.path.join(args.out, f"{args.load}.{n}.trace") for n in daemons}
    tracers = {n: _trace_daemon(pid, paths[n]) for n, pid in daemons.items()}
    time.sleep(1.0)
    res = case.run(fwd, params)
    for t in tracers.values():
        t.send_signal(signal.SIGINT)
        t.wait(30)
    report.append(f"forwarded, daemons traced: {json.dumps(res)} (per request)")
    for n in daemons:
        report += _show(n, _daemon_table(paths[n]), res["ops"])
    return report


def _finish(args, report: list[str]) -> int:
    text = "\n".join(report)
    print(text)
    with open(os.path.join(args.out, f"{args.load}.txt"), "w") as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
