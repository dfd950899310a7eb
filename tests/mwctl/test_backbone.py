"""mwctl against a live backbone (`mwcomms up` in a private run directory): every command's
output is checked against what a program run through it (`mwcomms run`) just did.

tests/mwctl/programs/talker.py opens a listener, a connection to it (n_out bytes one way,
n_in the other), a UDP socket that sends itself a datagram and a connect to a closed port,
prints what it did and keeps its sockets until told to exit.
"""
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
BIN = os.path.dirname(sys.executable)
MWCOMMS, MWCTL = os.path.join(BIN, "mwcomms"), os.path.join(BIN, "mwctl")
N_OUT, N_IN = 70_001, 123_457


@pytest.fixture(scope="module")
def backbone():
    """A backbone of its own. test_asan.py sets MWCTL_TEST_DAEMON_PRELOAD (libraries preloaded
    into the daemons only: the sanitizers' runtimes) and MWCTL_TEST_RUN_BASE (where the run
    directory goes, kept afterwards so that their logs can be read)."""
    if not (os.path.exists(MWCOMMS) and os.path.exists(MWCTL)):
        pytest.skip("the mwcomms and mwctl console scripts are not installed")
    run_dir = _new_run_dir()
    up = _up(run_dir)
    if up.returncode != 0:
        _down(run_dir)
        pytest.fail(f"mwcomms up failed ({up.returncode}): {up.stdout}{up.stderr}")
    yield run_dir
    _down(run_dir)


def _new_run_dir():
    # short (AF_UNIX paths), and not under pytest's 0700 tree: the rights test acts as
    # another user
    run_dir = tempfile.mkdtemp(prefix="mwctl-test-", dir=os.environ.get("MWCTL_TEST_RUN_BASE"))
    os.chmod(run_dir, 0o755)
    return run_dir


