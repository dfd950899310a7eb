"""mwcommsd as a process, end to end on the sim backend: a sim XenStore, the toolstack's
attach(front=1, ins=2), the INS daemon and mwcommsd started with `python -m`, and a test client
in this process speaking the local protocol (docs/local-protocol.md) with struct and
SCM_RIGHTS, as the shim does. Every byte goes app fd -> mwcommsd -> rings -> INS -> loopback
and back. Loopback only."""
import errno
import hashlib
import os
import select
import signal
import socket
import struct
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from mwcomms._native import ffi
from mwcomms.xen import connection, ring, xenbus, xenstored
from mwcomms.xen.platform import Platform
from mwcomms.xen.xenbus import BackendDriver, XenbusState as S

FRONT, INS = 1, 2

# local.h
HELLO, SOCKET, IDENTIFY, CONNECT, BIND, LISTEN, ACCEPT = 1, 2, 3, 4, 5, 6, 7
GETSOCKNAME, GETPEERNAME, GETSOCKOPT, SETSOCKOPT, SHUTDOWN, CLOSE = 8, 9, 10, 11, 12, 13
GETADDRINFO, GETNAMEINFO, IOCTL, STATUS = 14, 15, 16, 17
F_NONBLOCK = 1
ST_CONNECTING, ST_CONNECTED, ST_LISTENING, ST_CLOSED = 1, 2, 3, 4
HDR = struct.Struct("<IHHIi")
DGRAM_HDR = 40


def sockaddr(host: str, port: int) -> bytes:
    """struct mw_sockaddr of an IPv4 address (port in network order)."""
    return (struct.pack("<H", socket.AF_INET) + struct.pack(">HI", port, 0)
            + socket.inet_aton(host) + bytes(12) + struct.pack("<II", 0, 0))


def parse_sockaddr(b: bytes) -> tuple[int, str, int]:
    fam = struct.unpack_from("<H", b)[0]
    port = struct.unpack_from(">H", b, 2)[0]
    host = socket.inet_ntoa(b[8:12]) if fam == socket.AF_INET else socket.inet_ntop(
        socket.AF_INET6, b[8:24])
    return fam, host, port


