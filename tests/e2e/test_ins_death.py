"""INS death: the INS is SIGKILLed while one program is blocked in recv() on a download,
another in send() on an upload (servers started natively in the INS's network namespace) and a
third in accept(); each must get an error within 5 s (as native gives for a dead path), not
hang. Then `mwcomms up` restarts just the INS, mwcommsd connects to it again, and a new
connection works. Also: mwcommsd killed (then restarted by `mwcomms up`), and an INS that
hangs (SIGSTOP) for a while.

The times measured (to the error, to the first new connection) are printed:
    .venv/bin/pytest -q -s tests/e2e/test_ins_death.py
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROG = str(Path(__file__).resolve().parent / "programs" / "transfer_hold.py")
PY = sys.executable
# what native Linux gives a program whose connection died under it
DEAD_PATH = {"ECONNRESET", "EPIPE", "ENETDOWN", "ECONNABORTED", "ETIMEDOUT", "ENETRESET"}


def _ins_alive(backbone):
    try:
        os.kill(backbone.state["pids"]["ins"], 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture(scope="module")
def server(backbone, module_programs):
    srv = module_programs(backbone.netns_argv([PY, PROG, "serve"]), "server")
    return srv.line("PORT ").split()[1]


def outcome(program):
    """How the blocked call of a transfer_hold.py program ended: (how, unix time), or
    ("still blocked", None)."""
    for ln in reversed(program.text().splitlines()):
        if ln.split(" ", 1)[0] in ("ERROR", "EOF", "RETURNED"):
            how, when = ln.rsplit(" ", 1)
            return how, float(when)
    return "still blocked", None


def hello(backbone, port):
    return backbone.run([PY, PROG, "hello", port], timeout=30).stdout.strip()


def test_blocked_programs_get_an_error_within_5s(backbone, server, programs):
    assert hello(backbone, server) == "OK hello"
    blocked = {what: programs(backbone.argv([PY, PROG, what] + ([server] if what != "accept"
                                                                 else [])), what)
               for what in ("download", "upload", "accept")}
    for p in blocked.values():
        p.line("BLOCKED")
    time.sleep(0.5)                       # well inside recv() / send()
    t_kill = time.time()
    os.kill(backbone.state["pids"]["ins"], signal.SIGKILL)
    seen = {}
    for what, p in blocked.items():
        try:
            p.proc.wait(max(0.1, t_kill + 8 - time.time()))
        except subprocess.TimeoutExpired:
            pass                          # still blocked: reported below
        how, when = outcome(p)
        seen[what] = (how, when - t_kill if when else None)
    print("INS SIGKILLed mid-transfer: " + "; ".join(
        f"{what}: {how}" + (f" after {dt:.2f} s" if dt is not None else " after 8 s")
        for what, (how, dt) in seen.items()))
    for what, (how, dt) in seen.items():
        assert how.startswith("ERROR") and how.split()[1] in DEAD_PATH, (what, how, backbone.logs())
        assert dt < 5.0, (what, how, dt)


def test_restarted_ins_serves_new_connections(backbone, server):
    if _ins_alive(backbone):              # this test on its own: kill it here
        os.kill(backbone.state["pids"]["ins"], signal.SIGKILL)
        time.sleep(0.2)
    r = backbone.run([PY, PROG, "hello", server])
    assert r.returncode == 3 and "ins not running" in r.stderr and "mwcomms up" in r.stderr, \
        (r.returncode, r.stderr)
    t0 = time.monotonic()
    up = backbone.cli("up", timeout=60)
    t_up = time.monotonic() - t0
    assert up.returncode == 0, up.stdout + up.stderr + backbone.logs()
    assert "ins (pid" in up.stdout and "restarted as pid" in up.stdout, up.stdout
    assert _ins_alive(backbone)
    while True:
        got = hello(backbone, server)
        if got == "OK hello" or time.monotonic() - t0 > 15:
            break
        time.sleep(0.1)
    t_conn = time.monotonic() - t0
    print(f"INS restarted: `mwcomms up` returned after {t_up:.2f} s; first new connection "
          f"{t_conn:.2f} s after the restart began")
    assert got == "OK hello", (got, backbone.logs())
    # and the rest of the backbone was left alone: mwcommsd kept its pid
    assert "mwcommsd (pid" not in up.stdout


def test_mwcommsd_killed_then_restarted(backbone, server, programs):
    """The other half of the backbone: mwcommsd SIGKILLed under a blocked download. The
    program's socket is one end of a socketpair whose other end died with mwcommsd: recv()
    fails at once with ECONNRESET (not end of file: a cut transfer must not look complete).
    `mwcomms up` restarts just mwcommsd; the INS drops the dead frontend's sockets and serves
    the new one."""
    assert hello(backbone, server) == "OK hello"
    down = programs(backbone.argv([PY, PROG, "download", server]), "download")
    down.line("BLOCKED")
    time.sleep(0.3)
    t_kill = time.time()
    os.kill(backbone.state["pids"]["mwcommsd"], signal.SIGKILL)
    down.proc.wait(5)
    how, when = outcome(down)
    print(f"mwcommsd SIGKILLed mid-transfer: download: {how} after {when - t_kill:.2f} s")
    assert how.startswith("ERROR") and how.split()[1] in DEAD_PATH, how
    ins_pid = backbone.state["pids"]["ins"]
    t0 = time.monotonic()
    up = backbone.cli("up", timeout=60)
    assert up.returncode == 0, up.stdout + up.stderr + backbone.logs()
    assert "mwcommsd (pid" in up.stdout and "ins (pid" not in up.stdout, up.stdout
    assert backbone.state["pids"]["ins"] == ins_pid
    got = hello(backbone, server)
    print(f"mwcommsd restarted: first new connection {time.monotonic() - t0:.2f} s after the "
          f"restart began")
    assert got == "OK hello", (got, backbone.logs())


def test_stopped_ins_stalls_then_resumes(backbone, server, programs):
    """A silently hung INS (SIGSTOP): what programs see today. A new connection started while
    it is stopped waits (even socket() does: mwcommsd waits for the INS's answer; there is no
    liveness deadline yet, see shim/README.md) and completes once the INS runs again; nothing
    fails spuriously and the backbone needs no restart."""
    assert hello(backbone, server) == "OK hello"
    ins = backbone.state["pids"]["ins"]
    os.kill(ins, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        p = programs(backbone.argv([PY, PROG, "hello", server]), "hello-while-stopped")
        up = backbone.cli("up", timeout=30)     # says what is wrong and how to fix it
        time.sleep(max(0.0, 2 - (time.monotonic() - t0)))
        stalled = p.proc.poll() is None
    finally:
        os.kill(ins, signal.SIGCONT)
    p.proc.wait(15)
    print(f"INS stopped for 2 s: a new connection {'waited' if stalled else 'did not wait'}, "
          f"then ended after {time.monotonic() - t0:.2f} s with {p.text().strip()!r}")
    assert stalled, p.text()
    assert up.returncode == 1 and f"ins (pid {ins}) is stopped" in up.stderr and \
        f"kill -CONT {ins}" in up.stderr, up.stderr
    assert p.text().strip().splitlines()[-1] == "OK hello", p.text()
    assert hello(backbone, server) == "OK hello"
