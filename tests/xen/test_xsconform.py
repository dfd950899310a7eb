"""The XenStore conformance suite against the sim xenstored: one pytest case per suite case,
the command line a real-Xen run uses, and proof that the suite notices a wrong daemon; then
the same cases, and random requests side by side with the sim, against Debian's C xenstored."""
import contextlib
import errno
import mmap
import os
import random
import re
import select
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from mwcomms.tools import xsconform
from mwcomms.xen import xenstored
from mwcomms.xen._xsring import RingRelay


@pytest.fixture(scope="module")
def sim():
    with xenstored.running() as xs:
        target = xsconform.sim_target(xs.socket_path)
        yield target
        target.cleanup()


@pytest.mark.parametrize("name", list(xsconform.CASES))
def test_case(sim, name):
    result = xsconform.run_case(sim, name)
    if result.status == "SKIP":
        pytest.skip(result.reason)
    assert result.status == "PASS", result.reason


def test_at_least_30_cases_in_every_area():
    names = list(xsconform.CASES)
    assert len(names) >= 30
    for prefix in ("rw-", "mkdir-", "rm-", "dir-", "perms-", "dom-", "watch-", "tx-", "wire-"):
        assert any(n.startswith(prefix) for n in names), prefix


def test_command_line_sim_whole_suite_under_5s():
    env = dict(os.environ, PYTHONSAFEPATH="1")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mwcomms.tools.xsconform", "--sim"],
                          capture_output=True, text=True, env=env, timeout=60)
    elapsed = time.monotonic() - t0
    lines = proc.stdout.splitlines()
    result = [l for l in lines if l.startswith("XSCONF RESULT:")]
    assert result, proc.stdout + proc.stderr
    m = re.match(r"XSCONF RESULT: (\d+) passed, (\d+) failed, (\d+) skipped", result[0])
    passed, failed, skipped = map(int, m.groups())
    assert (passed, failed, skipped) == (len(xsconform.CASES), 0, 0), proc.stdout
    assert proc.returncode == 0
    per_case = [l for l in lines if re.match(r"XSCONF (PASS|FAIL|SKIP) ", l)]
    assert len(per_case) == len(xsconform.CASES)
    assert elapsed < 5.0, f"suite took {elapsed:.1f}s"
    print(f"xsconform --sim: {elapsed:.2f}s including interpreter start")