class Local:
    """A shim's control connection: one call at a time, fds by SCM_RIGHTS."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.s.settimeout(20)
        self.s.connect(path)
        self.seq = 0

    def call(self, op, body=b"", flags=0, fd=None):
        self.seq += 1
        msg = HDR.pack(HDR.size + len(body), op, flags, self.seq, 0) + body
        if fd is None:
            self.s.send(msg)
        else:
            socket.send_fds(self.s, [msg], [fd])
        data, fds, _, _ = socket.recv_fds(self.s, 65536, 2)
        length, rop, _, seq, ret = HDR.unpack_from(data)
        assert (length, rop, seq) == (len(data), op, self.seq)
        return ret, data[HDR.size:], fds

    def socket(self, family=socket.AF_INET, type=socket.SOCK_STREAM):
        ret, body, fds = self.call(SOCKET, struct.pack("<iiiI", family, type, 0, 0))
        if ret < 0:
            raise OSError(-ret, os.strerror(-ret))
        handle = struct.unpack_from("<Q", body)[0]
        assert len(fds) == 1
        return handle, socket.socket(fileno=fds[0])

    def connect(self, handle, host, port, flags=0, filler=0, sndbuf=0, fd=None):
        body = struct.pack("<Q", handle) + sockaddr(host, port) + struct.pack("<II", filler, sndbuf)
        return self.call(CONNECT, body, flags, fd)[0]

    def handle_call(self, op, handle, arg=0):
        return self.call(op, struct.pack("<QiI", handle, arg, 0))

    def status(self, handle):
        ret, body, _ = self.handle_call(STATUS, handle)
        assert ret == 0
        return struct.unpack("<iI", body)

    def close(self):
        self.s.close()


def _wait(cond, timeout=20, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _have_ins() -> bool:
    try:
        import mwcomms.ins.daemon  # noqa: F401
        return True
    except ImportError:
        return False


class World:
    def __init__(self, xs, tool, tmp_path):
        self.xs, self.tool, self.tmp = xs, tool, tmp_path
        self.simdir = str(tmp_path / "sim")
        # a Unix socket path has 107 bytes at most: a short directory of its own
        self.sockdir = tempfile.mkdtemp(prefix="mwc-")
        self.control = os.path.join(self.sockdir, "control.sock")
        self.fp, self.bp = xenbus.attach(tool, FRONT, INS)
        self.ins = self.mwd = None

    def close(self):
        """Kill what is still running, close the toolstack's client, drop the sockets."""
        for p in (self.mwd, self.ins):
            if p and p.poll() is None:
                p.kill()
                p.wait()
        self.tool.close()
        shutil.rmtree(self.sockdir, ignore_errors=True)

    def _spawn(self, args, log):
        env = {**os.environ, "PYTHONSAFEPATH": "1"}
        with open(log + ".err", "ab") as err:        # the C engines log to stderr
            return subprocess.Popen([sys.executable, "-m", *args, "--log", log], env=env,
                                    cwd="/", stdout=err, stderr=subprocess.STDOUT)

    def start_ins(self):
        self.ins = self._spawn(["mwcomms.ins.daemon", "--backend", "sim", "--sim-dir",
                                self.simdir, "--domid", str(INS), "--xenstore",
                                self.xs.domain_socket(INS)], str(self.tmp / "ins.log"))

    def start_mwcommsd(self):
        self.mwd = self._spawn(["mwcomms.daemon", "--backend", "sim", "--sim-dir", self.simdir,
                                "--domid", str(FRONT), "--ins-domid", str(INS), "--xenstore",
                                self.xs.domain_socket(FRONT), "--socket", self.control,
                                "--stats", str(self.tmp / "stats.json")],
                               str(self.tmp / "mwcommsd.log"))
        _wait(lambda: os.path.exists(self.control), what="control socket")

    def state(self, path):
        raw = xenbus.read_opt(self.tool, f"{path}/state")
        return int(raw) if raw else 0

    def wait_connected(self):
        _wait(lambda: self.state(self.fp) == 4 and self.state(self.bp) == 4, 30,
              f"Connected:\n{self.logs()}")
        # the engine attaches right after the frontend writes Connected
        _wait(lambda: self._ins_up(), 10, "engine attached")

    def _ins_up(self):
        c = Local(self.control)
        try:
            ret, body, _ = c.call(HELLO, struct.pack("<II", 1, 0))
            return ret == 0 and struct.unpack("<II", body)[1] & 0x100
        finally:
            c.close()

    def logs(self):
        out = ""
        for name in ("ins.log", "ins.log.err", "mwcommsd.log", "mwcommsd.log.err"):
            p = self.tmp / name
            if p.exists():
                out += f"--- {name}\n" + p.read_text()[-4000:]
        return out

    def stop(self, proc, sig=signal.SIGTERM):
        if proc and proc.poll() is None:
            proc.send_signal(sig)
            try:
                return proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise
        return proc.returncode if proc else None


@pytest.fixture
def world(tmp_path):
    with xenstored.running() as xs:
        tool = xenbus.connect_xenstore(xs.socket_path)
        for dom in (FRONT, INS):
            xenbus.introduce(tool, dom)
        w = World(xs, tool, tmp_path)
        try:
            yield w
        finally:
            w.close()


@pytest.fixture
def up(world):
    if not _have_ins():
        pytest.skip("the INS daemon (mwcomms.ins.daemon) is not installed")
    world.start_ins()
    world.start_mwcommsd()
    world.wait_connected()
    return world


def _pump(sock: socket.socket, payload: bytes, peer: socket.socket) -> bytes:
    """Send payload on sock while reading it on peer; return what peer read."""
    sock.setblocking(False)
    peer.setblocking(False)
    got, off = bytearray(), 0
    end = time.monotonic() + 60
    while len(got) < len(payload) and time.monotonic() < end:
        w = [sock] if off < len(payload) else []
        r, wr, _ = select.select([peer], w, [], 1)
        if wr:
            try:
                off += sock.send(payload[off:off + 65536])
            except BlockingIOError:
                pass
        if r:
            chunk = peer.recv(1 << 20)
            if not chunk:
                break
            got += chunk
    return bytes(got)


