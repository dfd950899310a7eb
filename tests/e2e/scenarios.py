"""Socket scenarios for the differential tests: `python scenarios.py NAME` runs one and prints
what it observed, one JSON line per observation (call, result or errno name, bytes, addresses
with ports replaced by stable names). tests/e2e/test_differential.py runs each natively and
through the backbone and compares the two transcripts line by line.

Every scenario talks only to loopback. Port numbers differ between runs, so they are recorded
as the name the scenario gave them ("P0", "P1", ...), or "ephemeral".
"""
import errno
import hashlib
import json
import os
import select
import socket
import struct
import sys
import time

OUT = []
PORTS = {}


def _plain(v):
    """JSON-able form of what a call returned (bytes as text, tuples as lists)."""
    if isinstance(v, (bytes, bytearray)):
        return {"bytes": bytes(v).decode("latin-1")}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def rec(what, value=None, **kw):
    value = _plain(value)
    line = {"what": what}
    if value is not None:
        line["value"] = value
    line.update(kw)
    print(json.dumps(line, sort_keys=True), flush=True)


def port_name(port):
    if port not in PORTS:
        PORTS[port] = f"P{len(PORTS)}"
    return PORTS[port]


def addr(a):
    """An address with its port named, so that two runs compare."""
    if isinstance(a, tuple):
        return [a[0], port_name(a[1])] + list(a[2:])
    return a


def call(what, fn, *args, **kw):
    """Record fn's result, or the errno name it raised."""
    try:
        r = fn(*args, **kw)
    except socket.timeout:
        rec(what, error="timeout")
        return None
    except OSError as e:
        rec(what, error=errno.errorcode.get(e.errno, str(e.errno)))
        return None
    rec(what, value=r if isinstance(r, (int, str, type(None), bool)) else repr(type(r).__name__))
    return r


def listener(family=socket.AF_INET, host="127.0.0.1", backlog=8):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, 0))
    s.listen(backlog)
    return s


def pair(family=socket.AF_INET, host="127.0.0.1"):
    srv = listener(family, host)
    c = socket.socket(family, socket.SOCK_STREAM)
    c.connect(srv.getsockname()[:2])
    a, peer = srv.accept()
    return srv, c, a, peer


# ------------------------------------------------------------------------------------------
def tcp_basic(family=socket.AF_INET, host="127.0.0.1"):
    srv, c, a, peer = pair(family, host)
    rec("server.name", addr(srv.getsockname()))
    rec("client.peer", addr(c.getpeername()))
    rec("accepted.peer==client.name", addr(peer) == addr(c.getsockname()))
    rec("accepted.name", addr(a.getsockname()))
    rec("send", c.send(b"hello world"))
    rec("recv", a.recv(100).decode())
    rec("sendall-back", a.sendall(b"x" * 70000))
    got = b""
    while len(got) < 70000:
        chunk = c.recv(65536)
        if not chunk:
            break
        got += chunk
    rec("recv-total", len(got))
    c.shutdown(socket.SHUT_WR)
    rec("server-sees-eof", a.recv(10))
    rec("server-can-still-send", a.send(b"after half close"))
    rec("client-reads-after-its-shutdown", c.recv(100).decode())
    a.close()
    rec("client-eof", c.recv(10))
    c.close()
    srv.close()


def tcp_ipv6():
    tcp_basic(socket.AF_INET6, "::1")


def errors():
    srv = listener()
    port = srv.getsockname()[1]
    s = socket.socket()
    call("bind-in-use", s.bind, ("127.0.0.1", port))
    s.close()
    srv.close()
    s = socket.socket()
    call("connect-refused", s.connect, ("127.0.0.1", port))
    s.close()
    s = socket.socket()
    call("connect-unreachable", s.connect, ("192.0.2.1", 9))   # TEST-NET-1: no route here
    s.close()
    s = socket.socket()
    call("bind-foreign-addr", s.bind, ("192.0.2.1", 0))
    call("listen-unbound-then-name", lambda: (s.listen(1), addr(s.getsockname()))[1][0])
    s.close()
    u = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    call("connect-v4-addr-on-v6-socket", u.connect, ("127.0.0.1", 9))
    u.close()


def unconnected():
    """Calls on a stream socket that never connected."""
    s = socket.socket()
    s.settimeout(2)      # natively the calls fail at once; a socket that blocks shows as timeout
    call("getpeername-unconnected", s.getpeername)
    call("recv-unconnected", s.recv, 10)
    call("send-unconnected", s.send, b"x")
    call("shutdown-unconnected", s.shutdown, socket.SHUT_RDWR)
    s.close()


