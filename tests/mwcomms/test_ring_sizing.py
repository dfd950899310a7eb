"""Running out, gracefully: mwcommsd with a small data area gives sockets smaller rings instead
of none, refuses one with ENOBUFS (and a log line) only when not even 4 KiB rings fit, and
rings come back when sockets close; mwcommsd or the INS out of file descriptors answers ENFILE
(and a log line) and recovers when sockets close. mwcommsd and the INS run as processes on
sim, as in test_mwcommsd.py, whose helpers (World, Local, _pump, _wait) this reuses."""
import errno
import hashlib
import importlib.util
import os
import pathlib
import resource
import select
import socket
import struct
import subprocess
import sys
import time

import pytest

from mwcomms.xen import xenbus, xenstored

_spec = importlib.util.spec_from_file_location(
    "_mwcommsd_helpers", pathlib.Path(__file__).with_name("test_mwcommsd.py"))
h = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(h)

DATA_PAGES, SOCK_SLOTS = 64, 64     # a 256 KiB data area: half a socket's worth of 256 KiB rings


NOFILE = 64                         # a file descriptor limit a daemon reaches soon


class LimitedWorld(h.World):
    """mwcommsd with extra arguments; either daemon with a hard RLIMIT_NOFILE of its own."""

    mwd_args: list = []
    nofile: dict = {}

    def _spawn(self, args, log):
        limit = self.nofile.get(args[0])
        if limit is None:
            return super()._spawn(args, log)

        def lower():
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
        env = {**os.environ, "PYTHONSAFEPATH": "1"}
        with open(log + ".err", "ab") as err:
            return subprocess.Popen([sys.executable, "-m", *args, "--log", log], env=env,
                                    cwd="/", stdout=err, stderr=subprocess.STDOUT,
                                    preexec_fn=lower)

    def start_mwcommsd(self):
        self.mwd = self._spawn(["mwcomms.daemon", "--backend", "sim", "--sim-dir", self.simdir,
                                "--domid", str(h.FRONT), "--ins-domid", str(h.INS),
                                "--xenstore", self.xs.domain_socket(h.FRONT),
                                "--socket", self.control, *self.mwd_args],
                               str(self.tmp / "mwcommsd.log"))
        h._wait(lambda: os.path.exists(self.control), what="control socket")


def _world(tmp_path, mwd_args=(), nofile=None):
    if not h._have_ins():
        pytest.skip("the INS daemon (mwcomms.ins.daemon) is not installed")
    with xenstored.running() as xs:
        tool = xenbus.connect_xenstore(xs.socket_path)
        for dom in (h.FRONT, h.INS):
            xenbus.introduce(tool, dom)
        w = LimitedWorld(xs, tool, tmp_path)
        w.mwd_args, w.nofile = list(mwd_args), dict(nofile or {})
        try:
            w.start_ins()
            w.start_mwcommsd()
            w.wait_connected()
            yield w
        finally:
            w.close()


@pytest.fixture
def small(tmp_path):
    yield from _world(tmp_path, ["--data-pages", str(DATA_PAGES), "--sock-slots",
                                 str(SOCK_SLOTS)])


@pytest.fixture(params=["mwcomms.daemon", "mwcomms.ins.daemon"])
def few_fds(request, tmp_path):
    yield from _world(tmp_path, nofile={request.param: NOFILE})


def _close_then_socket_again(c, socks, n, refused):
    """Close the first @n of @socks: a new socket must work again within 10 s (until then
    socket() may only fail with @refused); then close the rest."""
    for _, fd in socks[:n]:
        fd.close()

    def another():
        try:
            socks.append(c.socket())
            return True
        except OSError as exc:
            assert exc.errno == refused
            return False
    h._wait(another, 10, "a socket once others closed")
    for _, fd in socks[n:]:
        fd.close()