def test_without_ins_answers_enetdown_and_exits_cleanly(world):
    """mwcommsd alone: the control socket works, sockets fail closed with ENETDOWN, a client
    sending garbage is dropped, SIGTERM exits 0."""
    world.start_mwcommsd()
    c = Local(world.control)
    ret, body, _ = c.call(HELLO, struct.pack("<II", 1, 0))
    assert ret == 0 and struct.unpack("<II", body) == (1, 0)
    ret, _, fds = c.call(SOCKET, struct.pack("<iiiI", socket.AF_INET, socket.SOCK_STREAM, 0, 0))
    assert ret == -errno.ENETDOWN and not fds
    ret, _, _ = c.call(SOCKET, struct.pack("<iiiI", socket.AF_UNIX, socket.SOCK_STREAM, 0, 0))
    assert ret == -errno.EAFNOSUPPORT
    ret, _, _ = c.call(99)
    assert ret == -errno.EOPNOTSUPP            # unknown op: answered, the client stays
    ret, _, _ = c.handle_call(STATUS, 12345)
    assert ret == -errno.EBADF                 # no such handle
    bad = Local(world.control)
    bad.s.send(b"\x01\x02garbage")            # shorter than a header
    assert bad.s.recv(100) == b""              # dropped
    bad2 = Local(world.control)
    bad2.s.send(HDR.pack(999, HELLO, 0, 1, 0) + bytes(8))   # length field lies
    assert bad2.s.recv(100) == b""
    bad3 = Local(world.control)
    r, w = os.pipe()
    socket.send_fds(bad3.s, [HDR.pack(24, HELLO, 0, 1, 0) + bytes(8)], [r])  # fd where none
    assert bad3.s.recv(100) == b""
    os.close(r), os.close(w)
    ret, _, _ = c.call(HELLO, struct.pack("<II", 1, 0))
    assert ret == 0                            # the daemon is fine
    c.close()
    assert world.stop(world.mwd) == 0, world.logs()
    assert not os.path.exists(world.control)


def test_tcp_connect_and_data_both_ways(up):
    lst = socket.create_server(("127.0.0.1", 0))
    port = lst.getsockname()[1]
    c = Local(up.control)
    h, x = c.socket()
    assert c.connect(h, "127.0.0.1", port) == 0
    peer, _ = lst.accept()
    assert c.status(h) == (0, ST_CONNECTED)
    ret, body, _ = c.handle_call(GETPEERNAME, h)
    assert ret == 0 and parse_sockaddr(body) == (socket.AF_INET, "127.0.0.1", port)
    ret, body, _ = c.handle_call(GETSOCKNAME, h)
    assert ret == 0 and parse_sockaddr(body)[2] == peer.getpeername()[1]

    out = os.urandom(3 << 20)
    got = _pump(x, out, peer)
    assert hashlib.sha256(got).digest() == hashlib.sha256(out).digest()
    back = os.urandom(3 << 20)
    got = _pump(peer, back, x)
    assert hashlib.sha256(got).digest() == hashlib.sha256(back).digest()

    # half close by the app: the peer sees EOF, the other direction still works
    assert c.handle_call(SHUTDOWN, h, socket.SHUT_WR)[0] == 0
    x.shutdown(socket.SHUT_WR)
    peer.setblocking(True)
    peer.settimeout(10)
    assert peer.recv(10) == b""
    peer.sendall(b"after half close")
    x.setblocking(True)
    x.settimeout(10)
    assert x.recv(100) == b"after half close"
    peer.close()
    assert x.recv(100) == b""                  # the peer's FIN
    x.close()
    c.close()
    import json

    def stats():
        try:
            return json.loads((up.tmp / "stats.json").read_text())
        except (OSError, ValueError):
            return {}
    _wait(lambda: stats().get("bytes_rx", 0) >= 3 << 20, 5, "stats")
    st = stats()
    assert st["link"] == "attached" and st["bytes_tx"] >= 3 << 20 and st["calls"] >= 5


