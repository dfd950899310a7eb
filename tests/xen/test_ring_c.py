"""The ring library's C test programs (tests/c/ring_*.c), built against xen/ring.c.

- ring_unit: one case per behaviour and per receiver check, under ASan + UBSan.
- ring_hostile: an honest side against a peer that corrupts the shared pages, under ASan + UBSan.
- ring_stress: 10 million requests/responses and 1 GiB through a byte ring between two
  processes, at -O2 without sanitizers (for the rates), in poll and doorbell modes, over a
  memfd + eventfds and over the platform layer's sim grants + event channels; smaller counts
  under ASan + UBSan; one-at-a-time round trips for the wake-up latency.
- ring_xen: the same program as one file, as tests/realxen builds it, run as two processes in
  two sim domains exchanging grant references through a file.

The rates are printed as `RING-RATE ...` / `RING-RTT ...` lines (run pytest with -s to see
them) and kept as junit properties.
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CDIR = ROOT / "tests" / "c"
RING = [str(ROOT / "xen" / "ring.c")]
PLATFORM = sorted(str(p) for p in (ROOT / "xen").glob("platform*.c"))
SANITIZE = ["-g", "-O1", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all"]
SAN_ENV = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
GiB = 1 << 30

PROGRAMS = {
    "ring_unit": ["ring_unit.c"],
    "ring_hostile": ["ring_hostile.c"],
    "ring_stress": ["ring_stress.c", "ring_stress_core.c"],
    "ring_xen": ["ring_xen.c"],    # the same, as one translation unit for tests/realxen
}


def _unit_cases():
    text = (CDIR / "ring_unit.c").read_text()
    return re.findall(r"^\s+T\((\w+)\),$", text, re.M)


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """build(name, sanitize=True) -> path of the program, compiled once per module."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    out = tmp_path_factory.mktemp("ring-bin")

    def _build(name, sanitize=True):
        exe = out / (name + ("-san" if sanitize else "-O2"))
        if not exe.exists():
            flags = SANITIZE if sanitize else ["-O2", "-g"]
            sources = [str(CDIR / s) for s in PROGRAMS[name]] + RING
            if name in ("ring_stress", "ring_xen"):
                sources += PLATFORM
            cmd = ["gcc", "-std=gnu11", "-Wall", "-Wextra", "-Werror", *flags,
                   "-I", str(ROOT / "xen" / "include"), "-I", str(CDIR), *sources,
                   "-lpthread", "-o", str(exe)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr}"
        return str(exe)

    return _build


def run(cmd, timeout, env=None):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **SAN_ENV, **(env or {})})


def assert_clean(r, who):
    assert "AddressSanitizer" not in r.stderr and "runtime error" not in r.stderr, \
        f"{who}:\n{r.stdout}\n{r.stderr}"
    assert r.returncode == 0, f"{who}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"


# ---- unit cases ------------------------------------------------------------------------------

@pytest.mark.parametrize("case", _unit_cases())
def test_unit(build, case):
    r = run([build("ring_unit"), case], timeout=60)
    assert f"PASS {case}" in r.stdout, f"{r.stdout}\n{r.stderr}"
    assert_clean(r, case)


def test_unit_cases_are_all_collected(build):
    r = run([build("ring_unit"), "--list"], timeout=10)
    assert r.stdout.split() == _unit_cases()
    assert len(_unit_cases()) >= 40


# ---- hostile peer ----------------------------------------------------------------------------

ROUND = re.compile(r"^ROUND honest=(\w+) round=(\d+) rate=(\S+) steps=(\d+) peer_steps=(\d+) "
                   r"moved=(\d+) (.*)$", re.M)


@pytest.mark.parametrize("honest", ["front", "back"])
def test_hostile_peer(build, honest):
    """The honest side reports protocol errors and never crashes, hangs or strays."""
    r = run([build("ring_hostile"), f"--honest={honest}", "--rounds=11", "--round-ms=150"],
            timeout=120)
    assert_clean(r, f"ring_hostile --honest={honest}")
    assert f"HOSTILE OK honest={honest}" in r.stdout, r.stdout
    rounds = ROUND.findall(r.stdout)
    assert len(rounds) == 11
    eproto_by_obj = {}
    for side, _, rate, steps, peer_steps, moved, counts in rounds:
        assert side == honest and int(steps) > 0 and int(peer_steps) >= 2000
        per = {k: int(v) for k, v in (kv.split("=") for kv in counts.split())}
        if float(rate) == 0:
            assert sum(per.values()) == 0 and int(moved) > 0, counts
        for k, v in per.items():
            eproto_by_obj[k] = eproto_by_obj.get(k, 0) + v
    # every object of the honest side met a corruption it had to report
    assert all(v > 0 for v in eproto_by_obj.values()), eproto_by_obj


# ---- stress ----------------------------------------------------------------------------------

RATE = re.compile(r"^RING-RATE mode=(\w+) bell=(\w+) msgs=(\d+) msgs_per_s=(\d+) bytes=(\d+) "
                  r"gb_per_s=([\d.]+) kicks=(\d+) sleeps=(\d+) lost_wakeups=(\d+) "
                  r"events_posted=(\d+) events_taken=(\d+) rescans=(\d+)$", re.M)
