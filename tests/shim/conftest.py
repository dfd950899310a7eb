"""Fixtures for the shim's tests: the installed tcp_ip_wrapper.so, C test programs built under
ASan + UBSan, and FakeMwcommsd, a stand-in for mwcommsd written from docs/local-protocol.md.

FakeMwcommsd speaks the local protocol (local.h) on a SEQPACKET socket and executes the calls
on this host's own loopback sockets, for the test's purpose only: it lets the shim's side of
the protocol (fd passing, the non-blocking connect filler, listener tokens, datagram headers,
IDENTIFY after exec, STATUS after a failure) be tested without the real daemon and the INS.
It is deliberately simple: one thread per client and per pumped direction.
"""
import errno
import os
import select
import shutil
import socket
import struct
import subprocess
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CDIR = ROOT / "tests" / "c"
SANITIZE = ["-g", "-O1", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all"]
# LD_PRELOAD puts the shim ahead of libasan: ASan's link-order check must be told that is fine
SAN_ENV = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:verify_asan_link_order=0",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}

HDR = struct.Struct("=IHHIi")
OP = dict(HELLO=1, SOCKET=2, IDENTIFY=3, CONNECT=4, BIND=5, LISTEN=6, ACCEPT=7, GETSOCKNAME=8,
          GETPEERNAME=9, GETSOCKOPT=10, SETSOCKOPT=11, SHUTDOWN=12, CLOSE=13, GETADDRINFO=14,
          GETNAMEINFO=15, IOCTL=16, STATUS=17)
OPNAME = {v: k for k, v in OP.items()}
F_NONBLOCK = 1
ST_CONNECTING, ST_CONNECTED, ST_LISTENING, ST_CLOSED = 1, 2, 3, 4


@pytest.fixture(scope="session")
def shim():
    """Path of the installed tcp_ip_wrapper.so (MWCOMMS_TEST_SHIM overrides, for development)."""
    from mwcomms import shim_path
    return os.environ.get("MWCOMMS_TEST_SHIM") or shim_path()


@pytest.fixture(scope="session")
def cbuild(tmp_path_factory):
    """cbuild(name) -> path of tests/c/<name>.c built with ASan + UBSan (once per session)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    out = tmp_path_factory.mktemp("shim-bin")

    def _build(name):
        exe = out / name
        if not exe.exists():
            cmd = ["gcc", "-std=gnu11", "-Wall", "-Wextra", "-Werror", *SANITIZE,
                   "-o", str(exe), str(CDIR / (name + ".c")), "-lpthread"]
            subprocess.run(cmd, check=True)
        return exe
    return _build


def run_shimmed(shim, argv, sock_path, timeout=60, env=None):
    """Run argv with the shim preloaded, pointed at sock_path; return CompletedProcess."""
    e = dict(os.environ)
    e.update(SAN_ENV)
    e["LD_PRELOAD"] = shim
    e["MWCOMMS_SOCKET"] = str(sock_path)
    if env:
        e.update(env)
    return subprocess.run([str(a) for a in argv], env=e, capture_output=True, text=True,
                          timeout=timeout)


# ------------------------------------------------------------------------------------------
# mw_sockaddr <-> Python addresses
def sa_pack(addr, family):
    """(host, port[, flowinfo, scope]) -> 32-byte struct mw_sockaddr; None -> family 0."""
    if addr is None:
        return bytes(32)
    if family == socket.AF_INET:
        return (struct.pack("=H", 2) + struct.pack(">H", addr[1]) + bytes(4) +
                socket.inet_pton(socket.AF_INET, addr[0]) + bytes(12) + bytes(8))
    host, port = addr[0], addr[1]
    flow = addr[2] if len(addr) > 2 else 0
    scope = addr[3] if len(addr) > 3 else 0
    return (struct.pack("=H", 10) + struct.pack(">H", port) + struct.pack(">I", flow) +
            socket.inet_pton(socket.AF_INET6, host) + struct.pack("=II", scope, 0))


def sa_unpack(b):
    """32 bytes -> (family, addr tuple or None)."""
    fam = struct.unpack_from("=H", b, 0)[0]
    port = struct.unpack_from(">H", b, 2)[0]
    if fam == 2:
        return socket.AF_INET, (socket.inet_ntop(socket.AF_INET, b[8:12]), port)
    if fam == 10:
        flow = struct.unpack_from(">I", b, 4)[0]
        scope = struct.unpack_from("=I", b, 24)[0]
        return socket.AF_INET6, (socket.inet_ntop(socket.AF_INET6, b[8:24]), port, flow, scope)
    return 0, None


class FSock:
    """One forwarded socket of the fake: P (our end), the X inode, the real loopback socket."""

    def __init__(self, handle, family, type_, real, pair_type):
        self.handle, self.family, self.type = handle, family, type_
        self.real = real
        self.p, x = socket.socketpair(socket.AF_UNIX, pair_type)
        self.x = x
        self.x_ino = os.fstat(x.fileno()).st_ino
        self.state = 0
        self.error = 0
        self.closing = False
        self.queue = []          # listener: (FSock, peer)
        self.lock = threading.Lock()


class FakeMwcommsd:
    def __init__(self, path, no_ins=False):
        self.path = str(path)
        self.no_ins = no_ins
        self.socks = {}
        self.next_handle = 1
        self.calls = []
        self.lock = threading.Lock()
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.srv.bind(self.path)
        self.srv.listen(64)
        self.clients = []
        self.stopping = False
        threading.Thread(target=self._accept_loop, daemon=True).start()

    # -- plumbing ---------------------------------------------------------------------------
    def _accept_loop(self):
        while not self.stopping:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            self.clients.append(c)
            threading.Thread(target=self._client, args=(c,), daemon=True).start()

    def close(self):
        self.stopping = True
        self.srv.close()
        for c in self.clients:
            try:
                c.close()
            except OSError:
                pass
        for s in list(self.socks.values()):
            for o in (s.p, s.real):
                try:
                    o.close()
                except OSError:
                    pass

    def ops(self):
        with self.lock:
            return [OPNAME.get(o, o) for o in self.calls]

    def _client(self, c):
        while True:
            try:
                msg, fds, flags, _ = socket.recv_fds(c, 65536, 4)
            except OSError:
                return
            if not msg:
                for fd in fds:
                    os.close(fd)
                return
            ln, op, fl, seq, ret = HDR.unpack_from(msg)
            assert ln == len(msg) and ret == 0, "shim sent a malformed header"
            with self.lock:
                self.calls.append(op)
            body = msg[HDR.size:]
            self._reap_listeners()
            handler = getattr(self, "op_" + OPNAME.get(op, "unknown").lower(), None)
            try:
                if handler is None:
                    res = (-errno.EOPNOTSUPP, b"", None)
                else:
                    res = handler(body, fl, fds)
            finally:
                for fd in fds:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
            r, rbody, sendfd = res
            out = HDR.pack(HDR.size + len(rbody), op, 0, seq, r) + rbody
            try:
                if sendfd is not None:
                    socket.send_fds(c, [out], [sendfd.fileno()])
                    sendfd.close()
                else:
                    c.send(out)
            except OSError:
                return

    def _reap_listeners(self):
        """Close the listeners whose every X is closed before serving the next request, as
        mwcommsd's one event loop would have seen their HUP by then."""
        for s in list(self.socks.values()):
            if s.state != ST_LISTENING:
                continue
            pl = select.poll()
            pl.register(s.p, select.POLLHUP)
            if pl.poll(0):
                s.state = ST_CLOSED
                try:
                    s.real.shutdown(socket.SHUT_RDWR)
                    s.real.close()
                except OSError:
                    pass

    def _new(self, family, type_, real):
        with self.lock:
            h = self.next_handle | (7 << 32)
            self.next_handle += 1
        pt = socket.SOCK_STREAM if type_ == socket.SOCK_STREAM else socket.SOCK_SEQPACKET
        s = FSock(h, family, type_, real, pt)
        self.socks[h] = s
        return s

    def _get(self, body):
        h = struct.unpack_from("=Q", body)[0]
        return self.socks.get(h)

    @staticmethod
    def _rsp_socket(s, peer=None):
        return struct.pack("=Qii", s.handle, s.family, s.type) + sa_pack(peer, s.family)

    # -- pumps --------------------------------------------------------------------------------
    def _pump_stream(self, s):
        def up():                               # P -> real
            while True:
                try:
                    d = s.p.recv(65536)
                except OSError:
                    d = b""
                if not d:
                    try:
                        pl = select.poll()
                        pl.register(s.p, select.POLLHUP)   # ValueError: closed by close()
                        if pl.poll(0):          # every copy of X closed: close (RST when
                            s.closing = True    # the application set SO_LINGER 0)
                            t_down.join()
                            s.real.close()
                        else:                   # shutdown(SHUT_WR) by the application
                            s.real.shutdown(socket.SHUT_WR)
                    except (OSError, ValueError):
                        pass
                    return
                try:
                    s.real.sendall(d)
                except OSError:
                    return

        def down():                             # real -> P
            while True:
                # never blocked in recv: close() must really close the socket
                if not select.select([s.real], [], [], 0.05)[0]:
                    if s.closing:
                        return
                    continue
                try:
                    d = s.real.recv(65536)
                except OSError as e:
                    s.error = -e.errno
                    try:
                        s.p.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                if not d:
                    try:
                        s.p.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                try:
                    s.p.sendall(d)
                except OSError:
                    return
        t_down = threading.Thread(target=down, daemon=True)
        t_down.start()
        threading.Thread(target=up, daemon=True).start()

    def _pump_dgram(self, s):
        def up():
            while True:
                try:
                    d = s.p.recv(65536 + 40)
                except OSError:
                    return
                if not d:
                    return
                fam, addr = sa_unpack(d[:32])
                payload = d[40:]
                assert struct.unpack_from("=I", d, 36)[0] == len(payload)
                try:
                    if addr is None:
                        s.real.send(payload)
                    else:
                        s.real.sendto(payload, addr)
                except OSError as e:
                    s.error = -e.errno

        def down():
            while True:
                try:
                    d, addr = s.real.recvfrom(65536)
                except OSError:
                    return
                hdr = sa_pack(addr, s.family) + struct.pack("=II", 0, len(d))
                try:
                    s.p.send(hdr + d)
                except OSError:
                    return
        threading.Thread(target=up, daemon=True).start()
        threading.Thread(target=down, daemon=True).start()

    # -- ops ------------------------------------------------------------------------------------
    def op_socket(self, body, fl, fds):
        family, type_, proto, _ = struct.unpack("=iiiI", body)
        if self.no_ins:
            return -errno.ENETDOWN, b"", None
        if family not in (socket.AF_INET, socket.AF_INET6):
            return -errno.EAFNOSUPPORT, b"", None
        if type_ not in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            return -errno.ESOCKTNOSUPPORT, b"", None
        s = self._new(family, type_, socket.socket(family, type_, proto))
        if type_ == socket.SOCK_DGRAM:
            self._pump_dgram(s)
        x, s.x = s.x, None
        return 0, self._rsp_socket(s), x

    def op_identify(self, body, fl, fds):
        if len(fds) != 1:
            return -errno.EINVAL, b"", None
        ino = os.fstat(fds[0]).st_ino
        for s in list(self.socks.values()):
            if s.x_ino == ino:
                return 0, self._rsp_socket(s), None
        return -errno.ENOTSOCK, b"", None

    def op_connect(self, body, fl, fds):
        s = self._get(body)
        if s is None:
            return -errno.EBADF, b"", None
        fam, addr = sa_unpack(body[8:40])
        filler, sndbuf = struct.unpack_from("=II", body, 40)
        if s.type == socket.SOCK_DGRAM:
            if addr is None:
                return 0, b"", None
            try:
                s.real.connect(addr[:2] if fam == socket.AF_INET else addr)
            except OSError as e:
                return -e.errno, b"", None
            s.state = ST_CONNECTED
            return 0, b"", None
        if s.state == ST_LISTENING:
            return -errno.EISCONN, b"", None
        if s.state == ST_CONNECTING:
            return -errno.EALREADY, b"", None
        if s.state == ST_CONNECTED:
            return -errno.EISCONN, b"", None
        assert fl & F_NONBLOCK and len(fds) == 1, "the shim always uses the filler scheme"
        xdup = socket.socket(fileno=os.dup(fds[0]))
        s.state = ST_CONNECTING

        def finish():
            try:
                s.real.connect(addr)
                ok = True
            except OSError as e:
                s.error = -e.errno
                ok = False
            # the state /then/ X writable (draining the filler is what frees it): a poll
            # that wakes sees the outcome
            s.state = ST_CONNECTED if ok else 0
            got = 0
            while got < filler:
                got += len(s.p.recv(filler - got))
            if not ok:
                s.p.shutdown(socket.SHUT_RDWR)
            xdup.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf // 2)
            xdup.close()
            if ok:
                self._pump_stream(s)
        threading.Thread(target=finish, daemon=True).start()
        return -errno.EINPROGRESS, b"", None

    def op_bind(self, body, fl, fds):
        s = self._get(body)
        fam, addr = sa_unpack(body[8:40])
        try:
            s.real.bind(addr)
        except OSError as e:
            return -e.errno, b"", None
        return 0, b"", None

    def op_listen(self, body, fl, fds):
        s = self._get(body)
        backlog = struct.unpack_from("=i", body, 8)[0]
        try:
            s.real.listen(backlog)
        except OSError as e:
            return -e.errno, b"", None
        s.state = ST_LISTENING

        def acceptor():
            while True:
                try:
                    conn, peer = s.real.accept()
                except OSError:
                    return
                n = self._new(s.family, socket.SOCK_STREAM, conn)
                n.state = ST_CONNECTED
                self._pump_stream(n)
                with s.lock:
                    s.queue.append((n, peer))
                try:
                    s.p.send(b"t")
                except OSError:
                    return
        def watcher():                          # every copy of X closed: HUP on P
            pl = select.poll()
            pl.register(s.p, select.POLLHUP)
            while not pl.poll(1000):
                if self.stopping:
                    return
            try:
                s.real.shutdown(socket.SHUT_RDWR)   # wakes the acceptor
            except OSError:
                pass
            s.real.close()
        threading.Thread(target=acceptor, daemon=True).start()
        threading.Thread(target=watcher, daemon=True).start()
        return 0, b"", None

    def op_accept(self, body, fl, fds):
        s = self._get(body)
        if s.state != ST_LISTENING:
            return -errno.EINVAL, b"", None
        with s.lock:
            if not s.queue:
                return -errno.EAGAIN, b"", None
            n, peer = s.queue.pop(0)
        x, n.x = n.x, None
        return 0, self._rsp_socket(n, peer), x

    def _name(self, body, fn):
        s = self._get(body)
        try:
            a = getattr(s.real, fn)()
        except OSError as e:
            return -e.errno, b"", None
        return 0, sa_pack(a, s.family), None

    def op_getsockname(self, body, fl, fds):
        return self._name(body, "getsockname")

    def op_getpeername(self, body, fl, fds):
        return self._name(body, "getpeername")

    def op_getsockopt(self, body, fl, fds):
        s = self._get(body)
        level, name, ln, _ = struct.unpack_from("=iiII", body, 8)
        if level == socket.SOL_SOCKET and name == socket.SO_ERROR and s.error:
            v, s.error = struct.pack("=i", -s.error), 0
        else:
            try:
                v = s.real.getsockopt(level, name, ln)
            except OSError as e:
                return -e.errno, b"", None
        return 0, struct.pack("=II", len(v), 0) + v, None

    def op_setsockopt(self, body, fl, fds):
        s = self._get(body)
        level, name, ln, _ = struct.unpack_from("=iiII", body, 8)
        try:
            s.real.setsockopt(level, name, body[24:24 + ln])
        except OSError as e:
            return -e.errno, b"", None
        return 0, b"", None

    def op_shutdown(self, body, fl, fds):
        s = self._get(body)
        how = struct.unpack_from("=i", body, 8)[0]
        if s.type == socket.SOCK_STREAM and s.state != ST_CONNECTED:
            return -errno.ENOTCONN, b"", None
        if how != socket.SHUT_WR:
            try:
                s.real.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        return 0, b"", None

    def op_status(self, body, fl, fds):
        s = self._get(body)
        if s is None:
            return -errno.EBADF, b"", None
        err, s.error = s.error, 0
        return 0, struct.pack("=iI", err, s.state), None

    def op_ioctl(self, body, fl, fds):
        return 0, b"", None

    def op_close(self, body, fl, fds):
        return 0, b"", None

    def op_getaddrinfo(self, body, fl, fds):
        flags, family, socktype, proto, nl, sl, _ = struct.unpack_from("=iiiiHHI", body)
        node = body[24:24 + nl].decode() if nl else None
        serv = body[24 + nl:24 + nl + sl].decode() if sl else None
        try:
            res = socket.getaddrinfo(node, serv, family, socktype, proto, flags)
        except socket.gaierror as e:
            return 0, struct.pack("=iiII", e.errno, 0, 0, 0), None
        canon = (res[0][3] if res else "").encode()
        ans = struct.pack("=II", len(res), len(canon))
        for fam, st, pr, _, addr in res:
            ans += struct.pack("=iiiI", fam, st, pr, 0) + sa_pack(addr, fam)
        ans += canon
        return 0, struct.pack("=iiII", 0, 0, len(ans), 0) + ans, None

    def op_getnameinfo(self, body, fl, fds):
        fam, addr = sa_unpack(body[:32])
        flags = struct.unpack_from("=i", body, 32)[0]
        try:
            host, serv = socket.getnameinfo(addr, flags)
        except socket.gaierror as e:
            return 0, struct.pack("=iiII", e.errno, 0, 0, 0), None
        h, sv = host.encode(), serv.encode()
        ans = struct.pack("=II", len(h), len(sv)) + h + sv
        return 0, struct.pack("=iiII", 0, 0, len(ans), 0) + ans, None


@pytest.fixture
def fake(tmp_path):
    d = FakeMwcommsd(tmp_path / "control.sock")
    yield d
    d.close()


@pytest.fixture
def fake_factory(tmp_path):
    """fake_factory(**kw) -> a new FakeMwcommsd (closed at teardown)."""
    made = []

    def _make(**kw):
        d = FakeMwcommsd(tmp_path / f"control{len(made)}.sock", **kw)
        made.append(d)
        return d
    yield _make
    for d in made:
        d.close()


@pytest.fixture(scope="session")
def run():
    """run(shim, argv, sock_path, timeout=60, env=None) -> CompletedProcess (shim preloaded)."""
    return run_shimmed