def test_nonblocking_connect_filler(up):
    """EINPROGRESS, then the app's fd becomes writable when the INS has connected; a refused
    connect makes it writable too, with SO_ERROR = ECONNREFUSED."""
    lst = socket.create_server(("127.0.0.1", 0))
    port = lst.getsockname()[1]
    c = Local(up.control)
    for target, expect in ((port, 0), (None, errno.ECONNREFUSED)):
        if target is None:
            tmp = socket.create_server(("127.0.0.1", 0))
            target = tmp.getsockname()[1]
            tmp.close()                        # nothing listens there now
        h, x = c.socket()
        x.setblocking(False)
        sndbuf = x.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        x.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
        filler = 0
        try:
            while True:
                filler += x.send(b"\0")
        except BlockingIOError:
            pass
        assert 0 < filler < 4096
        assert not select.select([], [x], [], 0)[1]      # unwritable now
        assert c.connect(h, "127.0.0.1", target, F_NONBLOCK, filler, sndbuf,
                         fd=x.fileno()) == -errno.EINPROGRESS
        assert select.select([], [x], [], 10)[1], "never became writable"
        ret, body, _ = c.call(GETSOCKOPT, struct.pack("<QiiII", h, socket.SOL_SOCKET,
                                                       socket.SO_ERROR, 4, 0))
        assert ret == 0
        assert struct.unpack_from("<i", body, 8)[0] == expect
        if expect == 0:
            peer, _ = lst.accept()
            assert x.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= sndbuf // 2
            x.send(b"hello")
            peer.settimeout(10)
            assert peer.recv(10) == b"hello"    # the filler never reached the peer
            peer.close()
        x.close()
    c.close()


def test_listen_accept_with_tokens(up):
    c = Local(up.control)
    h, lx = c.socket()
    body = struct.pack("<Q", h) + sockaddr("127.0.0.1", 0) + bytes(8)
    assert c.call(BIND, body)[0] == 0
    assert c.handle_call(LISTEN, h, 4)[0] == 0
    ret, body, _ = c.handle_call(GETSOCKNAME, h)
    port = parse_sockaddr(body)[2]
    assert port
    assert c.handle_call(ACCEPT, h)[0] == -errno.EAGAIN      # nothing yet
    assert not select.select([lx], [], [], 0.2)[0]
    peers = [socket.create_connection(("127.0.0.1", port), 10) for _ in range(3)]
    for i, p in enumerate(peers):
        assert select.select([lx], [], [], 10)[0], "listener never readable"
        assert len(lx.recv(1)) == 1                           # one token
        ret, body, fds = c.handle_call(ACCEPT, h)
        assert ret == 0 and len(fds) == 1
        nh = struct.unpack_from("<Q", body)[0]
        fam, host, pport = parse_sockaddr(body[16:48])
        assert (host, pport) == p.getsockname()
        nx = socket.socket(fileno=fds[0])
        p.sendall(b"ping %d" % i)
        nx.settimeout(10)
        assert nx.recv(100) == b"ping %d" % i
        nx.sendall(b"pong %d" % i)
        p.settimeout(10)
        assert p.recv(100) == b"pong %d" % i
        assert c.status(nh) == (0, ST_CONNECTED)
        nx.close()
        assert p.recv(10) == b""                              # closed through the INS
        p.close()
    assert c.status(h) == (0, ST_LISTENING)
    lx.close()
    c.close()


def test_udp_datagrams(up):
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.settimeout(10)
    port = srv.getsockname()[1]
    c = Local(up.control)
    h, x = c.socket(type=socket.SOCK_DGRAM)
    assert x.type == socket.SOCK_SEQPACKET
    for size in (1, 0, 1400, 60000):
        payload = os.urandom(size)
        x.send(sockaddr("127.0.0.1", port) + struct.pack("<II", 0, size) + payload)
        data, src = srv.recvfrom(65536)
        assert data == payload
        srv.sendto(payload[::-1], src)
        x.settimeout(10)
        pkt = x.recv(70000)
        fam, host, sport = parse_sockaddr(pkt[:32])
        flags, length = struct.unpack_from("<II", pkt, 32)
        assert (host, sport, flags, length) == ("127.0.0.1", port, 0, size)
        assert pkt[DGRAM_HDR:] == payload[::-1]
    x.close()
    c.close()