def _up(run_dir):
    env = dict(os.environ)
    if os.environ.get("MWCTL_TEST_DAEMON_PRELOAD"):
        env["LD_PRELOAD"] = os.environ["MWCTL_TEST_DAEMON_PRELOAD"]
    return subprocess.run([MWCOMMS, "--dir", run_dir, "up"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120, env=env)


def _down(run_dir):
    try:
        subprocess.run([MWCOMMS, "--dir", run_dir, "down"], capture_output=True, timeout=60,
                       check=True)
    except (OSError, subprocess.SubprocessError):
        # no daemon left behind even when `mwcomms down` cannot run (e.g. a reinstall is
        # replacing the console scripts): stop what state.json recorded
        try:
            pids = json.load(open(os.path.join(run_dir, "state.json")))["pids"].values()
        except (OSError, ValueError, KeyError):
            pids = ()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    if not os.environ.get("MWCTL_TEST_RUN_BASE"):     # else test_asan.py reads the logs
        shutil.rmtree(run_dir, ignore_errors=True)


def mwctl(run_dir, *argv, timeout=30, **kw):
    return subprocess.run([MWCTL, "--dir", run_dir, *argv], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, **kw)


def mwctl_json(run_dir, *argv):
    r = mwctl(run_dir, *argv, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


class Talker:
    """talker.py under `mwcomms run`, its sockets open until stop()."""

    def __init__(self, run_dir, token=b"hello-mwctl"):
        base = random.randrange(20000, 60000)
        self.port, self.udp_port, self.closed_port = base, base + 1, base + 2
        self.token = token
        self.proc = subprocess.Popen(
            [MWCOMMS, "--dir", run_dir, "run", "--", sys.executable, str(HERE / "programs" / "talker.py"),
             str(self.port), str(self.udp_port), str(self.closed_port), str(N_OUT), str(N_IN),
             token.decode()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            raise AssertionError(f"talker failed: {self.proc.stderr.read()}")
        self.did = json.loads(line)

    def stop(self):
        try:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        self.proc.wait(20)
        self.proc.stdout.close()
        self.proc.stderr.close()
        self.proc.stdin.close()


@pytest.fixture
def talker(backbone):
    t = Talker(backbone)
    yield t
    if t.proc.poll() is None:
        t.stop()


def test_status(backbone):
    doc = mwctl_json(backbone, "status")
    dev, = doc["xenstore"]
    assert (dev["frontend"], dev["ins"], dev["devid"]) == (1, 2, 0)
    assert dev["front_state"] == dev["back_state"] == "CONNECTED"
    assert dev["front_keys"]["version"] == "1"
    m = doc["mwcommsd"]
    assert m["link"] == 1 and m["link_text"] == "attached" and m["ins_up"]
    assert set(m["feature_names"]) == set(dev["front_keys"]["features"].split())
    assert m["cmd_slots"] > 0 and m["sock_slots"] > 0 and m["attaches"] >= 1
    assert m["uptime_s"] >= 0 and m["pid"] == json.load(open(f"{backbone}/state.json"))["pids"]["mwcommsd"]
    assert doc["ins"] is not None and doc["ins"]["domid"] == 2
    text = mwctl(backbone, "status")
    assert text.returncode == 0
    assert "device 0: frontend dom1 Connected, INS dom2 Connected" in text.stdout
    assert f"mwcommsd pid {m['pid']}" in text.stdout and "INS link attached" in text.stdout


def test_status_counts_event_channel_traffic(backbone, talker):
    m = mwctl_json(backbone, "status")["mwcommsd"]
    assert m["notifies"] > 0 and m["wakeups"] > 0
    # the talker's sockets, as the byte rings' sum: all empty (the 777 unread bytes wait in
    # the application's socket, not in a ring)
    br = m["byte_rings"]
    assert br["sockets"] >= 4 and br["tx_size"] > 0 and br["rx_size"] > 0
    assert br["tx_bytes"] == 0 and br["tx_full"] == 0


def test_sockets_show_what_the_program_opened(backbone, talker):
    pid, port, cport = talker.did["pid"], talker.port, talker.did["client"][1]
    socks = mwctl_json(backbone, "sockets", "--pid", str(pid))
    by = {(s["proto"], s["state_name"], s["local"] and s["local"]["port"],
           s["peer"] and s["peer"]["port"]): s for s in socks}
    lst = by[("tcp", "LISTEN", port, None)]
    cli = by[("tcp", "ESTAB", cport, port)]
    acc = by[("tcp", "ESTAB", port, cport)]
    udp = by[("udp", "OPEN", talker.udp_port, None)]
    assert lst["local"]["host"] == cli["peer"]["host"] == acc["local"]["host"] == "127.0.0.1"
    deadline = time.monotonic() + 10
    while cli["bytes_rx"] < N_IN + 777:       # the 777 unread bytes are on their way
        assert time.monotonic() < deadline, cli
        time.sleep(0.1)
        cli, = [s for s in mwctl_json(backbone, "sockets", "--pid", str(pid))
                if s["handle"] == cli["handle"]]
    assert (cli["bytes_tx"], cli["bytes_rx"]) == (N_OUT, N_IN + 777)
    assert (acc["bytes_tx"], acc["bytes_rx"]) == (N_IN + 777, N_OUT)
    assert (cli["recv_q"], cli["x_rqueue"], cli["send_q"]) == (777, 777, 0)
    assert (udp["bytes_tx"], udp["bytes_rx"]) == (100, 100)
    assert (lst["bytes_tx"], lst["bytes_rx"]) == (0, 0)
    for s in (lst, cli, acc, udp):
        assert s["pid"] == pid and s["uid"] == os.getuid()
        assert s["command"].startswith("python")
        assert s["slot"] is not None and s["send_q"] == 0
        assert s["recv_q"] == (777 if s is cli else 0)
    assert len({s["slot"] for s in (lst, cli, acc, udp)}) == 4
    # the refused connect's socket has ended: shown on demand; pre-posted accepts with --all
    assert all(s["state_name"] in ("LISTEN", "ESTAB", "OPEN") for s in socks), socks
    ended, = mwctl_json(backbone, "sockets", "--pid", str(pid), "--state", "closed")
    assert ended["peer"] == {"host": "127.0.0.1", "port": talker.closed_port}
    assert ended["slot"] is None
    every = mwctl_json(backbone, "sockets", "--pid", str(pid), "--all")
    assert any("pre-accept" in s["flag_names"] for s in every)
    assert len(every) > len(socks) + 1

    # every process holding them now (as ss -p): the program alone here
    held = mwctl_json(backbone, "sockets", "--pid", str(pid), "-p")
    assert all([h["pid"] for h in s["holders"]] == [pid] for s in held), held
    assert all(s["holders"][0]["command"].startswith("python") for s in held)
    assert f",pid={pid})" in mwctl(backbone, "sockets", "--pid", str(pid), "-p").stdout

    # filters
    assert {(s["local"]["port"], s["peer"] and s["peer"]["port"]) for s in
            mwctl_json(backbone, "sockets", "--addr", f":{port}")} == \
        {(port, None), (cport, port), (port, cport)}
    assert sorted(s["handle"] for s in mwctl_json(backbone, "sockets", "--addr",
                                                  f"127.0.0.1:{cport}", "--state", "established")) == \
        sorted([cli["handle"], acc["handle"]])
    assert [s["handle"] for s in mwctl_json(backbone, "sockets", "--state", "listen",
                                            "--pid", str(pid))] == [lst["handle"]]
    assert mwctl_json(backbone, "sockets", "--pid", str(pid + 100000)) == []

    # the table, as an operator reads it
    text = mwctl(backbone, "sockets", "--pid", str(pid))
    assert text.returncode == 0
    lines = text.stdout.splitlines()
    assert lines[0].split()[:4] == ["Proto", "State", "Recv-Q", "Send-Q"]
    row = next(line for line in lines if f"127.0.0.1:{cport}" in line.split()[4])
    assert row.split()[:6] == ["tcp", "ESTAB", "777", "0", f"127.0.0.1:{cport}",
                               f"127.0.0.1:{port}"]
    assert row.split()[6:8] == [str(N_IN + 777), str(N_OUT)] and f"pid={pid}" in row
    talker.stop()
    deadline = time.monotonic() + 10
    while mwctl_json(backbone, "sockets", "--pid", str(pid), "--state", "established"):
        assert time.monotonic() < deadline, "sockets still there after the program exited"
        time.sleep(0.1)


def test_stats_count_calls_errors_and_bytes(backbone):
    before = mwctl_json(backbone, "stats")["mwcommsd"]
    t = Talker(backbone)
    want = N_OUT + N_IN + 100 + 777
    try:
        deadline = time.monotonic() + 10
        while (after := mwctl_json(backbone, "stats")["mwcommsd"])["bytes_rx"] - \
                before["bytes_rx"] < want and time.monotonic() < deadline:
            time.sleep(0.1)       # the last 777 bytes may still be on their way
    finally:
        t.stop()
    assert t.did["refused"] == 111       # ECONNREFUSED, counted below
    calls = lambda d, op: d["calls_by_op"].get(op, 0)
    assert calls(after, "SOCKET") - calls(before, "SOCKET") == 4
    assert calls(after, "CONNECT") - calls(before, "CONNECT") >= 2
    # the refused connect: the INS answered CONNECT with ECONNREFUSED (the application learnt
    # it through STATUS); local answers with an error are counted by errno
    assert after["ins_errors_by_errno"]["ECONNREFUSED"] - \
        before["ins_errors_by_errno"].get("ECONNREFUSED", 0) == 1
    assert sum(after["errors_by_errno"].values()) - sum(before["errors_by_errno"].values()) == \
        after["call_errors"] - before["call_errors"] > 0
    assert after["bytes_tx"] - before["bytes_tx"] == want
    assert after["bytes_rx"] - before["bytes_rx"] == want
    cmd = lambda d, c: d["ins_requests_by_cmd"].get(c, 0)
    assert cmd(after, "CONNECT") - cmd(before, "CONNECT") == 2
    assert after["violations"] == 0 and after["reconnects"] == 0
    watch = mwctl(backbone, "stats", "--watch", "0.2", "--count", "2")
    assert watch.returncode == 0
    assert len([line for line in watch.stdout.splitlines() if " mwcommsd: calls " in line]) == 2
    assert "calls by type:" in watch.stdout and "INS answers by errno: " in watch.stdout
    assert "ECONNREFUSED" in watch.stdout


def _start_trace(run_dir, *argv):
    proc = subprocess.Popen([MWCTL, "--dir", run_dir, "trace", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    assert "tracing" in line, line + proc.stderr.read()
    return proc


def _stop_trace(proc, sig=signal.SIGINT):
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    return out, err


def test_trace_shows_connect_and_data(backbone, tmp_path):
    pcap = tmp_path / "t.pcapng"
    full = _start_trace(backbone, "--json", "--pcap", str(pcap), "--print")
    only = _start_trace(backbone, "--type", "connect")
    t = Talker(backbone, token=b"trace-me-please")
    t.stop()
    time.sleep(0.5)
    out, err = _stop_trace(full)
    recs = [json.loads(line) for line in out.splitlines()]
    pid, port = t.did["pid"], t.port
    mine = [r for r in recs if r["pid"] == pid]
    connects = [r for r in mine if r.get("cmd") == "CONNECT"]
    req = [r for r in connects if r["kind"] == "REQ"]
    rsp = [r for r in connects if r["kind"] == "RSP"]
    assert any(r["msg"]["addr"] == f"127.0.0.1:{port}" for r in req), connects
    assert any(r["msg"]["addr"] == f"127.0.0.1:{t.closed_port}" for r in req)
    assert any(r["msg"]["ret"] == 0 for r in rsp)
    assert any(r["msg"]["ret"] == -111 and r["msg"]["errno"] == "ECONNREFUSED" for r in rsp)
    assert all(r["dir"] == "->INS" for r in req) and all(r["dir"] == "<-INS" for r in rsp)
    data_tx = [r for r in mine if r["kind"] == "DATA" and r["dir"] == "->INS"]
    data_rx = [r for r in mine if r["kind"] == "DATA" and r["dir"] == "<-INS"]
    assert any(bytes.fromhex(r["msg"]["data"]).startswith(b"trace-me-please") for r in data_tx)
    assert sum(r["len"] for r in data_tx) == N_OUT + N_IN + 100 + 777
    assert sum(r["len"] for r in data_rx) == N_OUT + N_IN + 100 + 777
    udp = [r for r in data_tx if r["msg"]["addr"]]
    assert udp and udp[0]["msg"]["addr"] == {"host": "127.0.0.1", "port": t.udp_port}
    assert any(r["kind"] == "EV" for r in mine)
    # a call without a socket is its caller's too: create_connection's name lookup
    assert any(r.get("cmd") == "GETADDRINFO" and r["kind"] == "REQ" for r in mine)
    assert f"{len(recs)} records written to {pcap}" in err

    out, _ = _stop_trace(only)
    lines = out.splitlines()
    assert lines and all(" CONNECT " in line for line in lines), lines
    assert any(f"addr=127.0.0.1:{port}" in line and f"pid={pid}" in line for line in lines)

    # the pcap-ng file: our own reader, then tshark with the shipped dissector when present
    from mwcomms.tools import _pcap
    pkts = list(_pcap.read_pcapng(str(pcap)))
    assert len(pkts) == len(recs) and {p.linktype for p in pkts} == {147}
    assert [p.ts_ns for p in pkts] == [r["ns"] for r in recs]
    assert all((p.flags == _pcap.EPB_OUTBOUND) == (r["dir"] == "->INS") for p, r in zip(pkts, recs))
    tshark = shutil.which("tshark")
    if not tshark:
        print("tshark not installed: pcap checked with the project's reader only")
        return
    lua = mwctl(backbone, "dissector").stdout.strip()
    r = subprocess.run([tshark, "-n", "-X", f"lua_script:{lua}", "-r", str(pcap), "-T", "fields",
                        "-E", "separator=|", "-e", "mwcomms.kind", "-e", "mwcomms.cmd",
                        "-e", "mwcomms.pid", "-e", "mwcomms.port", "-e", "data.data"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rows = [line.split("|") for line in r.stdout.splitlines()]
    assert len(rows) == len(recs)
    assert any(row[0] == "1" and row[1] == "2" and row[2] == str(pid) and str(port) in row[3]
               for row in rows), r.stdout[:2000]
    assert any(row[0] == "5" and bytes.fromhex(row[4].replace(":", "")).startswith(b"trace-me")
               for row in rows if row[4])


def test_trace_pcap_to_a_pipe(backbone, tmp_path):
    proc = subprocess.Popen([MWCTL, "--dir", backbone, "trace", "--pcap", "-", "--type", "socket",
                             "--count", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert b"tracing" in proc.stderr.readline()
    subprocess.run([MWCOMMS, "--dir", backbone, "run", "--", sys.executable, "-c",
                    "import socket; socket.socket().close()"], check=True, timeout=60,
                   stdin=subprocess.DEVNULL)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    (tmp_path / "p.pcapng").write_bytes(out)
    from mwcomms.tools import _pcap
    pkts = list(_pcap.read_pcapng(str(tmp_path / "p.pcapng")))
    assert [struct.unpack_from("<H", p.data, 8)[0] for p in pkts] == [1, 2]   # REQ, RSP
    assert all(struct.unpack_from("<H", p.data, 40 + 4)[0] == 1 for p in pkts)  # SOCKET


def test_trace_filters_by_socket(backbone):
    t = Talker(backbone)
    try:
        cport = t.did["client"][1]
        cli, = [s for s in mwctl_json(backbone, "sockets", "--pid", str(t.did["pid"]),
                                      "--addr", f":{cport}", "--state", "estab")
                if s["local"]["port"] == cport]
        # the program's exit closes the socket: the engine sends its CLOSE to the INS
        tr = _start_trace(backbone, "--json", "--sock", cli["handle_hex"])
    finally:
        t.stop()
    time.sleep(0.5)
    out, err = _stop_trace(tr, signal.SIGTERM)      # ends as cleanly as SIGINT
    recs = [json.loads(line) for line in out.splitlines()]
    assert f"mwctl trace: {len(recs)} records" in err
    assert recs and all(r["handle"] == cli["handle_hex"] for r in recs)
    assert any(r.get("cmd") == "CLOSE" for r in recs)


def _as_user(uid, fn):
    """fn() in a forked child that became `uid` (in-process: this venv's Python may not be
    executable by other users); @return what it returned (JSON-able) or its error text"""
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(rd)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            try:
                out = {"ok": fn()}
            except Exception as exc:   # reported to the parent
                out = {"error": str(exc), "code": getattr(exc, "code", None)}
            os.write(wr, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(wr)
    with os.fdopen(rd) as f:
        doc = json.loads(f.read() or "{}")
    os.waitpid(pid, 0)
    return doc


def test_rights_of_other_users(backbone):
    """Read-only ops need no root: another user sees the engine's state and its own sockets
    (none here), and is refused the trace (it shows everyone's bytes)."""
    if os.getuid() != 0:
        pytest.skip("needs root to act as another user")
    from mwcomms.tools.mwctl import Control
    from mwcomms.tools import codec  # noqa: F401  (imported here: the child may not read it)
    control = json.load(open(f"{backbone}/state.json"))["control"]
    t = Talker(backbone)
    try:
        def look():
            with Control(control) as c:
                return {"link": c.info()["link"], "sockets": c.sockets()}
        doc = _as_user(65534, look)
        assert doc.get("ok") == {"link": 1, "sockets": []}, doc

        def trace():
            with Control(control) as c:
                c.start_trace(64)
        doc = _as_user(65534, trace)
        assert doc.get("code") == 4 and "not permitted" in doc["error"].lower(), doc
        assert mwctl_json(backbone, "sockets", "--pid", str(t.did["pid"]))   # root sees them
    finally:
        t.stop()


def test_help_and_exit_codes(backbone, tmp_path):
    r = subprocess.run([MWCTL, "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "exit codes" in r.stdout
    for cmd in ("status", "sockets", "xenstore", "stats", "trace", "attach", "detach",
                "dissector"):
        r = subprocess.run([MWCTL, cmd, "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "usage: mwctl" in r.stdout, cmd
    for cmd in ("status", "sockets", "xenstore", "stats"):
        r = subprocess.run([MWCTL, cmd, "--json", "--help"], capture_output=True, text=True)
        assert r.returncode == 0
    nothing = str(tmp_path / "nothing")
    for argv in (["sockets"], ["stats"], ["trace", "--count", "1"]):
        r = subprocess.run([MWCTL, "--dir", nothing, "--control", f"{nothing}/c.sock", *argv],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 3 and "mwcommsd is not running" in r.stderr, (argv, r.stderr)
    r = subprocess.run([MWCTL, "--dir", nothing, "--control", f"{nothing}/c.sock",
                        "--xenstore", f"{nothing}/xs", "status"], capture_output=True, text=True)
    assert r.returncode == 3
    assert mwctl(backbone, "sockets", "--bogus").returncode == 2
    # where the backbone is may also follow the command
    r = subprocess.run([MWCTL, "status", "--json", "--dir", backbone], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and json.loads(r.stdout)["mwcommsd"]["link"] == 1
    assert mwctl(backbone, "trace", "--sock", "nope").returncode == 2


def test_a_slow_tracer_loses_records_not_the_engine(backbone):
    """A tracer that does not read: the engine goes on at full speed, drops records for it,
    counts them, and tells the tracer how many it lost in its next record."""
    from mwcomms.tools.mwctl import Control
    control = json.load(open(f"{backbone}/state.json"))["control"]
    with Control(control) as info_ctl, Control(control) as slow:
        before = info_ctl.info()
        slow.start_trace(65536)
        port = random.randrange(20000, 60000)
        r = subprocess.run([MWCOMMS, "--dir", backbone, "run", "--", sys.executable,
                            str(HERE / "programs" / "chatter.py"), str(port), "3000"],
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        mid = info_ctl.info()
        assert mid["trace_dropped"] > before["trace_dropped"], (before, mid)
        # drain what was queued, then make one more record: it carries the count
        got, lost = 0, 0
        slow.sock.setblocking(False)
        try:
            for rec, _ in slow.records():
                got += 1
                lost += rec["dropped"]
        except BlockingIOError:
            pass
        slow.sock.setblocking(True)
        slow.sock.settimeout(20)
        subprocess.run([MWCOMMS, "--dir", backbone, "run", "--", sys.executable, "-c",
                        "import socket; socket.socket().close()"], check=True, timeout=60,
                       stdin=subprocess.DEVNULL)
        rec, _ = next(slow.records())
        got += 1
        lost += rec["dropped"]
        assert rec["dropped"] > 0
        after = info_ctl.info()
    assert lost == after["trace_dropped"] - before["trace_dropped"]
    assert got <= after["trace_records"] - before["trace_records"]


def test_status_and_stats_tell_what_went_wrong_when_the_ins_dies():
    """The INS killed: status says the link is down and why, sockets show the ones it took
    with it; `mwcomms up` brings a new INS: stats count the reconnect."""
    if not (os.path.exists(MWCOMMS) and os.path.exists(MWCTL)):
        pytest.skip("the mwcomms and mwctl console scripts are not installed")
    run_dir = _new_run_dir()
    up = _up(run_dir)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        t = Talker(run_dir)
        ins_pid = json.load(open(f"{run_dir}/state.json"))["pids"]["ins"]
        os.kill(ins_pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while (m := mwctl_json(run_dir, "status")["mwcommsd"])["link"] == 1:
            assert time.monotonic() < deadline, "mwcommsd did not notice the INS died"
            time.sleep(0.2)
        assert m["link_text"] == "detached (INS gone)" and "INS" in m["why"], m
        tracer = _start_trace(run_dir)      # still there when mwcommsd stops, below
        assert "INS link detached (INS gone)" in mwctl(run_dir, "status").stdout
        lost = mwctl_json(run_dir, "sockets", "--pid", str(t.did["pid"]), "--state", "closed")
        assert any("ins-lost" in s["flag_names"] and s["error_name"] == "ECONNRESET"
                   for s in lost), lost
        t.stop()
        again = _up(run_dir)
        assert again.returncode == 0, again.stdout + again.stderr
        deadline = time.monotonic() + 20
        while (s := mwctl_json(run_dir, "stats")["mwcommsd"])["reconnects"] != 1:
            assert time.monotonic() < deadline, s
            time.sleep(0.2)
        assert mwctl_json(run_dir, "status")["mwcommsd"]["link"] == 1
    finally:
        _down(run_dir)
    # mwcommsd stopped under the tracer: it says so and exits 3 (the backbone went away)
    out, err = tracer.communicate(timeout=30)
    assert tracer.returncode == 3 and "mwcommsd ended the trace" in err, err