HASH = re.compile(r"^RING-HASH front=(\w+) back=(\w+) expected=(\w+)$", re.M)
RTT = re.compile(r"^RING-RTT mode=(\w+) bell=(\w+) spin_ns=(\d+) round_trips=(\d+) "
                 r"rtt_us=([\d.]+)$", re.M)


def stress(build, mode, msgs, nbytes, sanitize, extra=(), env=None, timeout=180):
    r = run([build("ring_stress", sanitize), f"--mode={mode}", f"--msgs={msgs}",
             f"--bytes={nbytes}", *extra], timeout=timeout, env=env)
    assert_clean(r, f"ring_stress --mode={mode} {' '.join(extra)}")
    assert "RING-STRESS OK" in r.stdout, f"{r.stdout}\n{r.stderr}"
    rate = RATE.search(r.stdout)
    front, back, expected = HASH.search(r.stdout).groups()
    assert front == back == expected
    assert rate and rate.group(1) == mode
    assert int(rate.group(3)) == msgs and int(rate.group(5)) == nbytes
    if mode == "doorbell":
        assert int(rate.group(7)) > 0 and int(rate.group(9)) == 0, rate.group(0)
    print(rate.group(0))
    rtt = RTT.search(r.stdout)
    if rtt:
        print(rtt.group(0))
    return rate, rtt


def sim(tmp_path):
    return {"MW_BACKEND": "sim", "MW_SIM_DIR": str(tmp_path / "sim")}


@pytest.mark.parametrize("mode", ["poll", "doorbell"])
def test_stress_sanitized(build, mode):
    """Small ring (4 KiB) and command ring (32 slots): wrapping and waiting all the time; in
    doorbell mode the byte ring's wake-ups go through the event queues."""
    rate, _ = stress(build, mode, 200_000, 64 << 20, True, ["--order=12", "--cmd-pages=1",
                                                             "--pingpong=2000"])
    if mode == "doorbell":
        assert int(rate.group(10)) > 0 and int(rate.group(11)) > 0, rate.group(0)


def test_stress_sanitized_evtchn(build, tmp_path):
    stress(build, "doorbell", 100_000, 16 << 20, True, ["--platform"], env=sim(tmp_path))


def test_stress_two_processes_sanitized(build, tmp_path):
    """The cross-domain form, as the real-Xen harness builds and runs it (ring_xen): each side
    its own process and sim domain, grant references and port through a file."""
    exe, xchg = build("ring_xen"), tmp_path / "xchg.txt"
    common = ["--mode=doorbell", "--platform", f"--xchg={xchg}", "--msgs=100000",
              f"--bytes={8 << 20}", "--pingpong=1000"]
    env = {**os.environ, **SAN_ENV, **sim(tmp_path)}
    front = subprocess.Popen([exe, "--role=front", "--domid=1", "--remote=2", *common],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    back = run([exe, "--role=back", "--domid=2", "--remote=1", *common], timeout=120,
               env=sim(tmp_path))
    fout, ferr = front.communicate(timeout=120)
    assert_clean(back, "back")
    assert front.returncode == 0, f"{fout}\n{ferr}"
    assert "RING-STRESS OK" in fout and "RING-STRESS OK" in back.stdout
    fh = re.search(r"RING-HASH front=(\w+) expected=(\w+)", fout).groups()
    bh = re.search(r"RING-HASH back=(\w+) expected=(\w+)", back.stdout).groups()
    assert fh[0] == fh[1] == bh[0] == bh[1]


@pytest.mark.parametrize("mode", ["poll", "doorbell"])
def test_stress_rates(build, mode, record_property):
    """10 million messages and 1 GiB at -O2: the figures of the ring library."""
    rate, rtt = stress(build, mode, 10_000_000, GiB, False, ["--pingpong=20000"])
    assert int(rtt.group(4)) == 20000 and float(rtt.group(5)) > 0
    record_property("msgs_per_s", rate.group(4))
    record_property("gb_per_s", rate.group(6))
    record_property("rtt_us", rtt.group(5))


def test_stress_rates_evtchn(build, tmp_path, record_property):
    """The same over the platform layer: sim grants for the area, sim event channels."""
    rate, _ = stress(build, "doorbell", 10_000_000, GiB, False, ["--platform"],
                     env=sim(tmp_path))
    assert rate.group(2) == "evtchn"
    record_property("msgs_per_s", rate.group(4))
    record_property("gb_per_s", rate.group(6))


@pytest.mark.parametrize("spin_ns", [0, 50_000])
def test_round_trip_sleeping_or_spinning(build, spin_ns):
    """One message at a time: every wake-up goes through the doorbell (spin_ns=0) or is caught
    by the spin; both must deliver every message, the RTT is printed for the record."""
    _, rtt = stress(build, "doorbell", 1000, 1 << 20, False,
                    ["--pingpong=20000", f"--spin-ns={spin_ns}"])
    assert int(rtt.group(3)) == spin_ns and int(rtt.group(4)) == 20000