def nonblocking_connect():
    srv = listener()
    port = srv.getsockname()[1]
    c = socket.socket()
    c.setblocking(False)
    call("connect", c.connect, ("127.0.0.1", port))
    p = select.poll()
    p.register(c, select.POLLOUT)
    ev = p.poll(5000)
    rec("poll-writable", bool(ev and ev[0][1] & select.POLLOUT))
    rec("so_error", c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
    a, _ = srv.accept()
    rec("data-after", (c.send(b"ok"), a.recv(2).decode()))
    c.close(); a.close()
    # to a closed port: writable (with POLLERR) and SO_ERROR = ECONNREFUSED
    port2 = srv.getsockname()[1]
    srv.close()
    c = socket.socket()
    c.setblocking(False)
    call("connect-closed", c.connect, ("127.0.0.1", port2))
    ep = select.epoll()
    ep.register(c.fileno(), select.EPOLLOUT)
    ev = ep.poll(5)
    rec("epoll-fires", bool(ev))
    rec("so_error-closed", errno.errorcode.get(c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), 0))
    rec("so_error-cleared", c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
    c.close()


def accept4_flags():
    srv = listener()
    c = socket.socket()
    c.connect(srv.getsockname())
    a, _ = srv.accept()
    import fcntl
    rec("plain-accept-nonblock", bool(fcntl.fcntl(a.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK))
    rec("plain-accept-cloexec", bool(fcntl.fcntl(a.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC))
    a.close(); c.close()
    # accept4 through ctypes with SOCK_NONBLOCK | SOCK_CLOEXEC
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    c = socket.socket()
    c.connect(srv.getsockname())
    fd = libc.accept4(srv.fileno(), None, None, socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    rec("accept4-ok", fd >= 0)
    rec("accept4-nonblock", bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK))
    rec("accept4-cloexec", bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC))
    s = socket.socket(fileno=fd)
    call("accept4-recv-empty", s.recv, 10)
    s.close(); c.close()
    srv.setblocking(False)
    call("accept-nothing-pending", srv.accept)
    srv.close()


def msg_flags():
    srv, c, a, _ = pair()
    c.sendall(b"abcdef")
    time.sleep(0.2)
    rec("peek", a.recv(3, socket.MSG_PEEK).decode())
    rec("after-peek", a.recv(3).decode())
    rec("rest", a.recv(10).decode())
    call("dontwait-empty", a.recv, 10, socket.MSG_DONTWAIT)
    c.sendall(b"12")
    time.sleep(0.1)
    c.sendall(b"345")
    rec("waitall", a.recv(5, socket.MSG_WAITALL).decode())
    a.settimeout(None)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 200000))
    t = time.monotonic()
    call("rcvtimeo", a.recv, 10)
    rec("rcvtimeo-waited", time.monotonic() - t >= 0.15)
    for s in (a, c, srv):
        s.close()


def udp():
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.bind(("127.0.0.1", 0))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    rec("sendto", s.sendto(b"one", r.getsockname()))
    data, src = r.recvfrom(100)
    rec("recvfrom", [data.decode(), addr(src) == addr(s.getsockname())])
    rec("sendto-big", s.sendto(b"z" * 3000, r.getsockname()))
    data, src = r.recvfrom(100)
    rec("recvfrom-truncated", len(data))
    s.connect(r.getsockname())
    rec("connected-peer", addr(s.getpeername()) == addr(r.getsockname()))
    rec("send-connected", s.send(b"two"))
    rec("recv", r.recv(100).decode())
    r.sendto(b"back", s.getsockname())
    rec("recv-connected", s.recv(100).decode())
    # sendmsg with several iovecs and a name; recvmsg with several buffers
    rec("sendmsg", r.sendmsg([b"ab", b"cd", b"ef"], [], 0, s.getsockname()))
    bufs = [bytearray(3), bytearray(3)]
    n, anc, flags, src = s.recvmsg_into(bufs)
    rec("recvmsg", [n, bytes(bufs[0]).decode(), bytes(bufs[1]).decode(),
                    addr(src) == addr(r.getsockname()), flags])
    for x in (r, s):
        x.close()


def udp_refused():
    """A connected datagram socket to a closed port: ICMP port unreachable comes back as
    ECONNREFUSED on a later call."""
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.connect(("127.0.0.1", port))
    c.send(b"ping")
    time.sleep(0.2)
    c.settimeout(1)
    call("connected-to-closed-port", c.recv, 10)
    c.close()


def big_transfer():
    srv, c, a, _ = pair()
    total = 100 * 1000 * 1000
    block = hashlib.sha256(b"seed").digest() * 2048   # 64 KiB
    h_out = hashlib.sha256()
    pid = os.fork()
    if pid == 0:
        sent = 0
        while sent < total:
            chunk = block[: min(len(block), total - sent)]
            c.sendall(chunk)
            sent += len(chunk)
        c.close()
        os._exit(0)
    c.close()
    h_in = hashlib.sha256()
    n = 0
    while True:
        d = a.recv(1 << 20)
        if not d:
            break
        h_in.update(d)
        n += len(d)
    os.waitpid(pid, 0)
    sent = 0
    while sent < total:
        chunk = block[: min(len(block), total - sent)]
        h_out.update(chunk)
        sent += len(chunk)
    rec("bytes", n)
    rec("sha256-matches", h_in.hexdigest() == h_out.hexdigest())


def dup_close():
    srv, c, a, _ = pair()
    d = os.dup(c.fileno())
    c.close()
    rec("write-through-dup", os.write(d, b"via dup"))
    rec("peer-reads", a.recv(100).decode())
    d2 = os.dup2(d, 100)
    os.close(d)
    rec("write-through-dup2", os.write(d2, b"via dup2"))
    rec("peer-reads-2", a.recv(100).decode())
    os.close(d2)
    rec("peer-sees-eof-after-last-close", a.recv(100))
    a.close(); srv.close()


def fork_child():
    srv, c, a, _ = pair()
    pid = os.fork()
    if pid == 0:
        c.sendall(b"from the child")
        rec_child = c.recv(100)
        os._exit(0 if rec_child == b"reply" else 3)
    rec("parent-reads", a.recv(100).decode())
    a.sendall(b"reply")
    _, status = os.waitpid(pid, 0)
    rec("child-exit", os.waitstatus_to_exitcode(status))
    rec("name-in-parent", addr(c.getsockname()) == addr(a.getpeername()))
    for s in (a, c, srv):
        s.close()


def exec_child():
    srv, c, a, _ = pair()
    os.set_inheritable(c.fileno(), True)
    code = ("import socket,sys; s=socket.socket(fileno=int(sys.argv[1])); "
            "s.sendall(b'exec child ' + str(s.getpeername()[0]).encode()); "
            "print(s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE))")
    import subprocess
    out = subprocess.run([sys.executable, "-c", code, str(c.fileno())], pass_fds=[c.fileno()],
                         capture_output=True, text=True, timeout=30)
    rec("child-rc", out.returncode)
    rec("child-so_type", out.stdout.strip())
    rec("parent-reads", a.recv(100).decode())
    for s in (a, c, srv):
        s.close()