def test_small_area_degrades_then_refuses_with_enobufs(small):
    c = h.Local(small.control)
    socks = []
    while True:
        try:
            socks.append(c.socket())
        except OSError as exc:
            assert exc.errno == errno.ENOBUFS, exc
            break
        assert len(socks) <= SOCK_SLOTS, "never refused"
    # full-size rings (256 KiB each way) would not fit one socket; smaller ones fit many
    assert len(socks) >= 8, len(socks)
    print(f"\n{len(socks)} sockets in a {DATA_PAGES * 4} KiB data area, then ENOBUFS")
    log = (small.tmp / "mwcommsd.log.err").read_text()
    assert "data area short" in log and "new sockets get ENOBUFS" in log, log

    # A socket with the smallest rings still moves bytes both ways, whole.
    lst = socket.create_server(("127.0.0.1", 0))
    handle, x = socks[-1]
    assert c.connect(handle, "127.0.0.1", lst.getsockname()[1]) == 0
    peer, _ = lst.accept()
    out, back = os.urandom(1 << 20), os.urandom(1 << 20)
    assert hashlib.sha256(h._pump(x, out, peer)).digest() == hashlib.sha256(out).digest()
    assert hashlib.sha256(h._pump(peer, back, x)).digest() == hashlib.sha256(back).digest()

    # Closing sockets gives their rings back: new sockets work again.
    _close_then_socket_again(c, socks, 4, errno.ENOBUFS)
    peer.close()
    lst.close()
    c.close()


def test_out_of_fds_answers_enfile_and_recovers(few_fds):
    """Each forwarded socket holds an fd in mwcommsd (P) and one in the INS (its kernel
    socket): whichever daemon runs out, the application gets ENFILE (a system-wide limit for
    it, not its own table) and the daemon logs why; sockets work again once some close."""
    c = h.Local(few_fds.control)
    socks = []
    while True:
        try:
            socks.append(c.socket())
        except OSError as exc:
            assert exc.errno == errno.ENFILE, exc
            break
        assert len(socks) <= NOFILE, "never refused"
    assert socks, "not even one socket"
    print(f"\n{len(socks)} sockets, then ENFILE")
    log = "".join((few_fds.tmp / name).read_text()
                  for name in ("mwcommsd.log.err", "ins.log", "ins.log.err")
                  if (few_fds.tmp / name).exists())
    assert "out of file descriptors" in log, log[-3000:]
    _close_then_socket_again(c, socks, 3, errno.ENFILE)
    c.close()


@pytest.fixture
def ins_few_fds(tmp_path):
    yield from _world(tmp_path, nofile={"mwcomms.ins.daemon": NOFILE})


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _fill(c):
    """Sockets until the daemon out of fds answers ENFILE."""
    socks = []
    while True:
        try:
            socks.append(c.socket())
        except OSError as exc:
            assert exc.errno == errno.ENFILE, exc
            return socks
        assert len(socks) <= NOFILE, "never refused"


def test_listener_starved_by_the_ins_waits_quietly_and_recovers(ins_few_fds):
    """A connection waits in the backlog of a listener whose INS is out of fds: every ACCEPT
    fails with EMFILE there. The daemons must not retry in a loop (the failed attempt frees
    nothing); the listener accepts the connection once other sockets close."""
    w = ins_few_fds
    c = h.Local(w.control)
    lh, lx = c.socket()
    assert c.call(h.BIND, struct.pack("<Q", lh) + h.sockaddr("127.0.0.1", 0) + bytes(8))[0] == 0
    assert c.handle_call(h.LISTEN, lh, 4)[0] == 0
    port = h.parse_sockaddr(c.handle_call(h.GETSOCKNAME, lh)[1])[2]
    socks = _fill(c)
    client = socket.create_connection(("127.0.0.1", port), 10)   # the INS cannot accept it
    time.sleep(0.5)
    before = [_cpu_seconds(p.pid) for p in (w.mwd, w.ins)]
    time.sleep(2)
    used = [_cpu_seconds(p.pid) - b for p, b in zip((w.mwd, w.ins), before)]
    print(f"\nstarved listener, 2 s: mwcommsd {used[0]:.2f} s CPU, INS {used[1]:.2f} s CPU")
    assert used[0] < 0.3 and used[1] < 0.3, used
    assert not select.select([lx], [], [], 0)[0], "accepted although the INS had no fd"

    for _, fd in socks[:3]:
        fd.close()
    assert select.select([lx], [], [], 10)[0], "the listener never recovered"
    assert len(lx.recv(1)) == 1
    ret, body, fds = c.handle_call(h.ACCEPT, lh)
    assert ret == 0 and len(fds) == 1
    nx = socket.socket(fileno=fds[0])
    client.sendall(b"late but whole")
    nx.settimeout(10)
    assert nx.recv(100) == b"late but whole"
    nx.close(), client.close(), lx.close()
    for _, fd in socks[3:]:
        fd.close()
    c.close()


