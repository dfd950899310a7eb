"""Real programs under tcp_ip_wrapper.so through the real backbone: `mwcomms up` (sim
xenstored, the INS daemon, mwcommsd) in a private run directory, then `mwcomms run -- ...`.

curl and wget fetch from Python's http.server (all three under the shim, so both ends of each
connection live in the INS); IPv6 TCP and UDP with addresses and a refused connect; getent
through gethostbyname2/getaddrinfo; many concurrent connections, fast and slow servers (connections
beyond what the server accepted wait in the backlog, as natively: none is reset).
"""
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROGRAMS = Path(__file__).resolve().parent / "programs"
MWCOMMS = os.path.join(os.path.dirname(sys.executable), "mwcomms")


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    if not os.path.exists(MWCOMMS):
        pytest.skip("the mwcomms CLI is not installed")
    run_dir = str(tmp_path_factory.mktemp("backbone"))
    with open(os.path.join(run_dir, "up.out"), "w") as out:
        up = subprocess.run([MWCOMMS, "--dir", run_dir, "up"], stdout=out,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=120)
    if up.returncode != 0:
        logs = Path(run_dir, "up.out").read_text()
        _take_down(run_dir)
        pytest.fail(f"mwcomms up failed ({up.returncode}): {logs}")
    yield run_dir
    _take_down(run_dir)


def _take_down(run_dir):
    """`mwcomms down`, or, when it cannot run (a concurrent reinstall), the recorded daemons
    stopped by hand: none outlives the tests."""
    try:
        subprocess.run([MWCOMMS, "--dir", run_dir, "down"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        pass
    state_path = Path(run_dir, "state.json")
    if not state_path.exists():
        return
    state = json.loads(state_path.read_text())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in state.get("pids", {}).values():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(1.0)
    if state.get("netns"):
        subprocess.run(["ip", "netns", "del", state["netns"]], capture_output=True)
    state_path.unlink()


def mwrun(run_dir, argv, timeout=60, **kw):
    return subprocess.run([MWCOMMS, "--dir", run_dir, "run", "--", *argv], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_curl_wget_and_http_server(backbone, tmp_path):
    tools = [t for t in ("curl", "wget") if shutil.which(t)]
    if not tools:
        pytest.skip("neither curl nor wget is installed")
    www = tmp_path / "www"
    www.mkdir()
    body = os.urandom(3_000_000)
    (www / "blob").write_bytes(body)
    port = _free_port()      # a port free here; the server binds it in the INS
    log = open(tmp_path / "httpd.log", "w")
    srv = subprocess.Popen([MWCOMMS, "--dir", backbone, "run", "--", sys.executable, "-m",
                            "http.server", "-b", "127.0.0.1", str(port), "-d", str(www)],
                           stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                           start_new_session=True)   # `mwcomms run` and its child: one group
    try:
        deadline = time.monotonic() + 20
        while "Serving HTTP" not in (tmp_path / "httpd.log").read_text():
            assert srv.poll() is None, (tmp_path / "httpd.log").read_text()
            assert time.monotonic() < deadline, "http.server did not start"
            time.sleep(0.1)
        for tool in tools:
            out = tmp_path / f"got-{tool}"
            argv = ([tool, "-sS", "-o", str(out), f"http://localhost:{port}/blob"]
                    if tool == "curl" else
                    [tool, "-q", "-O", str(out), f"http://127.0.0.1:{port}/blob"])
            r = mwrun(backbone, argv)
            assert r.returncode == 0, (tool, r.stdout, r.stderr)
            assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(body).digest()
    finally:
        os.killpg(srv.pid, signal.SIGTERM)
        try:
            srv.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(srv.pid, signal.SIGKILL)
            srv.wait()
        log.close()
    assert (tmp_path / "httpd.log").read_text().count('"GET /blob HTTP/1.1" 200') == len(tools)


def test_inet6_udp_and_errors(backbone):
    r = mwrun(backbone, [sys.executable, str(PROGRAMS / "inet6_udp_errors.py")])
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == ["UDP6 v6 hello ::1 True", "TCP6 100000 ::1 True",
                                     "REFUSED 111"], r.stdout + r.stderr


def test_getent_resolves_through_the_ins(backbone):
    if shutil.which("getent") is None:
        pytest.skip("getent is not installed")
    r = mwrun(backbone, ["getent", "hosts", "localhost"])
    assert r.returncode == 0 and r.stdout.split()[:2] in (["127.0.0.1", "localhost"],
                                                          ["::1", "localhost"]), r.stdout
    r = mwrun(backbone, ["getent", "hosts", "no-such-host.invalid"])
    assert r.returncode == 2 and r.stdout == ""          # as native: not found


@pytest.mark.parametrize("mode", ["block", "nbaccept-nbconn-nodelay-names"])
def test_64_concurrent_connections(backbone, mode):
    r = mwrun(backbone, [sys.executable, str(PROGRAMS / "concurrent_echo.py"), "64", "50000",
                         mode], timeout=120)
    assert "RESULT ok=64 accepted=64 of=64 peak_clients=64 peak_server=64" in r.stdout, \
        r.stdout + r.stderr[-2000:]


def test_connections_wait_behind_a_slow_server(backbone):
    r = mwrun(backbone, [sys.executable, str(PROGRAMS / "concurrent_echo.py"), "32", "50000",
                         "block-slow"], timeout=120)
    assert "RESULT ok=32 accepted=32 of=32 peak_clients=32 peak_server=32" in r.stdout, \
        r.stdout + r.stderr[-2000:]


def test_errnos_same_as_native(backbone, cbuild):
    """shim_inet errnos natively and through mwcommsd + the INS: the same lines."""
    exe = str(cbuild("shim_inet"))
    native = subprocess.run([exe, "errnos"], capture_output=True, text=True, timeout=60)
    assert native.returncode == 0 and "DONE" in native.stdout, native.stdout + native.stderr
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:verify_asan_link_order=0")
    r = mwrun(backbone, [exe, "errnos"], env=env)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    assert r.stdout.splitlines() == native.stdout.splitlines()


def test_urgent_data_goes_inline(backbone):
    """MSG_OOB is not carried as urgent data: the byte arrives inline, in order (as a peer
    with SO_OOBINLINE reads it), never lost."""
    code = ("import socket,time\n"
            "l=socket.socket(); l.bind(('127.0.0.1',0)); l.listen(1)\n"
            "c=socket.create_connection(l.getsockname()); a,_=l.accept()\n"
            "c.send(b'ab'); c.send(b'!', socket.MSG_OOB); c.send(b'cd'); c.close()\n"
            "got=b''\n"
            "while True:\n"
            "    d=a.recv(10)\n"
            "    if not d: break\n"
            "    got+=d\n"
            "print(got.decode())\n")
    r = mwrun(backbone, [sys.executable, "-c", code])
    assert r.stdout.strip() == "ab!cd", r.stdout + r.stderr