def resolve():
    rec("getaddrinfo-localhost-v4", sorted(
        (f, t, a[0]) for f, t, _, _, a in socket.getaddrinfo("localhost", 80, socket.AF_INET,
                                                             socket.SOCK_STREAM)))
    rec("getaddrinfo-numeric",
        socket.getaddrinfo("127.0.0.1", "http", type=socket.SOCK_STREAM)[0][4])
    call("getaddrinfo-bad", lambda: socket.getaddrinfo("no-such-host.invalid", 80))
    rec("gethostbyname", socket.gethostbyname("localhost"))
    rec("getnameinfo",
        socket.getnameinfo(("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV))


# ------------------------------------------------------------------------------------------
# Call families Python's socket module does not reach: through ctypes, so that the calls go
# to libc's (the shim's) functions exactly as a C program's would.
import ctypes
import fcntl
import signal
import threading

LIBC = ctypes.CDLL(None, use_errno=True)


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_Iovec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


def _sin(host, port):
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(host) + \
        bytes(8)


def _sin_parse(raw):
    return (socket.inet_ntoa(raw[4:8]), struct.unpack("!H", raw[2:4])[0])


def _errno_name():
    return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))


def _mmsgs(payloads=None, nbufs=0, bufsize=0, dest=None):
    """An mmsghdr vector (and what keeps its buffers alive): one message per payload (each a
    list of iovec byte strings) to send to dest, or nbufs empty ones of bufsize to receive."""
    keep = []
    count = len(payloads) if payloads is not None else nbufs
    vec = (_Mmsghdr * count)()
    for i in range(count):
        parts = payloads[i] if payloads is not None else [bytes(bufsize)]
        iov = (_Iovec * len(parts))()
        for j, part in enumerate(parts):
            buf = ctypes.create_string_buffer(part, len(part) or 1)
            keep.append(buf)
            iov[j].iov_base, iov[j].iov_len = ctypes.cast(buf, ctypes.c_void_p), len(part)
        keep.append(iov)
        h = vec[i].msg_hdr
        h.msg_iov, h.msg_iovlen = iov, len(parts)
        if payloads is None or dest is not None:    # room for the source, or the destination
            name = ctypes.create_string_buffer(dest or bytes(16), 16)
            keep.append(name)
            h.msg_name, h.msg_namelen = ctypes.cast(name, ctypes.c_void_p), 16
        else:                                       # a connected socket's send: no name
            h.msg_name, h.msg_namelen = None, 0
    return vec, keep


def _mmsg_got(vec, keep, n):
    out = []
    for i in range(max(n, 0)):
        h = vec[i].msg_hdr
        data = ctypes.string_at(h.msg_iov[0].iov_base, min(vec[i].msg_len, h.msg_iov[0].iov_len))
        src = addr(_sin_parse(ctypes.string_at(h.msg_name, 16))) if h.msg_namelen else None
        out.append([vec[i].msg_len, data.decode(), src, h.msg_flags & socket.MSG_TRUNC != 0])
    return out


def mmsg():
    """sendmmsg/recvmmsg on datagram sockets (names, lengths, MSG_TRUNC, EAGAIN) and on a
    stream socket."""
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.bind(("127.0.0.1", 0))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port_name(r.getsockname()[1])
    port_name(s.getsockname()[1])
    vec, keep = _mmsgs([[b"one"], [b"tw", b"o!"], [b"three-is-long"]],
                       dest=_sin("127.0.0.1", r.getsockname()[1]))
    n = LIBC.sendmmsg(s.fileno(), vec, 3, 0)
    rec("sendmmsg", n if n >= 0 else _errno_name(), lens=[vec[i].msg_len for i in range(3)])
    time.sleep(0.2)
    vec, keep = _mmsgs(nbufs=4, bufsize=8)
    n = LIBC.recvmmsg(r.fileno(), vec, 4, socket.MSG_DONTWAIT, None)
    rec("recvmmsg", n if n >= 0 else _errno_name(), got=_mmsg_got(vec, keep, n))
    n = LIBC.recvmmsg(r.fileno(), vec, 4, socket.MSG_DONTWAIT, None)
    rec("recvmmsg-empty", n if n >= 0 else _errno_name())
    # MSG_WAITFORONE: block for the first, then take what is there
    s.sendto(b"late", r.getsockname())
    n = LIBC.recvmmsg(r.fileno(), vec, 4, 0x10000, None)     # MSG_WAITFORONE
    rec("recvmmsg-waitforone", n if n >= 0 else _errno_name(), got=_mmsg_got(vec, keep, n))
    # a timeout is checked only after each datagram (recvmmsg(2), BUGS): with two queued and
    # a third 0.5 s later, a 0.2 s timeout returns after the third
    class _Timespec(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

    r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 3, 0))  # a bound
    s.sendto(b"t1", r.getsockname())
    s.sendto(b"t2", r.getsockname())
    time.sleep(0.2)
    later = threading.Timer(0.5, lambda: s.sendto(b"t3", r.getsockname()))
    later.start()
    ts = _Timespec(0, 200000000)
    t0 = time.monotonic()
    n = LIBC.recvmmsg(r.fileno(), vec, 4, 0, ctypes.byref(ts))
    took = time.monotonic() - t0
    later.join()
    rec("recvmmsg-timeout", n if n >= 0 else _errno_name(), got=_mmsg_got(vec, keep, n),
        returned_after_third=0.4 < took < 2, timeout_left=[ts.tv_sec, ts.tv_nsec])
    r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 0))
    # connected: no names
    s.connect(r.getsockname())
    vec, keep = _mmsgs([[b"c1"], [b"c2"]])
    n = LIBC.sendmmsg(s.fileno(), vec, 2, 0)
    rec("sendmmsg-connected", n if n >= 0 else _errno_name())
    rec("recv-connected", [r.recv(10).decode(), r.recv(10).decode()])
    # a stream socket: each message in turn
    srv, c, a, _ = pair()
    vec, keep = _mmsgs([[b"abc"], [b"de", b"f"]])
    n = LIBC.sendmmsg(c.fileno(), vec, 2, 0)
    rec("sendmmsg-stream", n if n >= 0 else _errno_name(), lens=[vec[i].msg_len for i in range(2)])
    time.sleep(0.2)
    vec, keep = _mmsgs(nbufs=2, bufsize=4)
    n = LIBC.recvmmsg(a.fileno(), vec, 2, socket.MSG_DONTWAIT, None)
    rec("recvmmsg-stream", n if n >= 0 else _errno_name(),
        got=[[vec[i].msg_len, ctypes.string_at(vec[i].msg_hdr.msg_iov[0].iov_base,
                                               vec[i].msg_len).decode()] for i in range(max(n, 0))])
    for x in (r, s, srv, c, a):
        x.close()