def test_getaddrinfo_localhost(up):
    c = Local(up.control)
    node = b"localhost"
    body = struct.pack("<iiiiHHI", 0, socket.AF_INET, socket.SOCK_STREAM, 0, len(node), 0, 0)
    ret, rsp, _ = c.call(GETADDRINFO, body + node)
    assert ret == 0
    status, sys_errno, length, _ = struct.unpack_from("<iiII", rsp)
    assert status == 0 and length == len(rsp) - 16
    count, canon_len = struct.unpack_from("<II", rsp, 16)
    assert count >= 1
    fam, stype, proto, _ = struct.unpack_from("<iiiI", rsp, 24)
    assert (fam, stype) == (socket.AF_INET, socket.SOCK_STREAM)
    assert parse_sockaddr(rsp[40:72])[1] == "127.0.0.1"
    # a name that does not resolve: a resolver status, not a transport error
    node = b"does-not-exist.invalid"
    body = struct.pack("<iiiiHHI", 0, 0, 0, 0, len(node), 0, 0)
    ret, rsp, _ = c.call(GETADDRINFO, body + node)
    assert ret == 0 and struct.unpack_from("<i", rsp)[0] < 0
    c.close()


def test_ins_loss_fails_sockets_and_reconnects(up):
    lst = socket.create_server(("127.0.0.1", 0))
    c = Local(up.control)
    h, x = c.socket()
    assert c.connect(h, "127.0.0.1", lst.getsockname()[1]) == 0
    peer, _ = lst.accept()
    assert up.stop(up.ins) == 0, up.logs()
    x.settimeout(10)
    assert x.recv(10) == b""                               # EOF on the app's fd
    err, state = c.status(h)
    assert (err, state) == (-errno.ECONNRESET, ST_CLOSED)
    with pytest.raises(OSError) as exc:
        c.socket()
    assert exc.value.errno == errno.ENETDOWN
    up.start_ins()                                         # the INS comes back
    up.wait_connected()
    h2, x2 = c.socket()
    assert c.connect(h2, "127.0.0.1", lst.getsockname()[1]) == 0
    p2, _ = lst.accept()
    x2.sendall(b"again")
    p2.settimeout(10)
    assert p2.recv(10) == b"again"
    assert c.handle_call(GETPEERNAME, h)[0] == -errno.ENETDOWN   # the old one stays dead
    x.close(), x2.close(), p2.close(), peer.close()
    c.close()
    assert up.stop(up.mwd) == 0, up.logs()


# ---- the shim's own test programs, against the real daemon and INS -------------------------

SANITIZE = ["-g", "-O1", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all"]
SAN_ENV = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:verify_asan_link_order=0",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
CDIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "c")


def _shim_program(tmp_path, name):
    try:
        from mwcomms import shim_path
        shim = shim_path()
    except (ImportError, OSError) as exc:
        pytest.skip(f"the shim is not installed: {exc}")
    if not os.path.exists(shim):
        pytest.skip("the shim is not installed")
    src = os.path.join(CDIR, name + ".c")
    if shutil.which("gcc") is None or not os.path.exists(src):
        pytest.skip(f"gcc or {src} missing")
    exe = str(tmp_path / name)
    subprocess.run(["gcc", "-std=gnu11", "-Wall", "-Wextra", *SANITIZE, "-o", exe, src,
                    "-lpthread"], check=True)
    return shim, exe