def test_command_line_on_running_daemon_and_missing_socket(tmp_path):
    env = dict(os.environ, PYTHONSAFEPATH="1")
    with xenstored.running(mode="process") as xs:
        proc = subprocess.run([sys.executable, "-m", "mwcomms.tools.xsconform",
                               "--socket", xs.socket_path, "rw-roundtrip", "dom-chown-eperm"],
                              capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[:2] == ["XSCONF PASS rw-roundtrip",
                                            "XSCONF PASS dom-chown-eperm"]
    proc = subprocess.run([sys.executable, "-m", "mwcomms.tools.xsconform",
                           "--socket", str(tmp_path / "nothing")],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1
    assert "XSCONF RESULT: 0 passed, 1 failed, 0 skipped" in proc.stdout


def test_without_domain_connection_domain_cases_skip(tmp_path):
    """What a real-Xen run without a domU relay prints: SKIP with the reason, exit 0."""
    with xenstored.running() as xs:
        target = xsconform.Target(priv=xsconform._client_factory(xs.socket_path),
                                  socket_path=xs.socket_path)
        out = []
        results = xsconform.run(target, ["dom-chown-eperm", "watch-introduce-release",
                                         "rw-roundtrip"], out=out.append)
    assert [r.status for r in results] == ["SKIP", "SKIP", "PASS"]
    assert out[0].startswith("XSCONF SKIP dom-chown-eperm: no connection as an unprivileged")
    assert out[-1] == "XSCONF RESULT: 1 passed, 0 failed, 2 skipped"


def test_suite_catches_a_wrong_daemon():
    """A daemon that leaks ENOENT where the C one says EACCES, or has no quotas, fails."""
    with xenstored.running() as xs:
        store = xs._daemon.store
        target = xsconform.sim_target(xs.socket_path)
        store._errno_from_parents = lambda conn, path, err, perm: err
        store.quotas.nodes = store.quotas.watches = 0
        bad = {r.name: r for r in xsconform.run(target, [
            "dom-enoent-vs-eacces", "dom-read-denied-eacces", "dom-node-quota-enospc",
            "dom-watch-quota-e2big", "rw-roundtrip"], out=lambda s: None)}
    assert bad["dom-enoent-vs-eacces"].status == "FAIL"
    assert "expected EACCES, got ENOENT" in bad["dom-enoent-vs-eacces"].reason
    assert bad["dom-node-quota-enospc"].status == "FAIL"
    assert bad["dom-watch-quota-e2big"].status == "FAIL"
    assert bad["rw-roundtrip"].status == "PASS"


def test_hung_case_is_reported_not_waited_for(monkeypatch):
    monkeypatch.setattr(xsconform, "CASE_TIMEOUT", 0.5)
    release, finished = threading.Event(), threading.Event()

    def hangs(c):
        c.cleanups.append(finished.set)
        release.wait(10)
    monkeypatch.setitem(xsconform.CASES, "test-hangs", hangs)
    with xenstored.running() as xs:
        target = xsconform.Target(priv=xsconform._client_factory(xs.socket_path))
        t0 = time.monotonic()
        r = xsconform.run_case(target, "test-hangs")
        elapsed = time.monotonic() - t0
        release.set()
        assert finished.wait(5)
        for t in threading.enumerate():     # let the case tidy up before the daemon goes
            if t.name == "xsconform-test-hangs":
                t.join(5)
    assert r.status == "FAIL" and "hung" in r.reason
    assert elapsed < 2


# ---------------------------------------------------------------------------------------
# The same suite against the real C xenstored: Debian's xen-utils-4.17 binary, run on this
# host with a fake hypervisor (xsconform_fakexen.c, LD_PRELOADed) and a relay that plays a
# guest's side of the XenStore ring page, so that the unprivileged cases run too.

REAL_PACKAGES = ["xen-utils-4.17", "libxenstore4", "libxenmisc4.17", "libxenevtchn1",
                 "libxengnttab1", "libxentoolcore1", "libxentoollog1", "libxencall1",
                 "libxenforeignmemory1", "libxendevicemodel1", "libxenhypfs1", "libyajl2"]
REAL_CACHE = os.environ.get("MW_XENSTORED_CACHE", "/var/tmp/mwcomms-xenstored")
REAL_BIN = "usr/lib/xen-4.17/bin/xenstored"
HERE = os.path.dirname(os.path.abspath(__file__))


def _real_root():
    """The extracted Debian packages (downloaded once into REAL_CACHE), or pytest.skip."""
    root = os.path.join(REAL_CACHE, "root")
    if os.path.exists(os.path.join(root, REAL_BIN)):
        return root
    for tool in ("apt-get", "dpkg-deb"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} missing: cannot fetch Debian's xenstored")
    os.makedirs(REAL_CACHE, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=REAL_CACHE)
    try:
        proc = subprocess.run(["apt-get", "download", *REAL_PACKAGES], cwd=tmp,
                              capture_output=True, text=True, timeout=300)
        if proc.returncode:
            pytest.skip(f"apt-get download failed: {proc.stderr.strip()[-300:]}")
        staging = os.path.join(tmp, "root")
        for deb in sorted(os.listdir(tmp)):
            if deb.endswith(".deb"):
                subprocess.run(["dpkg-deb", "-x", os.path.join(tmp, deb), staging], check=True)
        try:
            os.replace(staging, root)
        except OSError:                     # another run got there first
            if not os.path.exists(os.path.join(root, REAL_BIN)):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


class RealXenstored:
    """Debian's xenstored on a fake hypervisor, with domain 7 introduced behind a relay."""

    DOMID = 7

    def __init__(self, root, build, poke=False):
        self.poke, self.pokes = poke, []
        self.dir = tempfile.mkdtemp(prefix="xsr", dir="/tmp")
        d = self.dir
        with open(f"{d}/dom0.ring", "wb") as f:
            f.write(bytes(4096))
        with open(f"{d}/xsd_port", "w") as f:
            f.write("1\n")
        os.mkfifo(f"{d}/evtchn")
        os.makedirs(f"{d}/run")
        os.makedirs(f"{d}/lib")
        self.relays = {}
        env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(root, "usr/lib/x86_64-linux-gnu"),
                   LD_PRELOAD=build, FAKEXEN_DIR=d, XENSTORED_RUNDIR=f"{d}/run",
                   XENSTORED_ROOTDIR=f"{d}/lib")
        self.proc = subprocess.Popen([os.path.join(root, REAL_BIN), "-N"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.socket_path = f"{d}/run/socket"
        deadline = time.monotonic() + 10
        while not self._listening():        # it binds, then listens: the file comes first
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                pytest.fail(f"Debian's xenstored did not start (exit {self.proc.returncode})")
            time.sleep(0.01)

    def _listening(self):
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(self.socket_path)
            except (FileNotFoundError, ConnectionRefusedError):
                return False
        return True

    def introduce(self, client, domid):
        """The toolstack's INTRODUCE, with the domain's ring page and relay set up first.
        The relay is woken through the fake event channel, or (poke=True, as on real Xen
        with a paused domain) polls and pokes xenstored through its Unix socket."""
        d = self.dir
        with open(f"{d}/dom{domid}.ring", "wb") as f:
            f.write(bytes(4096))
        with open(f"{d}/dom{domid}.ring", "r+b") as f:
            page = mmap.mmap(f.fileno(), 4096)
        os.mkfifo(f"{d}/dom{domid}.kick")
        kick = os.open(f"{d}/dom{domid}.kick", os.O_RDWR | os.O_NONBLOCK)
        if self.poke:
            notify, wake = xsconform.socket_poker(self.socket_path), None
            self.pokes.append(notify)
        else:
            evtchn = os.open(f"{d}/evtchn", os.O_RDWR | os.O_NONBLOCK)

            def notify():
                with contextlib.suppress(BlockingIOError):
                    os.write(evtchn, b"e")
            wake = kick
        self.relays[domid] = RingRelay(page, f"{d}/dom{domid}.sock", notify, wake)
        client.introduce_domain(domid, 0, 5)
        return self.relays[domid].sock_path

    def target(self):
        p = xsconform._client_factory(self.socket_path)()
        try:
            sock = self.introduce(p, self.DOMID)
            home = f"/local/domain/{self.DOMID}".encode()
            p.mkdir(home)
            p.set_perms(home, [b"n0", f"r{self.DOMID}".encode()])
        finally:
            p.close()
        return xsconform.Target(priv=xsconform._client_factory(self.socket_path),
                                domain=xsconform._client_factory(sock), domid=self.DOMID,
                                socket_path=self.socket_path, introduce=self.introduce)

    def close(self):
        for relay in self.relays.values():
            relay.close()
        for poke in self.pokes:
            poke.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def real_build(tmp_path_factory):
    """(extracted Debian packages, the fake hypervisor's .so), or a skip saying what lacks."""
    if not shutil.which("gcc"):
        pytest.skip("gcc missing: cannot build the fake hypervisor")
    root = _real_root()
    build = str(tmp_path_factory.mktemp("fakexen") / "fakexen.so")
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", build,
                    os.path.join(HERE, "xsconform_fakexen.c"), "-ldl"], check=True)
    return root, build


@pytest.fixture(scope="module", params=["evtchn", "poke"])
def real(real_build, request):
    """Debian's xenstored with domain 7 behind a ring relay woken by the (fake) event
    channel, or polling and poking xenstored as --paused-domain does on real Xen."""
    daemon = RealXenstored(*real_build, poke=request.param == "poke")
    try:
        yield daemon, daemon.target()
    finally:
        daemon.close()


@pytest.mark.parametrize("name", list(xsconform.CASES))
def test_case_on_debian_xenstored(real, name):
    result = xsconform.run_case(real[1], name)
    if result.status == "SKIP":
        pytest.skip(result.reason)
    assert result.status == "PASS", result.reason


def test_paused_domain_that_cannot_be_used_skips_with_the_reason():
    with xenstored.running() as xs:
        target = xsconform.paused_domain_target(xs.socket_path, 5)
        out = []
        xsconform.run(target, ["dom-chown-eperm"], out=out.append)
    assert out[0] == ("XSCONF SKIP dom-chown-eperm: --paused-domain 5 unusable: "
                      "[Errno 2] domain 5 is not introduced")


def wires_events_equal(real_wire, sim_wire):
    """Both connections received the same events so far (a GET_DOMAIN_PATH syncs them)."""
    return real_wire.call(10, b"0\0", 99998) == sim_wire.call(10, b"0\0", 99998)


class _Wire:
    """A raw connection: send a request, collect everything up to its reply."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)        # blocking: C xenstored's backlog is 1
        self.s.settimeout(5)
        self.buf = b""

    def call(self, mtype, payload, req_id, tx_id=0):
        self.s.sendall(struct.pack("=IIII", mtype, req_id, tx_id, len(payload)) + payload)
        out = []
        while True:
            while len(self.buf) < 16 or len(self.buf) < 16 + struct.unpack_from(
                    "=IIII", self.buf)[3]:
                data = self.s.recv(65536)
                assert data, "connection closed"
                self.buf += data
            msg = struct.unpack_from("=IIII", self.buf)
            payload_ = self.buf[16:16 + msg[3]]
            self.buf = self.buf[16 + msg[3]:]
            out.append((msg[0], msg[1], msg[2], payload_))
            if msg[0] != 15 and msg[1] == req_id:
                return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_requests_answered_like_debian_xenstored(real_build, seed):
    """The same random requests, from dom0 and from a domain (a connection each), go to a
    fresh Debian xenstored and a fresh sim; every reply and watch event must be identical,
    DIRECTORY_PART's generation counts included. Half way, a third domain that owns nodes
    is destroyed and released (its nodes go, watches fire, @releaseDomain fires)."""
    rng = random.Random(seed)
    domid, doomed = 8 + seed, 20 + seed
    daemon = RealXenstored(*real_build)
    with contextlib.ExitStack() as stack:
        stack.callback(daemon.close)
        sim = stack.enter_context(xenstored.running())
        r0, s0 = _Wire(daemon.socket_path), _Wire(sim.socket_path)
        with xsconform._client_factory(daemon.socket_path)() as p:
            rdom = daemon.introduce(p, domid)
            daemon.introduce(p, doomed)
        home = f"/local/domain/{domid}".encode()
        xd = str(doomed).encode()
        setup = [(12, b"/dd\0"), (12, home + b"\0"),
                 (14, home + b"\0n0\0" + f"r{domid}\0".encode()),
                 (12, home + b"/h\0"), (14, home + b"/h\0" + f"n{domid}\0".encode()),
                 (12, b"/dd/owned/sub\0"), (14, b"/dd/owned\0n" + xd + b"\0r0\0"),
                 (12, b"/dd/owned/new\0"), (14, b"/dd/c\0n0\0r" + xd + b"\0"),
                 (4, b"/dd\0w0\0"), (4, b"@releaseDomain\0rel\0")]
        s0.call(8, f"{domid}\0" "0\0" "5\0".encode(), 100)     # Debian's: introduced above
        s0.call(8, xd + b"\0" b"0\0" b"5\0", 101)
        for i, (op, payload) in enumerate(setup):
            assert r0.call(op, payload, i) == s0.call(op, payload, i), payload
        rd, sd = _Wire(rdom), _Wire(sim.domain_socket(domid))
        wires = {0: (r0, s0), domid: (rd, sd)}
        paths = [b"/dd", b"/dd/a", b"/dd/a/b", b"/dd/c", b"/dd/a/c/e", b"h", b"h/x", b"h/x/y",
                 home + b"/h/z", home, b"rel", b"/dd/a/", b"@introduceDomain",
                 b"@releaseDomain", b"/", b"", b"/dd/x y"]
        perms = [b"n0", b"r0", b"b0", f"n{domid}".encode(), f"r{domid}".encode(),
                 f"w{domid}".encode(), f"b{domid}".encode(), b"n32000", b"r32000", b"x1",
                 b"r" + xd, b"n" + xd]
        txs = {0: [], domid: []}
        for step in range(400):
            if step == 200:
                for i, (op, payload) in enumerate([
                        (12, b"/dd/owned/sub\0"), (14, b"/dd/owned\0n" + xd + b"\0r0\0"),
                        (4, b"/dd\0w9\0"), (4, b"@releaseDomain\0r9\0")]):
                    assert r0.call(op, payload, 4000 + i) == s0.call(op, payload, 4000 + i)
                os.unlink(f"{daemon.dir}/dom{doomed}.ring")    # the domain is gone ...
                a = r0.call(9, xd + b"\0", 5000)               # ... and released
                b = s0.call(9, xd + b"\0", 5000)
                assert a == b and a[-1] == (9, 5000, 0, b"OK\0"), (a, b)
                assert (15, 0, 0, b"@releaseDomain\0r9\0") in a
                assert (15, 0, 0, b"/dd/owned\0w9\0") in a
                assert wires_events_equal(rd, sd)
            who = rng.choice([0, domid])
            op = rng.choice([11, 11, 11, 12, 13, 2, 1, 3, 14, 4, 5, 6, 7, 22, 10, 21, 2])
            path = rng.choice(paths)
            if op == 11:
                payload = path + b"\0" + rng.choice([b"v", b"", b"x" * 2100, b"a\0b"])
            elif op == 14:
                payload = path + b"\0" + b"".join(rng.choice(perms) + b"\0"
                                                  for _ in range(rng.randrange(0, 7)))
            elif op in (4, 5):
                payload = path + b"\0" + rng.choice([b"t1", b"t2"]) + b"\0"
            elif op in (6, 21):
                payload = b"\0"
            elif op == 7:
                payload = rng.choice([b"T\0", b"F\0", b"X\0"])
            elif op == 22:
                payload = path + b"\0" + rng.choice([b"0", b"1", b"5"]) + b"\0"
            elif op == 10:
                payload = rng.choice([b"3\0", b"abc\0", b"-1\0", b"3"])
            else:
                payload = path + b"\0"
            # Never sent (the C daemon answers them with a stale errno, and aborts when errno
            # is 0): single-argument requests that are not one string, SET_PERMS refused on a
            # special path.
            if op == 14 and path.startswith(b"@") and (who != 0 or path not in (
                    b"@introduceDomain", b"@releaseDomain")):
                continue
            tx = 0
            if op == 7 or (txs[who] and rng.random() < 0.4):
                tx = rng.choice(txs[who] or [0, 99])
            a = wires[who][0].call(op, payload, 1000 + step, tx)
            b = wires[who][1].call(op, payload, 1000 + step, tx)
            assert a == b, (step, who, op, tx, payload, a, b)
            other = domid if who == 0 else 0        # its events so far, then in sync
            assert wires[other][0].call(10, b"0\0", 99999) == wires[other][1].call(
                10, b"0\0", 99999), (step, "events on the other connection")
            if op == 6 and a[-1][0] == 6:
                txs[who].append(int(a[-1][3].rstrip(b"\0")))
            elif op == 7 and tx in txs[who] and a[-1][3] != b"EINVAL\0":
                txs[who].remove(tx)
            elif op == 21 and a[-1][0] == 21:
                txs[who].clear()