SIOCGIFNAME, SIOCGIFFLAGS, SIOCGIFADDR, SIOCGIFNETMASK = 0x8910, 0x8913, 0x8915, 0x891b
SIOCGIFMTU, SIOCGIFINDEX, SIOCOUTQ, FIONBIO = 0x8921, 0x8933, 0x5411, 0x5421


def _ifreq(name=b"lo", index=0):
    return struct.pack("16si20x", name, index)


def ioctls():
    """FIONREAD (stream and datagram), SIOCOUTQ, FIONBIO, and the interface queries apps make
    about loopback."""
    srv, c, a, _ = pair()
    c.sendall(b"x" * 100)
    select.select([a], [], [], 5)
    time.sleep(0.2)
    rec("fionread-stream", struct.unpack("i", fcntl.ioctl(a, termios_FIONREAD, b"\0" * 4))[0])
    a.recv(40)
    rec("fionread-after-40", struct.unpack("i", fcntl.ioctl(a, termios_FIONREAD, b"\0" * 4))[0])
    rec("siocoutq", struct.unpack("i", fcntl.ioctl(c, SIOCOUTQ, b"\0" * 4))[0])
    fcntl.ioctl(a, FIONBIO, struct.pack("i", 1))
    a.recv(60)
    call("fionbio-recv-empty", a.recv, 10)
    fcntl.ioctl(a, FIONBIO, struct.pack("i", 0))
    rec("fionbio-cleared", bool(fcntl.fcntl(a, fcntl.F_GETFL) & os.O_NONBLOCK))
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    rec("fionread-dgram-empty", struct.unpack("i", fcntl.ioctl(u, termios_FIONREAD, b"\0" * 4))[0])
    c2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c2.sendto(b"12345", u.getsockname())
    c2.sendto(b"1234567", u.getsockname())
    select.select([u], [], [], 5)
    time.sleep(0.2)
    rec("fionread-dgram-first", struct.unpack("i", fcntl.ioctl(u, termios_FIONREAD, b"\0" * 4))[0])
    # interface queries, on an inet socket (forwarded under the shim)
    idx = struct.unpack("16si20x", fcntl.ioctl(a, SIOCGIFINDEX, _ifreq()))[1]
    rec("siocgifindex-lo", idx)
    rec("siocgifname", struct.unpack("16s24x", fcntl.ioctl(a, SIOCGIFNAME, _ifreq(b"", idx)))[0]
        .rstrip(b"\0").decode())
    flags = struct.unpack("16sH22x", fcntl.ioctl(a, SIOCGIFFLAGS, _ifreq()))[1]
    rec("siocgifflags-lo-up-loopback", [bool(flags & 1), bool(flags & 8)])
    rec("siocgifaddr-lo", socket.inet_ntoa(fcntl.ioctl(a, SIOCGIFADDR, _ifreq())[20:24]))
    rec("siocgifnetmask-lo", socket.inet_ntoa(fcntl.ioctl(a, SIOCGIFNETMASK, _ifreq())[20:24]))
    rec("siocgifmtu-lo", struct.unpack("16si20x", fcntl.ioctl(a, SIOCGIFMTU, _ifreq()))[1])
    call("siocgifindex-missing", lambda: fcntl.ioctl(a, SIOCGIFINDEX, _ifreq(b"nosuchif0")))
    for x in (srv, c, a, u, c2):
        x.close()


termios_FIONREAD = 0x541B
EAI = {getattr(socket, n): n for n in dir(socket) if n.startswith("EAI_")}


def callv(what, fn):
    """Record what fn returned (lists and strings whole), or the errno / EAI / h_errno name
    it raised."""
    try:
        r = fn()
    except socket.gaierror as e:
        rec(what, error=EAI.get(e.errno, str(e.errno)))
    except socket.herror as e:
        rec(what, error=f"h_errno {e.errno}")
    except OSError as e:
        rec(what, error=errno.errorcode.get(e.errno, str(e.errno)))
    else:
        rec(what, r)


def gai(what, *args, **kw):
    """Record getaddrinfo's answer (family, type, proto, canonname, address) or EAI name."""
    try:
        r = socket.getaddrinfo(*args, **kw)
    except socket.gaierror as e:
        rec(what, error=EAI.get(e.errno, str(e.errno)))
        return
    rec(what, sorted([f, t, p, cn, list(a[:2])] for f, t, p, cn, a in r))