@pytest.mark.parametrize("mode,cases", [
    ("tcp", ["nonblocking_connect", "accept4_flags_names", "bytes_dup_close", "half_close",
             "blocking_connect_1MiB_from_forked_child", "connect_refused",
             "reset_read_econnreset"]),
    ("udp", ["sendto_recvfrom_peek_trunc", "sendmsg_recvmsg_iovecs", "connected_read_write",
             "sendmmsg_recvmmsg", "emsgsize"]),
    ("resolve", ["getaddrinfo", "getnameinfo", "gethostbyname"]),
    ("exec", ["inherited_across_exec"]),
])
def test_shim_programs_through_mwcommsd(up, tmp_path, mode, cases):
    """tests/c/shim_inet.c under LD_PRELOAD=tcp_ip_wrapper.so, served by mwcommsd and the INS."""
    shim, exe = _shim_program(tmp_path, "shim_inet")
    env = {**os.environ, **SAN_ENV, "LD_PRELOAD": shim, "MWCOMMS_SOCKET": up.control}
    r = subprocess.run([exe, mode], env=env, capture_output=True, text=True, timeout=120)
    ok = {line.split()[1] for line in r.stdout.splitlines() if line.startswith("OK ")}
    assert r.returncode == 0 and "DONE" in r.stdout, \
        f"rc {r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}\n{up.logs()}"
    assert set(cases) <= ok, r.stdout