MANY = 1100                         # past FD_SETSIZE (1024) in each daemon


@pytest.fixture
def many_fds(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2 * MANY + 100:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard}: this test holds {MANY} sockets")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield from _world(tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _open_many(c):
    socks = [c.socket() for _ in range(MANY)]
    return socks


def _connected_socket(w, c, lst):
    h2, x2 = c.socket()
    assert c.connect(h2, "127.0.0.1", lst.getsockname()[1]) == 0
    p2, _ = lst.accept()
    x2.sendall(b"again")
    p2.settimeout(10)
    assert p2.recv(10) == b"again"
    x2.close(), p2.close()


def test_ins_with_more_sockets_than_select_takes_attaches_another_frontend(many_fds):
    """The INS's Python side opens a XenStore connection per new frontend (pyxs waits with
    select(), fds below 1024 only) while its engine holds more than 1024 sockets of the
    first one: the second frontend still connects and carries a socket."""
    w = many_fds
    lst = socket.create_server(("127.0.0.1", 0), backlog=16)
    c = h.Local(w.control)
    socks = _open_many(c)
    front2 = h.INS + 1
    xenbus.introduce(w.tool, front2)
    fp2, bp2 = xenbus.attach(w.tool, front2, h.INS)
    ctl2 = os.path.join(w.sockdir, "control2.sock")
    mwd2 = w._spawn(["mwcomms.daemon", "--backend", "sim", "--sim-dir", w.simdir, "--domid",
                     str(front2), "--ins-domid", str(h.INS), "--xenstore",
                     w.xs.domain_socket(front2), "--socket", ctl2], str(w.tmp / "mwd2.log"))
    try:
        h._wait(lambda: w.state(fp2) == 4 and w.state(bp2) == 4, 30,
                f"the second frontend connected\n{w.logs()}")
        assert w.ins.poll() is None, w.logs()
        c2 = h.Local(ctl2)
        h._wait(lambda: _up(c2), 10, "the second frontend's engine attached")
        _connected_socket(w, c2, lst)
        _connected_socket(w, c, lst)
        c2.close()
    finally:
        mwd2.kill()
        mwd2.wait()
    for _, fd in socks:
        fd.close()
    c.close()
    lst.close()


def _client(w):
    """A control connection, once mwcommsd's listen backlog has room."""
    for _ in range(200):
        try:
            return h.Local(w.control)
        except BlockingIOError:
            time.sleep(0.01)
    raise AssertionError("mwcommsd never accepted another control connection")


def _up(c):
    ret, body, _ = c.call(h.HELLO, struct.pack("<II", 1, 0))
    return ret == 0 and struct.unpack("<II", body)[1] & 0x100


def test_mwcommsd_with_more_clients_than_select_takes_reconnects(many_fds):
    """mwcommsd's Python side opens a XenStore connection when its INS dies (_lost) while
    1000 programs keep their control connections: it still reports the loss and connects
    again to the next INS."""
    w = many_fds
    lst = socket.create_server(("127.0.0.1", 0), backlog=16)
    clients = [_client(w) for _ in range(1020)]      # mwcommsd takes up to 1024
    assert all(_up(cl) for cl in clients)
    print(f"\nmwcommsd holds {len(os.listdir(f'/proc/{w.mwd.pid}/fd'))} fds")
    c = clients[0]
    hh, x = c.socket()
    w.ins.kill()
    w.ins.wait()
    x.sendall(b"into the void")
    h._wait(lambda: b"INS gone" in (xenbus.read_opt(w.tool, f"{w.fp}/error") or b""), 20,
            f"mwcommsd's error key\n{w.logs()}")
    x.close()
    w.start_ins()
    w.wait_connected()
    assert w.mwd.poll() is None, w.logs()
    _connected_socket(w, c, lst)
    for cl in clients:
        cl.close()
    lst.close()
