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
    rec("getaddrinfo-numeric", socket.getaddrinfo("127.0.0.1", "http", type=socket.SOCK_STREAM)[0][4])
    call("getaddrinfo-bad", lambda: socket.getaddrinfo("no-such-host.invalid", 80))
    rec("gethostbyname", socket.gethostbyname("localhost"))
    rec("getnameinfo", socket.getnameinfo(("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV))


SCENARIOS = {f.__name__: f for f in (tcp_basic, tcp_ipv6, errors, unconnected, nonblocking_connect, accept4_flags,
                                      msg_flags, udp, udp_refused, big_transfer, dup_close, fork_child,
                                      exec_child, resolve)}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]]()