def test_shim_threads_and_fork_through_mwcommsd(up, tmp_path):
    shim, exe = _shim_program(tmp_path, "shim_fork")
    env = {**os.environ, **SAN_ENV, "LD_PRELOAD": shim, "MWCOMMS_SOCKET": up.control}
    r = subprocess.run([exe], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "OK fork_threads" in r.stdout, \
        f"rc {r.returncode}\n{r.stdout}\n{r.stderr[-3000:]}\n{up.logs()}"


def _rsp_bad_pad(back, req, mem):
    rid, cmd, _, sock = struct.unpack_from("<IHHI", req)
    back.put(struct.pack("<IHHIiII", rid, cmd, 0, sock, 0, 7, 0))       # pad not zero
    back.push()


def _rsp_unknown_id(back, req, mem):
    rid, cmd, _, sock = struct.unpack_from("<IHHI", req)
    back.put(struct.pack("<IHHIi", rid ^ 0x5a5a0000, cmd, 0, sock, 0))   # no such request
    back.push()


def _rsp_runaway_index(back, req, mem):
    struct.pack_into("<I", mem, 64, 1000)          # rsp_prod far past the requests sent


def _rsp_bad_answer(back, req, mem):
    """GETADDRINFO: an answer whose entry count does not match its length."""
    rid, cmd, _, sock = struct.unpack_from("<IHHI", req)
    off, length = struct.unpack_from("<II", req, 16)
    data_off = mem_data_offset[0]
    struct.pack_into("<II", mem, data_off + off, 5, 0)
    back.put(struct.pack("<IHHIiII", rid, cmd, 0, sock, 0, 0, 0) + struct.pack("<iiII", 0, 0, 8, 0))
    back.push()


mem_data_offset = [0]
_GAI_BODY = struct.pack("<iiiiHHI", 0, 0, 0, 0, 9, 0, 0) + b"localhost"


@pytest.mark.parametrize("op,body,respond,reason", [
    (SOCKET, struct.pack("<iiiI", 2, 1, 0, 0), _rsp_bad_pad, "response padding not zero"),
    (SOCKET, struct.pack("<iiiI", 2, 1, 0, 0), _rsp_unknown_id, "command ring"),
    (SOCKET, struct.pack("<iiiI", 2, 1, 0, 0), _rsp_runaway_index, "command ring"),
    (GETADDRINFO, _GAI_BODY, _rsp_bad_answer, "answer length does not match its contents"),
])
def test_hostile_ins_response_detaches_and_sets_up_again(world, op, body, respond, reason):
    """An INS (here a fake one in this process) that breaks the protocol in its answer:
    mwcommsd answers the parked call ENETDOWN, writes the reason to its `error` key, leaves the
    connection and sets up a fresh one; the daemon itself carries on."""
    world.start_mwcommsd()
    plat = Platform("sim", sim_dir=world.simdir, domid=INS)
    link = connection.BackLink(plat, FRONT)
    client = xenbus.connect_xenstore(world.xs.domain_socket(INS))
    bd = BackendDriver(client, world.bp, advertise=link.advertise, connect=link.connect,
                       teardown=link.teardown, retry_delay=0.05)
    import threading
    stop = threading.Event()
    th = threading.Thread(target=bd.run, args=(stop,), daemon=True)
    th.start()
    try:
        world.wait_connected()
        lay = link.layout
        view = ffi.buffer(ffi.cast("char *", link.area.address), lay.area_pages * 4096)
        area_ = ring.Area(view, ring.Geometry(lay.cmd_ring_pages, lay.evq_pages,
                                              lay.sock_slots, lay.data_pages))
        back = ring.CommandBack(area_)
        mem = memoryview(view)
        mem_data_offset[0] = (lay.area_pages - lay.data_pages) * 4096
        result = {}

        def call():
            c = Local(world.control)
            result["ret"] = c.call(op, body)[0]
            c.close()
        caller = threading.Thread(target=call)
        caller.start()
        req = None
        end = time.monotonic() + 10
        while req is None and time.monotonic() < end:
            req = back.take()
            time.sleep(0.01)
        assert req is not None, "no request reached the INS"
        respond(back, req, mem)
        link.evtchn.notify(link.port)
        caller.join(20)
        assert result.get("ret") == -errno.ENETDOWN, result
        _wait(lambda: reason.encode() in
              (xenbus.read_opt(world.tool, f"{world.fp}/error") or b""), 10, "error key")
        # the frontend left and came back for a fresh connection (the fake INS re-advertises)
        _wait(lambda: world.state(world.fp) in (3, 4) and world.state(world.bp) in (2, 4), 20,
              "a fresh set-up")
        assert world.mwd.poll() is None
        c = Local(world.control)
        assert c.call(HELLO, struct.pack("<II", 1, 0))[0] == 0
        c.close()
    finally:
        stop.set()
        th.join(15)
        client.close()
        plat.close()
    assert world.stop(world.mwd) == 0, world.logs()
    assert reason in world.logs()


def _fill(sender: socket.socket, limit: int) -> bytes:
    """Send from a non-blocking socket until it blocks for half a second (or `limit` bytes);
    return what was sent."""
    sender.setblocking(False)
    sent = bytearray()
    chunk = os.urandom(1 << 16)
    idle = time.monotonic()
    while len(sent) < limit and time.monotonic() - idle < 0.5:
        try:
            n = sender.send(chunk)
            sent += chunk[:n]
            idle = time.monotonic()
        except BlockingIOError:
            select.select([], [sender], [], 0.1)
    return bytes(sent)


@pytest.mark.parametrize("direction", ["to_app", "from_app"])
def test_flow_control_reaches_the_sender(up, direction):
    """A receiver that does not read makes the sender block after a bounded amount (rings,
    socketpair and kernel buffers), and nothing is lost once it reads."""
    lst = socket.create_server(("127.0.0.1", 0))
    c = Local(up.control)
    h, x = c.socket()
    assert c.connect(h, "127.0.0.1", lst.getsockname()[1]) == 0
    peer, _ = lst.accept()
    sender, receiver = (peer, x) if direction == "to_app" else (x, peer)
    limit = 256 << 20
    sent = _fill(sender, limit)
    assert len(sent) < limit, "the sender never blocked: something buffers without bound"
    receiver.setblocking(True)
    receiver.settimeout(10)
    got = bytearray()
    while len(got) < len(sent):
        got += receiver.recv(1 << 20)
    assert hashlib.sha256(got).digest() == hashlib.sha256(sent).digest()
    x.close(), peer.close()
    c.close()


def test_tcp_ipv6_loopback(up):
    try:
        lst = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    port = lst.getsockname()[1]
    c = Local(up.control)
    h, x = c.socket(family=socket.AF_INET6)
    addr = (struct.pack("<H", socket.AF_INET6) + struct.pack(">HI", port, 0)
            + socket.inet_pton(socket.AF_INET6, "::1") + struct.pack("<II", 0, 0))
    assert c.call(CONNECT, struct.pack("<Q", h) + addr + bytes(8))[0] == 0
    peer, _ = lst.accept()
    x.sendall(b"over v6")
    peer.settimeout(10)
    assert peer.recv(100) == b"over v6"
    ret, body, _ = c.handle_call(GETPEERNAME, h)
    assert ret == 0 and parse_sockaddr(body)[1:] == ("::1", port)
    x.close(), peer.close()
    c.close()


def test_ins_killed_fails_sockets_on_next_use_and_reconnects(up):
    """The INS dies without a word (SIGKILL: its domain destroyed). The next request that has
    to reach it finds its event channel end gone: every socket fails, and mwcommsd connects
    again to the INS that is started afterwards."""
    lst = socket.create_server(("127.0.0.1", 0))
    c = Local(up.control)
    h, x = c.socket()
    assert c.connect(h, "127.0.0.1", lst.getsockname()[1]) == 0
    peer, _ = lst.accept()
    up.ins.kill()
    up.ins.wait()
    x.sendall(b"into the void")          # tx DATA: the kick finds the INS gone
    x.settimeout(10)
    assert x.recv(10) == b""
    assert c.status(h) == (-errno.ECONNRESET, ST_CLOSED)
    _wait(lambda: b"INS gone" in (xenbus.read_opt(up.tool, f"{up.fp}/error") or b""), 10,
          "error key")
    up.start_ins()
    _wait(lambda: up.state(up.fp) == 4 and up.state(up.bp) == 4, 30, f"reconnect\n{up.logs()}")
    up.wait_connected()
    h2, x2 = c.socket()
    assert c.connect(h2, "127.0.0.1", lst.getsockname()[1]) == 0
    x2.close(), x.close(), peer.close()
    c.close()
    assert up.stop(up.mwd) == 0, up.logs()


def test_another_user_cannot_name_my_socket(up):
    """SO_PEERCRED ownership: a process of another uid gets EBADF for a handle it did not
    create, even when it guesses the number right, and IDENTIFY does not reveal it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as another user")
    os.chmod(up.sockdir, 0o755)
    c = Local(up.control)
    h, x = c.socket()
    code = ("import socket, struct, sys\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)\n"
            "s.settimeout(10)\n"
            f"s.connect({up.control!r})\n"
            f"body = struct.pack('<QiI', {h}, 0, 0)\n"
            "out = []\n"
            "for op in (17, 8, 6):\n"
            "    s.send(struct.pack('<IHHIi', 16 + len(body), op, 0, op, 0) + body)\n"
            "    out.append(struct.unpack_from('<IHHIi', s.recv(100))[4])\n"
            "print(*out)\n")
    py = "/usr/bin/python3"          # one that another user may run (not under /root)
    if not os.access(py, os.X_OK):
        pytest.skip(f"{py} is needed for the other user's client")
    r = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=60,
                       user=65534, group=65534, cwd="/", env={"PATH": os.environ["PATH"]})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(-errno.EBADF)] * 3
    assert c.status(h) == (0, 0)             # still mine, untouched
    x.close()
    c.close()


def test_requests_queue_per_connection_and_abandoned_calls(up):
    """Two requests sent back to back on one connection are answered in order, each with its
    seq (the second waits in the socket buffer while the first is at the INS); a client that
    goes away while its call is at the INS leaves the daemon fine."""
    c = Local(up.control)
    h, x = c.socket()
    body = struct.pack("<QiI", h, 0, 0)
    c.s.send(HDR.pack(32, GETSOCKNAME, 0, 101, 0) + body)
    c.s.send(HDR.pack(32, STATUS, 0, 102, 0) + body)
    first, second = c.s.recv(200), c.s.recv(200)
    assert HDR.unpack_from(first)[1:4] == (GETSOCKNAME, 0, 101)
    assert HDR.unpack_from(second)[1:4] == (STATUS, 0, 102)
    for _ in range(20):                       # give up on calls in flight (as after EINTR)
        g = Local(up.control)
        node = b"localhost"
        g.s.send(HDR.pack(16 + 24 + len(node), GETADDRINFO, 0, 1, 0)
                 + struct.pack("<iiiiHHI", 0, 0, 0, 0, len(node), 0, 0) + node)
        g.close()
    assert c.status(h) == (0, 0)
    ret, rsp, _ = c.call(GETADDRINFO, struct.pack("<iiiiHHI", 0, 2, 1, 0, 9, 0, 0) + b"localhost")
    assert ret == 0 and struct.unpack_from("<i", rsp)[0] == 0
    x.close()
    c.close()