def resolve_flags():
    """getaddrinfo flags and hints, getnameinfo flags, gethostbyname_ex, gethostbyaddr."""
    gai("canonname", "localhost", None, socket.AF_INET, socket.SOCK_STREAM, 0, socket.AI_CANONNAME)
    gai("passive-v4", None, "80", socket.AF_INET, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    gai("passive-v6", None, "80", socket.AF_INET6, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    gai("null-host-v4", None, "80", socket.AF_INET, socket.SOCK_STREAM)
    gai("numerichost-name", "localhost", 80, 0, 0, 0, socket.AI_NUMERICHOST)
    gai("numerichost-v6", "::1", 80, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    gai("numericserv-name", "127.0.0.1", "http", 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICSERV)
    gai("service-udp", "localhost", "domain", socket.AF_INET, socket.SOCK_DGRAM)
    gai("no-such-service", "localhost", "no-such-service")
    gai("all-types", "127.0.0.1", 80)
    gai("family-unix", "localhost", 80, socket.AF_UNIX)
    gai("stream-with-udp", "localhost", 80, socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_UDP)
    gai("v6-of-a-v4-only-name", "localhost", 80, socket.AF_INET6, socket.SOCK_STREAM)
    gai("v4mapped", "localhost", 80, socket.AF_INET6, socket.SOCK_STREAM, 0, socket.AI_V4MAPPED)
    gai("addrconfig", "localhost", 80, 0, socket.SOCK_STREAM, 0, socket.AI_ADDRCONFIG)
    gai("alias", "vm", 80, socket.AF_INET, socket.SOCK_STREAM)
    callv("getnameinfo-names", lambda: list(socket.getnameinfo(("127.0.0.1", 80), 0)))
    callv("getnameinfo-dgram", lambda: list(socket.getnameinfo(("127.0.0.1", 53), socket.NI_DGRAM)))
    callv("getnameinfo-numericserv",
         lambda: list(socket.getnameinfo(("127.0.0.1", 80), socket.NI_NUMERICSERV)))
    callv("getnameinfo-v6-numeric",
         lambda: list(socket.getnameinfo(("::1", 80, 0, 0), socket.NI_NUMERICHOST)))
    callv("gethostbyname_ex", lambda: list(socket.gethostbyname_ex("localhost")))
    callv("gethostbyaddr", lambda: list(socket.gethostbyaddr("127.0.0.1")))
    callv("gethostbyname-bad", lambda: socket.gethostbyname("no-such-host.invalid"))
    callv("gethostbyaddr-unknown", lambda: list(socket.gethostbyaddr("127.0.0.2")))
    callv("getnameinfo-namereqd",
          lambda: list(socket.getnameinfo(("127.0.0.2", 80), socket.NI_NAMEREQD)))


def fd_calls():
    """fcntl F_DUPFD_CLOEXEC / F_DUPFD / F_SETFL through a copy, close_range (plain and
    CLOSE_RANGE_CLOEXEC), os.closerange of the last copies: the peer sees EOF."""
    srv, c, a, _ = pair()
    d = fcntl.fcntl(c.fileno(), fcntl.F_DUPFD_CLOEXEC, 50)
    rec("dupfd_cloexec-at-least-50", d >= 50)
    rec("dupfd_cloexec-flag", fcntl.fcntl(d, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
    rec("original-flag", fcntl.fcntl(c.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
    d2 = fcntl.fcntl(c.fileno(), fcntl.F_DUPFD, 60)
    rec("dupfd-flag", [d2 >= 60, fcntl.fcntl(d2, fcntl.F_GETFD) & fcntl.FD_CLOEXEC])
    rec("dup3-cloexec", [os.dup2(c.fileno(), 70, inheritable=False),      # dup3(O_CLOEXEC)
                         fcntl.fcntl(70, fcntl.F_GETFD) & fcntl.FD_CLOEXEC])
    rec("dup3-copy-works", [os.write(70, b"d3"), a.recv(10).decode()])
    call("dup3-same-fd", lambda: LIBC.dup3(70, 70, os.O_CLOEXEC) if LIBC.dup3(70, 70, os.O_CLOEXEC)
         >= 0 else _errno_name())
    os.close(70)
    rec("write-through-copy", os.write(d, b"via dup"))
    rec("peer-reads", a.recv(100).decode())
    ds = socket.socket(fileno=os.dup(d))
    rec("copy-peer-name", addr(ds.getpeername()) == addr(c.getpeername()))
    ds.close()
    fcntl.fcntl(d, fcntl.F_SETFL, fcntl.fcntl(d, fcntl.F_GETFL) | os.O_NONBLOCK)
    rec("nonblock-shared", bool(fcntl.fcntl(c.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK))
    rec("recv-raw-empty", LIBC.recv(c.fileno(), ctypes.create_string_buffer(10), 10, 0),
        errno=_errno_name())
    fcntl.fcntl(d, fcntl.F_SETFL, fcntl.fcntl(d, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    rec("close_range-one", LIBC.close_range(d, d, 0))
    call("closed-copy", fcntl.fcntl, d, fcntl.F_GETFD)
    rec("original-still-works", [c.send(b"still"), a.recv(100).decode()])
    rec("close_range-cloexec", LIBC.close_range(d2, d2, 4))          # CLOSE_RANGE_CLOEXEC
    rec("cloexec-set", fcntl.fcntl(d2, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
    rec("cloexec-copy-works", [os.write(d2, b"cx"), a.recv(10).decode()])
    # the last copies, moved next to each other, closed by os.closerange (close_range(2)):
    # the peer sees end of file
    fd = c.detach()
    for src, dst in ((fd, 200), (d2, 201)):
        os.dup2(src, dst)
        os.close(src)
    rec("moved-copy-works", [os.write(201, b"mv"), a.recv(10).decode()])
    os.closerange(200, 202)
    rec("closed-by-closerange", [_is_open(200), _is_open(201)])
    a.settimeout(5)
    call("peer-eof", lambda: a.recv(10) == b"")
    for x in (srv, a):
        x.close()


def _is_open(fd):
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
        return True
    except OSError:
        return False


def accept_timeout():
    """SO_RCVTIMEO on a listening socket bounds a blocking accept (EAGAIN), SO_SNDTIMEO and
    SO_RCVTIMEO read back, then a pending connection is accepted."""
    srv = listener()
    tv = struct.pack("ll", 0, 300000)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    rec("rcvtimeo-read-back", struct.unpack("ll", srv.getsockopt(socket.SOL_SOCKET,
                                                                 socket.SO_RCVTIMEO, 16)))
    t = time.monotonic()
    call("accept-times-out", srv.accept)
    rec("accept-waited", 0.25 <= time.monotonic() - t < 3)
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 1, 500000))
    rec("sndtimeo-read-back", struct.unpack("ll", c.getsockopt(socket.SOL_SOCKET,
                                                               socket.SO_SNDTIMEO, 16)))
    c.connect(srv.getsockname())
    a, _ = srv.accept()
    rec("accepted-after-timeout", addr(a.getpeername()) == addr(c.getsockname()))
    rec("accepted-inherits-rcvtimeo", struct.unpack("ll", a.getsockopt(
        socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16)))
    for x in (srv, c, a):
        x.close()


def eintr():
    """A signal handler and blocking calls: without SA_RESTART recv, recvfrom and accept fail
    with EINTR; with SA_RESTART they go on and return what comes later."""
    fired = []
    signal.signal(signal.SIGALRM, lambda *a: fired.append(1))
    srv, c, a, _ = pair()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    buf = ctypes.create_string_buffer(100)

    def raw(what, fn, *args):
        del fired[:]
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        r = fn(*args)
        rec(what, r if r < 0 else "ok", errno=_errno_name() if r < 0 else None,
            handler_ran=bool(fired))

    def later(fn, delay=0.6):
        def run():
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
            time.sleep(delay)
            fn()
        t = threading.Thread(target=run)
        t.start()
        return t

    signal.siginterrupt(signal.SIGALRM, True)
    raw("recv-eintr", LIBC.recv, a.fileno(), buf, 100, 0)
    raw("recvfrom-eintr", LIBC.recvfrom, u.fileno(), buf, 100, 0, None, None)
    raw("accept-eintr", LIBC.accept, srv.fileno(), None, None)
    signal.siginterrupt(signal.SIGALRM, False)           # SA_RESTART
    t = later(lambda: c.send(b"late data"))
    raw("recv-restarted", LIBC.recv, a.fileno(), buf, 100, 0)
    rec("recv-restarted-data", buf.value.decode())
    t.join()
    c2 = socket.socket()
    t = later(lambda: c2.connect(srv.getsockname()))
    del fired[:]
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    fd = LIBC.accept(srv.fileno(), None, None)
    rec("accept-restarted", fd >= 0, handler_ran=bool(fired))
    t.join()
    if fd >= 0:
        os.close(fd)
    for x in (srv, c, a, u, c2):
        x.close()


def _opt(what, sock, level, name, size=0):
    try:
        v = sock.getsockopt(level, name, size) if size else sock.getsockopt(level, name)
    except OSError as e:
        rec(what, error=errno.errorcode.get(e.errno, str(e.errno)))
        return
    rec(what, list(struct.unpack("ii", v)) if size == 8 else v)


def sockopts():
    """setsockopt/getsockopt round trips that apps make, the local facts (type, domain,
    protocol, listening), options of accepted sockets, socketpair of inet."""
    srv = listener()
    _opt("acceptconn-listener", srv, socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    _opt("reuseaddr", srv, socket.SOL_SOCKET, socket.SO_REUSEADDR)
    s = socket.socket()
    for what, level, name, value in (
            ("keepalive", socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
            ("nodelay", socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
            ("keepidle", socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30),
            ("ttl", socket.IPPROTO_IP, socket.IP_TTL, 17),
            ("tos", socket.IPPROTO_IP, socket.IP_TOS, 0x10),
            ("rcvbuf", socket.SOL_SOCKET, socket.SO_RCVBUF, 65536),
            ("sndbuf", socket.SOL_SOCKET, socket.SO_SNDBUF, 32768),
            ("reuseport", socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)):
        _opt(what + "-default", s, level, name)
        call(what + "-set", s.setsockopt, level, name, value)
        _opt(what, s, level, name)
    call("linger-set", s.setsockopt, socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 5))
    _opt("linger", s, socket.SOL_SOCKET, socket.SO_LINGER, 8)
    for what, name in (("type", socket.SO_TYPE), ("domain", socket.SO_DOMAIN),
                       ("protocol", socket.SO_PROTOCOL), ("acceptconn", socket.SO_ACCEPTCONN),
                       ("error", socket.SO_ERROR)):
        _opt(what, s, socket.SOL_SOCKET, name)
    call("bad-level", s.getsockopt, 9999, 1)
    call("set-bad-level", s.setsockopt, 9999, 1, 1)
    call("udp-level-on-tcp", s.getsockopt, socket.IPPROTO_UDP, 1)
    call("ipv6-level-on-ipv4", s.getsockopt, socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    call("bad-option", s.getsockopt, socket.SOL_SOCKET, 9999)
    call("set-bad-length", s.setsockopt, socket.SOL_SOCKET, socket.SO_KEEPALIVE, b"\1")
    s.connect(srv.getsockname())
    a, _ = srv.accept()
    _opt("accepted-acceptconn", a, socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    _opt("accepted-type", a, socket.SOL_SOCKET, socket.SO_TYPE)
    _opt("connected-nodelay", s, socket.IPPROTO_TCP, socket.TCP_NODELAY)
    _opt("connected-maxseg-positive", s, socket.IPPROTO_TCP, socket.TCP_MAXSEG)
    u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    call("tcp-level-on-udp", u4.getsockopt, socket.IPPROTO_TCP, socket.TCP_NODELAY)
    call("set-tcp-level-on-udp", u4.setsockopt, socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    u4.close()
    _opt("udp6-type", u, socket.SOL_SOCKET, socket.SO_TYPE)
    call("udp6-bad-level", u.getsockopt, 9999, 1)
    _opt("udp6-protocol", u, socket.SOL_SOCKET, socket.SO_PROTOCOL)
    _opt("v6only-default", u, socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    call("v6only-set", u.setsockopt, socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    _opt("v6only", u, socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    call("broadcast-set", u.setsockopt, socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    _opt("broadcast", u, socket.SOL_SOCKET, socket.SO_BROADCAST)
    call("socketpair-inet", socket.socketpair, socket.AF_INET, socket.SOCK_STREAM)
    for x in (srv, s, a, u):
        x.close()


def rw_calls():
    """read/write/readv/writev/recv_into on stream and datagram sockets (the datagram header
    is the shim's business on every path), sendto on a connected UDP socket, zero-length
    datagrams."""
    srv, c, a, _ = pair()
    rec("write", os.write(c.fileno(), b"written"))
    rec("read", os.read(a.fileno(), 100).decode())
    rec("writev", os.writev(c.fileno(), [b"ab", b"", b"cde", b"f"]))
    time.sleep(0.1)
    bufs = [bytearray(2), bytearray(10)]
    rec("readv", [os.readv(a.fileno(), bufs), bytes(bufs[0]).decode(), bytes(bufs[1]).decode()])
    c.sendall(b"into")
    b = bytearray(10)
    rec("recv_into", [a.recv_into(b, 3), bytes(b[:3]).decode()])
    rec("recv-rest", a.recv(10).decode())
    c.close()
    rec("read-eof", os.read(a.fileno(), 10))
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.bind(("127.0.0.1", 0))
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.connect(r.getsockname())
    rec("dgram-write", os.write(u.fileno(), b"w-dgram"))
    rec("dgram-read", os.read(r.fileno(), 100).decode())
    rec("dgram-writev", os.writev(u.fileno(), [b"v1", b"v2"]))
    bufs = [bytearray(3), bytearray(3)]
    rec("dgram-readv", [os.readv(r.fileno(), bufs), bytes(bufs[0]).decode(),
                        bytes(bufs[1]).decode()])
    rec("dgram-zero", u.send(b""))
    rec("dgram-read-zero", os.read(r.fileno(), 10))
    rec("dgram-read-small", [u.send(b"0123456789"), os.read(r.fileno(), 4).decode()])
    call("dgram-nothing-left", r.recv, 10, socket.MSG_DONTWAIT)
    call("sendto-other-on-connected", u.sendto, b"elsewhere", r.getsockname())
    rec("recvfrom-it", [r.recvfrom(20)[0].decode()])
    call("dgram-too-big", u.send, b"x" * 65508)
    for x in (srv, a, r, u):
        x.close()


def write_after_peer_close():
    """Writing to a connection whose peer has closed: the first write goes out, the peer's
    stack answers RST, later writes fail with EPIPE (and SIGPIPE unless MSG_NOSIGNAL); reads
    see end of file. A UDP socket disconnected with AF_UNSPEC."""
    srv, c, a, _ = pair()
    a.close()
    time.sleep(0.3)
    rec("recv-eof", c.recv(10))
    call("send-first", c.send, b"x" * 10)
    time.sleep(0.3)
    call("send-after-rst", c.send, b"y" * 10)
    got = []
    old = signal.signal(signal.SIGPIPE, lambda *a: got.append(1))
    call("send-sigpipe", c.send, b"z")
    rec("sigpipe-raised", bool(got))
    del got[:]
    call("send-nosignal", c.send, b"z", socket.MSG_NOSIGNAL)
    rec("sigpipe-raised-nosignal", bool(got))
    signal.signal(signal.SIGPIPE, old)
    rec("recv-still-eof", c.recv(10))
    c.close()
    srv.close()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.connect(("127.0.0.1", 9))
    rec("udp-unspec-connect", LIBC.connect(u.fileno(), ctypes.create_string_buffer(16), 16))
    call("udp-peer-after-unspec", u.getpeername)
    call("udp-send-after-unspec", u.send, b"q")
    u.close()


def odd_calls():
    """Calls out of the common path: names of unbound sockets, double bind, listen/accept on
    UDP, connect twice, sendto/recvfrom on TCP, SHUT_RD then more data, IPv4-mapped IPv6 peers,
    a v4 bind on a dual-stack port, SO_LINGER 0 (reset), protocols and types refused."""
    s = socket.socket()
    rec("getsockname-unbound", addr(s.getsockname()))
    s.bind(("127.0.0.1", 0))
    call("bind-twice", s.bind, ("127.0.0.1", 0))
    call("accept-not-listening", s.accept)
    s.close()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    call("listen-udp", u.listen, 1)
    call("accept-udp", u.accept)
    rec("udp-name-unbound", addr(u.getsockname()))
    u.sendto(b"x", ("127.0.0.1", 9))
    rec("udp-autobound", u.getsockname()[0])
    u.close()
    srv, c, a, _ = pair()
    call("connect-again", c.connect, srv.getsockname())
    call("sendto-on-tcp", c.sendto, b"st", ("127.0.0.1", 1))
    time.sleep(0.1)
    r = a.recvfrom(10)
    rec("recvfrom-on-tcp", [r[0].decode(), r[1]])
    a.shutdown(socket.SHUT_RD)
    rec("recv-after-shut-rd", a.recv(10))
    c.sendall(b"late")
    time.sleep(0.2)
    call("shutdown-bad-how", a.shutdown, 7)
    for x in (srv, c, a):
        x.close()
    v6 = listener(socket.AF_INET6, "::")
    c6 = socket.socket(socket.AF_INET6)
    c6.connect(("::ffff:127.0.0.1", v6.getsockname()[1]))
    a6, p6 = v6.accept()
    rec("mapped-peer", [p6[0], c6.getpeername()[0]])
    v4 = socket.socket()
    v4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    call("v4-bind-on-dualstack-port", v4.bind, ("127.0.0.1", v6.getsockname()[1]))
    for x in (v6, c6, a6, v4):
        x.close()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    srv = listener()
    s.connect(srv.getsockname())
    a, _ = srv.accept()
    s.close()
    time.sleep(0.3)
    call("recv-after-linger0-close", a.recv, 10)
    a.close()
    srv.close()
    call("socket-bad-proto", socket.socket, socket.AF_INET, socket.SOCK_STREAM, 17)
    call("socket-seqpacket-inet", socket.socket, socket.AF_INET, socket.SOCK_SEQPACKET)


def _poll_events(s, settle=0.2):
    """What poll() reports for s right now, after letting in-flight events land."""
    time.sleep(settle)
    p = select.poll()
    p.register(s, select.POLLIN | select.POLLOUT | select.POLLPRI | select.POLLRDHUP)
    r = p.poll(0)
    m = r[0][1] if r else 0
    return [n for n, b in (("IN", select.POLLIN), ("OUT", select.POLLOUT),
                           ("PRI", select.POLLPRI), ("ERR", select.POLLERR),
                           ("HUP", select.POLLHUP), ("RDHUP", select.POLLRDHUP),
                           ("NVAL", select.POLLNVAL)) if m & b]


def readiness():
    """poll() events through a connection's life: connected, data, the peer's half-close, both
    half-closes, after a reset was read, the peer gone; UDP. (Where forwarded sockets still
    differ: never connected and listening sockets, POLLERR; see shim/README.md.)"""
    srv = listener()
    c = socket.socket()
    c.connect(srv.getsockname())
    rec("connected-client", _poll_events(c))
    a, _ = srv.accept()
    rec("accepted", _poll_events(a))
    c.send(b"data")
    rec("accepted-with-data", _poll_events(a))
    a.recv(10)
    rec("drained", _poll_events(a))
    c.shutdown(socket.SHUT_WR)
    rec("peer-shut-wr", _poll_events(a))
    rec("after-own-shut-wr", _poll_events(c))
    a.shutdown(socket.SHUT_WR)
    rec("both-shut-a", _poll_events(a))
    rec("both-shut-c", _poll_events(c))
    a.close()
    c.close()
    c = socket.socket()
    c.connect(srv.getsockname())
    a, _ = srv.accept()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    a.close()
    time.sleep(0.3)
    call("recv-after-reset", c.recv, 10)
    rec("after-reset-read", _poll_events(c))
    c.close()
    c = socket.socket()
    c.connect(srv.getsockname())
    a, _ = srv.accept()
    a.close()
    rec("peer-closed", _poll_events(c, 0.3))
    c.close()
    srv.close()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rec("udp-unbound", _poll_events(u, 0))
    u.bind(("127.0.0.1", 0))
    u2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u2.sendto(b"d", u.getsockname())
    rec("udp-with-datagram", _poll_events(u))
    u.recv(10)
    rec("udp-drained", _poll_events(u))
    for x in (u, u2):
        x.close()


def server_idioms():
    """What servers do: a dual-stack IPv6 listener reached over IPv4, SO_REUSEPORT listeners
    sharing a port, sendfile() from a file (nginx's way), binding the wildcard address."""
    import tempfile
    srv = socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True)
    c = socket.create_connection(("127.0.0.1", srv.getsockname()[1]))
    a, peer = srv.accept()
    rec("dualstack-peer", peer[0])
    for x in (c, a, srv):
        x.close()
    r1 = socket.socket()
    r1.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    r1.bind(("127.0.0.1", 0))
    r1.listen(4)
    r2 = socket.socket()
    r2.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    call("reuseport-second-bind", r2.bind, r1.getsockname())
    call("reuseport-second-listen", r2.listen, 4)
    r3 = socket.socket()
    call("no-reuseport-bind", r3.bind, r1.getsockname())
    for x in (r1, r2, r3):
        x.close()
    srv, c, a, _ = pair()
    with tempfile.TemporaryFile() as f:
        f.write(hashlib.sha256(b"file").digest() * 10000)
        f.flush()
        f.seek(0)
        rec("sendfile", c.sendfile(f))
    c.close()
    h = hashlib.sha256()
    while True:
        d = a.recv(65536)
        if not d:
            break
        h.update(d)
    rec("sendfile-received", h.hexdigest()[:16])
    a.close()
    srv.close()
    t = socket.socket()
    t.bind(("0.0.0.0", 0))
    rec("wildcard-bound", t.getsockname()[0])
    t.close()


SCENARIOS = {f.__name__: f for f in (
    tcp_basic, tcp_ipv6, errors, unconnected, nonblocking_connect, accept4_flags, msg_flags,
    udp, udp_refused, big_transfer, dup_close, fork_child, exec_child, resolve, mmsg, ioctls,
    resolve_flags, fd_calls, accept_timeout, eintr, sockopts, rw_calls, write_after_peer_close,
    odd_calls, readiness, server_idioms)}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]]()
