"""The INS engine against a test frontend (conftest.TestFront) over real shared memory on the sim
platform: every command, data both ways, flow control, errors, limits and hostile frontends.
All network traffic stays on loopback."""
import errno
import hashlib
import os
import socket
import threading
import time

import pytest

from mwcomms.ins._engine import Engine
from mwcomms.tools import codec
from mwcomms.tools.codec import SockAddr

LOOP = "127.0.0.1"


def addr(host, port):
    return SockAddr.from_tuple((host, port))


def listener():
    s = socket.socket()
    s.bind((LOOP, 0))
    s.listen(8)
    return s


def connect(f, sock, peer):
    assert f.socket(sock) == 0
    return f.call(codec.Connect(0, sock, addr(*peer)))


def test_ping_and_unknown_command(fronts):
    f = fronts()
    rsp = f.call(codec.Ping(0, 0x1122334455667788))
    assert rsp.ret == 0 and rsp.body.arg == 0x1122334455667788
    rsp = f.call(codec.UnknownCommand(0, 77, 3))
    assert (rsp.cmd, rsp.sock, rsp.ret) == (77, 3, -errno.EOPNOTSUPP)
    st = f.engine.stats(f.handle)
    assert st["requests"] == {"UNKNOWN": 1, "PING": 1} and not st["broken"]


def test_tcp_connect_data_both_ways(fronts):
    f = fronts()
    lst = listener()
    rsp = connect(f, 0, lst.getsockname())
    assert rsp.ret == 0 and rsp.body.host.exploded == LOOP and rsp.body.port
    peer, _ = lst.accept()
    assert peer.getpeername() == (LOOP, rsp.body.port)   # CONNECT answers the local address

    up = os.urandom(3 << 20)          # more than the 64 KiB rings: flow control both ways
    down = os.urandom(2 << 20)
    got = {}

    def server():
        buf = bytearray()
        while len(buf) < len(up):
            chunk = peer.recv(1 << 16)
            assert chunk
            buf += chunk
        got["up"] = hashlib.sha256(buf).hexdigest()
        peer.sendall(down)
        peer.shutdown(socket.SHUT_WR)
        got["eof"] = peer.recv(1)          # the INS's FIN after our SHUTDOWN

    t = threading.Thread(target=server)
    t.start()
    f.write(0, up, timeout=30)
    data, flags, err = f.read(0, timeout=30)
    assert hashlib.sha256(data).digest() == hashlib.sha256(down).digest()
    assert flags == codec.RXF_EOF and err == 0
    assert f.call(codec.Shutdown(0, 0, socket.SHUT_WR)).ret == 0
    t.join(10)
    assert got["up"] == hashlib.sha256(up).hexdigest() and got["eof"] == b""
    st = f.engine.stats(f.handle)
    assert st["tx_bytes"] == len(up) and st["rx_bytes"] == len(down)
    assert f.call(codec.Close(0, 0)).ret == 0
    assert f.engine.stats(f.handle)["sockets"] == 0
    peer.close()
    lst.close()


def test_close_sends_pending_bytes_then_fin(fronts):
    f = fronts()
    lst = listener()
    assert connect(f, 0, lst.getsockname()).ret == 0
    peer, _ = lst.accept()
    blob = os.urandom(1 << 20)        # the peer reads nothing yet: most of it stays in tx
    f.write(0, blob[:60000])
    assert f.call(codec.Close(0, 0)).ret == 0
    buf = bytearray()
    peer.settimeout(10)
    while True:
        chunk = peer.recv(1 << 16)
        if not chunk:
            break
        buf += chunk
    assert bytes(buf) == blob[:60000]
    peer.close()
    lst.close()


def test_accept_from_a_listening_ins_socket(fronts):
    f = fronts()
    assert f.socket(0) == 0
    bound = f.call(codec.Bind(0, 0, addr(LOOP, 0)))
    assert bound.ret == 0 and bound.body.port
    assert f.call(codec.Listen(0, 0, 16)).ret == 0
    ids = [f.send(codec.Accept(0, 0, n, f.rings(n))) for n in (1, 2)]
    clients = [socket.create_connection((LOOP, bound.body.port)) for _ in range(2)]
    rsps = [f.wait(i) for i in ids]
    assert [r.ret for r in rsps] == [0, 0]
    assert sorted(r.body.port for r in rsps) == sorted(c.getsockname()[1] for c in clients)
    # ACCEPT n answers into new_sock n, whichever connection it got
    slot_of = {r.body.port: n for n, r in zip((1, 2), rsps)}
    for c in clients:
        c.sendall(b"hello %d" % c.getsockname()[1])
    for c in clients:
        port = c.getsockname()[1]
        assert f.read(slot_of[port], want=len(b"hello %d" % port))[0] == b"hello %d" % port
    for c in clients:
        c.close()
    for slot in (1, 2):
        assert f.read(slot)[1:] == (codec.RXF_EOF, 0)
    # a pending ACCEPT is cancelled by CLOSE of the listener
    pending = f.send(codec.Accept(0, 0, 3, f.rings(3)))
    assert f.call(codec.Close(0, 0)).ret == 0
    assert f.wait(pending).ret == -errno.ECANCELED


def test_udp_with_addresses(fronts):
    f = fronts()
    assert f.socket(0, type_=codec.SOCK_DGRAM) == 0
    bound = f.call(codec.Bind(0, 0, addr(LOOP, 0)))
    assert bound.ret == 0
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind((LOOP, 0))
    peer.settimeout(5)
    # network -> frontend: one record per datagram, with its source
    for n in range(3):
        peer.sendto(b"ping %d" % n, (LOOP, bound.body.port))
    rx = f.socks[0].rx
    seen = []
    end = time.monotonic() + 10
    while len(seen) < 3 and time.monotonic() < end:
        rec = rx.dgram_get(2048)
        if rec is None:
            if not rx.prepare_wait(1):
                f.poll(0.2)
            continue
        hdr = codec.decode_dgram_header(rec[0], rx.size, from_ins=True)
        seen.append((rec[1], hdr.addr.to_tuple()))
        if rx.release():
            f.post(0, codec.EV_SPACE)
    assert seen == [(b"ping %d" % n, peer.getsockname()) for n in range(3)]
    # frontend -> network: the record's destination
    tx = f.socks[0].tx
    payload = os.urandom(1000)
    hdr = codec.DgramHeader(len(payload), SockAddr.from_tuple(peer.getsockname()))
    tx.dgram_put(hdr.encode(), payload)
    if tx.publish():
        f.post(0, codec.EV_DATA)
    data, src = peer.recvfrom(4096)
    assert data == payload and src == (LOOP, bound.body.port)
    assert f.call(codec.Close(0, 0)).ret == 0
    peer.close()


def test_getaddrinfo_and_getnameinfo(fronts):
    f = fronts()
    off = f.alloc(4096)
    f.put_data(off, b"localhost80")
    rsp = f.call(codec.GetAddrInfo(0, codec.Ool(off, 4096), 9, 2, family=codec.AF_INET,
                                   socktype=codec.SOCK_STREAM))
    assert rsp.ret == 0 and rsp.body.status == 0, rsp
    ans = codec.decode_ai_answer(f.data(off, rsp.body.len))
    assert [(e.addr.to_tuple(), e.socktype) for e in ans.entries] == [((LOOP, 80), 1)]
    rsp = f.call(codec.GetNameInfo(0, codec.Ool(off, 4096), addr(LOOP, 22),
                                   flags=socket.NI_NUMERICHOST | socket.NI_NUMERICSERV))
    assert rsp.ret == 0 and rsp.body.status == 0
    ni = codec.decode_ni_answer(f.data(off, rsp.body.len))
    assert (ni.host, ni.serv) == (b"127.0.0.1", b"22")
    # a resolver failure is a status, not an error
    f.put_data(off, b"no-such-host.invalid")
    rsp = f.call(codec.GetAddrInfo(0, codec.Ool(off, 4096), 20, 0,
                                   flags=socket.AI_NUMERICHOST))
    assert rsp.ret == 0 and rsp.body.status == socket.EAI_NONAME and rsp.body.len == 0


def test_errors_of_the_kernel_come_back_as_errno(fronts):
    f = fronts()
    closed = listener()
    port = closed.getsockname()[1]
    closed.close()
    assert connect(f, 0, (LOOP, port)).ret == -errno.ECONNREFUSED
    so_error = [f.call(codec.GetSockOpt(0, 0, socket.SOL_SOCKET, socket.SO_ERROR, 4))
                for _ in range(2)]                  # reported once, as the kernel does
    assert [int.from_bytes(r.body.value, "little") for r in so_error] == [errno.ECONNREFUSED, 0]
    busy = listener()
    assert f.socket(1) == 0
    assert f.call(codec.Bind(0, 1, addr(*busy.getsockname()))).ret == -errno.EADDRINUSE
    # options: allowed ones reach the kernel, the rest never do
    one = (1).to_bytes(4, "little")
    assert f.call(codec.SetSockOpt(0, 1, socket.IPPROTO_TCP, socket.TCP_NODELAY, one)).ret == 0
    rsp = f.call(codec.GetSockOpt(0, 1, socket.IPPROTO_TCP, socket.TCP_NODELAY, 4))
    assert rsp.ret == 0 and rsp.body.value == one
    rsp = f.call(codec.SetSockOpt(0, 1, socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo\0"))
    assert rsp.ret == -errno.ENOPROTOOPT
    assert f.call(codec.GetPeerName(0, 1)).ret == -errno.ENOTCONN
    assert f.call(codec.Listen(0, 1, 5)).ret == 0
    assert f.call(codec.Ioctl(0, 1, codec.IOCTL_SIOCINQ)).ret in (0, -errno.EINVAL)
    busy.close()


def test_long_option_out_of_line(fronts):
    f = fronts()
    lst = listener()
    assert connect(f, 0, lst.getsockname()).ret == 0
    off = f.alloc(4096)
    rsp = f.call(codec.GetSockOpt(0, 0, socket.IPPROTO_TCP, socket.TCP_INFO, 200,
                                  codec.Ool(off, 200)))
    assert rsp.ret == 0 and 88 < rsp.body.len <= 200
    assert f.data(off, 1)[0] == 1          # tcpi_state: TCP_ESTABLISHED
    lst.close()


def test_socket_limit(fronts):
    with Engine(max_socks=2) as eng:
        eng.start()
        f = fronts(engine=eng)
        assert f.socket(0) == 0 and f.socket(1) == 0
        assert f.socket(2) == -errno.EMFILE
        assert f.call(codec.Close(0, 1)).ret == 0
        assert f.socket(2) == 0
        f.close()


def test_detach_closes_the_frontends_sockets(fronts):
    f = fronts()
    lst = listener()
    assert connect(f, 0, lst.getsockname()).ret == 0
    peer, _ = lst.accept()
    f.engine.detach(f.handle)
    f.handle = 0
    peer.settimeout(5)
    assert peer.recv(10) == b""
    peer.close()
    lst.close()


def _still_serves(f):
    rsp = f.call(codec.Ping(0, 5))
    assert rsp.ret == 0 and rsp.body.arg == 5
    lst = listener()
    assert connect(f, 9, lst.getsockname()).ret == 0
    peer, _ = lst.accept()
    peer.sendall(b"still here")
    assert f.read(9, want=10)[0] == b"still here"
    peer.close()
    lst.close()


def _expect_broken(f, why):
    end = time.monotonic() + 10
    while not f.engine.stats(f.handle)["broken"]:
        assert time.monotonic() < end, "frontend not disconnected"
        time.sleep(0.02)
    st = f.engine.stats(f.handle)
    assert why in st["why"] and st["proto_errors"] == 1, st
    assert st["sockets"] == 0


@pytest.mark.parametrize("case,why", [
    ("slot out of range", "socket slot out of range"),
    ("slot not open", "is not open"),
    ("slot not free", "is not free"),
    ("ring outside", "ring outside the data area"),
    ("ring misaligned", "ring offset not page aligned"),
    ("request index", "command ring"),
    ("tx index", "tx ring"),
    ("nonzero pad", "request padding not zero"),
])
def test_hostile_frontend_is_disconnected_alone(fronts, case, why):
    bad, good = fronts(1), fronts(3)
    lst = listener()
    assert connect(bad, 0, lst.getsockname()).ret == 0     # a socket to be closed with it
    victim, _ = lst.accept()
    if case == "slot out of range":
        bad.send(codec.Close(0, 4000))
    elif case == "slot not open":
        bad.send(codec.Close(0, 7))
    elif case == "slot not free":
        bad.send(codec.Socket(0, 0, codec.AF_INET, codec.SOCK_STREAM, 0,
                              codec.Rings(0, 65536, 12, 12)))
    elif case == "ring outside":
        bad.send(codec.Socket(0, 1, codec.AF_INET, codec.SOCK_STREAM, 0,
                              codec.Rings(0, 511 * 4096, 12, 13)))
    elif case == "ring misaligned":
        bad.send(codec.Socket(0, 1, codec.AF_INET, codec.SOCK_STREAM, 0,
                              codec.Rings(100, 8192, 12, 12)))
    elif case == "request index":
        bad.grant.buffer[0:4] = (0x7fffffff).to_bytes(4, "little")    # req_prod
        bad.kick()
    elif case == "tx index":
        base = bad.layout.socks_off * 4096
        bad.grant.buffer[base:base + 4] = (0x40000000).to_bytes(4, "little")   # tx_prod
        bad.post(0, codec.EV_DATA)
    elif case == "nonzero pad":
        raw = bytearray(codec.Ping(0, 1).encode())
        raw[12] = 1
        bad.cmd.put(bytes(raw))
        bad.cmd.push()
        bad.kick()
    _expect_broken(bad, why)
    victim.settimeout(5)
    assert victim.recv(10) == b""          # its sockets are closed
    _still_serves(good)
    victim.close()
    lst.close()


def test_full_rx_ring_stops_reading_the_socket(fronts):
    f = fronts()
    lst = listener()
    assert connect(f, 0, lst.getsockname()).ret == 0
    peer, _ = lst.accept()
    blob = os.urandom(1 << 20)
    t = threading.Thread(target=peer.sendall, args=(blob,))
    t.start()
    time.sleep(0.5)                  # the frontend reads nothing meanwhile
    assert f.engine.stats(f.handle)["rx_bytes"] == 1 << 16    # the rx ring's size, no more
    data, _, _ = f.read(0, want=len(blob), timeout=30)
    assert data == blob
    t.join(10)
    peer.close()
    lst.close()


def test_frontends_do_not_see_each_others_sockets(fronts):
    a, b = fronts(1), fronts(3)
    lst = listener()
    for f in (a, b):                 # the same slot number in both
        assert connect(f, 0, lst.getsockname()).ret == 0
    peers = [lst.accept()[0] for _ in range(2)]
    by_port = {p.getpeername()[1]: p for p in peers}
    for f, tag in ((a, b"from a"), (b, b"from b")):
        port = f.call(codec.GetSockName(0, 0)).body.port
        by_port[port].sendall(tag)
        assert f.read(0, want=6)[0] == tag
    assert a.call(codec.Close(0, 0)).ret == 0
    data = b"b still works"
    by_port[b.call(codec.GetSockName(0, 0)).body.port].sendall(data)
    assert b.read(0, want=len(data))[0] == data
    for p in peers:
        p.close()
    lst.close()


def test_udp_socket_that_sends_first(fronts):
    f = fronts()
    assert f.socket(0, type_=codec.SOCK_DGRAM) == 0
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind((LOOP, 0))
    peer.settimeout(5)
    tx = f.socks[0].tx
    hdr = codec.DgramHeader(5, SockAddr.from_tuple(peer.getsockname()))
    tx.dgram_put(hdr.encode(), b"first")
    if tx.publish():
        f.post(0, codec.EV_DATA)
    assert peer.recvfrom(100)[0] == b"first"
    peer.close()


def test_shutdown_waits_for_tx_to_drain(fronts):
    f = fronts()
    lst = socket.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)     # inherited by the peer
    lst.bind((LOOP, 0))
    lst.listen(1)
    assert f.socket(0) == 0
    small = (4096).to_bytes(4, "little")
    assert f.call(codec.SetSockOpt(0, 0, socket.SOL_SOCKET, socket.SO_SNDBUF, small)).ret == 0
    assert f.call(codec.Connect(0, 0, addr(*lst.getsockname()))).ret == 0
    peer, _ = lst.accept()
    blob = os.urandom(60000)          # fits tx, not the kernel's buffers while peer sleeps
    f.write(0, blob)
    rid = f.send(codec.Shutdown(0, 0, socket.SHUT_WR))
    f.poll(0.3)
    assert rid not in f.responses     # answered only once tx is drained
    got = bytearray()
    peer.settimeout(10)
    while True:
        chunk = peer.recv(1 << 16)
        if not chunk:
            break
        got += chunk
    assert bytes(got) == blob         # every byte published before SHUTDOWN, then FIN
    assert f.wait(rid).ret == 0
    peer.close()
    lst.close()


def test_tx_bytes_after_shutdown_are_a_violation(fronts):
    f = fronts()
    lst = listener()
    assert connect(f, 0, lst.getsockname()).ret == 0
    peer, _ = lst.accept()
    assert f.call(codec.Shutdown(0, 0, socket.SHUT_WR)).ret == 0
    f.write(0, b"too late")
    _expect_broken(f, "tx ring")
    peer.close()
    lst.close()


def test_features_not_negotiated_are_refused(fronts):
    f = fronts(features=())
    assert f.socket(0, type_=codec.SOCK_DGRAM) == -errno.EPROTONOSUPPORT
    assert f.socket(1, family=codec.AF_INET6) == -errno.EAFNOSUPPORT
    off = f.alloc(4096)
    f.put_data(off, b"localhost")
    rsp = f.call(codec.GetAddrInfo(0, codec.Ool(off, 4096), 9, 0))
    assert rsp.ret == -errno.EOPNOTSUPP
    assert f.socket(2) == 0
    rsp = f.call(codec.Connect(0, 2, addr("::1", 9)))
    assert rsp.ret == -errno.EAFNOSUPPORT
    assert not f.engine.stats(f.handle)["broken"]


def test_ipv6_loopback(fronts):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    try:
        lst = socket.socket(socket.AF_INET6)
        lst.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    lst.listen(1)
    f = fronts()
    assert f.socket(0, family=codec.AF_INET6) == 0
    rsp = f.call(codec.Connect(0, 0, addr("::1", lst.getsockname()[1])))
    assert rsp.ret == 0 and rsp.body.host.exploded.endswith("0001")
    peer, _ = lst.accept()
    peer.sendall(b"v6")
    assert f.read(0, want=2)[0] == b"v6"
    peer.close()
    lst.close()


def test_linger_never_blocks_the_ins(fronts):
    """SO_LINGER {on, 30 s} would make close(2) wait in the INS: it must not."""
    f = fronts()
    lst = socket.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    lst.bind((LOOP, 0))
    lst.listen(1)
    assert f.socket(0) == 0
    small = (4096).to_bytes(4, "little")
    assert f.call(codec.SetSockOpt(0, 0, socket.SOL_SOCKET, socket.SO_SNDBUF, small)).ret == 0
    linger = (1).to_bytes(4, "little") + (30).to_bytes(4, "little")
    assert f.call(codec.SetSockOpt(0, 0, socket.SOL_SOCKET, socket.SO_LINGER, linger)).ret == 0
    assert f.call(codec.Connect(0, 0, addr(*lst.getsockname()))).ret == 0
    peer, _ = lst.accept()           # never reads
    f.write(0, os.urandom(60000))
    t0 = time.monotonic()
    assert f.call(codec.Close(0, 0)).ret == 0
    assert f.call(codec.Ping(0, 1)).ret == 0
    f.engine.detach(f.handle)        # drops the unsent bytes kept for the closed socket
    f.handle = 0
    assert time.monotonic() - t0 < 5
    peer.close()
    lst.close()


def test_many_lookups_at_once_are_all_answered(fronts):
    """More lookups in flight than the frontend's share of the resolver pool: the rest wait
    in the INS and are all answered, each into its own buffer."""
    f = fronts()
    ids = {}
    for i in range(8):
        off = f.alloc(4096)
        f.put_data(off, b"127.0.0.%d" % (i + 1))
        ids[f.send(codec.GetAddrInfo(0, codec.Ool(off, 4096), 9, 0,
                                     flags=socket.AI_NUMERICHOST,
                                     family=codec.AF_INET, socktype=codec.SOCK_DGRAM))] = (i, off)
    for rid, (i, off) in ids.items():
        rsp = f.wait(rid)
        assert rsp.ret == 0 and rsp.body.status == 0
        ans = codec.decode_ai_answer(f.data(off, rsp.body.len))
        assert [e.addr.to_tuple()[0] for e in ans.entries] == ["127.0.0.%d" % (i + 1)]


def test_datagram_error_is_announced_and_kept_for_so_error(fronts):
    f = fronts()
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind((LOOP, 0))
    port = dead.getsockname()[1]
    dead.close()
    assert f.socket(0, type_=codec.SOCK_DGRAM) == 0
    assert f.call(codec.Connect(0, 0, addr(LOOP, port))).ret == 0
    tx = f.socks[0].tx
    tx.dgram_put(codec.DgramHeader(4).encode(), b"ping")     # to the connected peer
    if tx.publish():
        f.post(0, codec.EV_DATA)
    end = time.monotonic() + 10
    while not any(ev[0] == 0 and ev[1] == codec.EV_STATE for ev in f.events):
        assert time.monotonic() < end, f.events
        f.poll(0.2)
    rsp = f.call(codec.GetSockOpt(0, 0, socket.SOL_SOCKET, socket.SO_ERROR, 4))
    assert int.from_bytes(rsp.body.value, "little") == errno.ECONNREFUSED
    assert f.socks[0].rx.rx_state() == (0, 0)            # no rx flag on a datagram socket


def test_accepts_on_a_small_budget_are_all_served(fronts):
    """The buffer budget counts memory the INS holds, not the kernel's (autotuned) socket
    buffers: 100 connections through a listener, 8 ACCEPTs at a time, on a 64 KiB budget are
    all served in turn and none is reset; those not accepted yet wait in the backlog."""
    with Engine(max_buf_bytes=64 << 10) as eng:
        eng.start()
        f = fronts(engine=eng)
        assert f.socket(0) == 0
        bound = f.call(codec.Bind(0, 0, addr(LOOP, 0)))
        assert bound.ret == 0
        assert f.call(codec.Listen(0, 0, 128)).ret == 0
        clients = []
        for i in range(100):
            c = socket.create_connection((LOOP, bound.body.port), timeout=10)
            c.sendall(b"hi %03d" % i)
            clients.append(c)
        pending = {n: f.send(codec.Accept(0, 0, n, f.rings(n, order=12))) for n in range(1, 9)}
        served = 0
        while served < 100:
            for n, rid in list(pending.items()):
                rsp = f.wait(rid)
                assert rsp.ret == 0, rsp
                msg, _, _ = f.read(n, want=6)
                f.write(n, msg.upper())
                assert f.call(codec.Close(0, n)).ret == 0
                served += 1
                del pending[n]
                if served + len(pending) < 100:
                    pending[n] = f.send(codec.Accept(0, 0, n, f.rings(n, order=12)))
        for i, c in enumerate(clients):
            assert c.recv(16) == b"HI %03d" % i       # no ECONNRESET
            assert c.recv(16) == b""
            c.close()
        assert eng.stats(f.handle)["buf_bytes"] == 0
        assert f.call(codec.Close(0, 0)).ret == 0
        f.close()


def test_accept_waits_while_closed_sockets_hold_the_budget(fronts):
    """Unsent bytes of a closed socket are held by the INS: while they leave no room for a new
    connection's tx ring, an ACCEPT waits (the connection stays in the backlog, not reset), and
    it is answered once they are sent."""
    with Engine(max_buf_bytes=100_000) as eng:
        eng.start()
        f = fronts(engine=eng)
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # inherited: little room
        lst.bind((LOOP, 0))
        lst.listen(1)
        assert f.socket(0) == 0
        small = (4096).to_bytes(4, "little")
        assert f.call(codec.SetSockOpt(0, 0, socket.SOL_SOCKET, socket.SO_SNDBUF, small)).ret == 0
        assert f.call(codec.Connect(0, 0, addr(*lst.getsockname()))).ret == 0
        peer, _ = lst.accept()
        blob = os.urandom(60000)
        f.write(0, blob)
        assert f.call(codec.Close(0, 0)).ret == 0
        held = eng.stats(f.handle)["buf_bytes"]
        assert 0 < held <= len(blob)

        assert f.socket(1) == 0
        bound = f.call(codec.Bind(0, 1, addr(LOOP, 0)))
        assert f.call(codec.Listen(0, 1, 8)).ret == 0
        rid = f.send(codec.Accept(0, 1, 2, f.rings(2, order=17)))   # 128 KiB: no room
        client = socket.create_connection((LOOP, bound.body.port), timeout=10)
        client.sendall(b"waiting")
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            f.poll(0.1)
        assert rid not in f.responses                    # waits in the backlog
        buf = bytearray()
        peer.settimeout(10)
        while True:                                      # the held bytes drain...
            chunk = peer.recv(1 << 16)
            if not chunk:
                break
            buf += chunk
        assert bytes(buf) == blob
        rsp = f.wait(rid)                                # ...then the ACCEPT is answered
        assert rsp.ret == 0 and rsp.body.port == client.getsockname()[1]
        assert f.read(2, want=7)[0] == b"waiting"
        assert eng.stats(f.handle)["buf_bytes"] == 0
        client.close()
        peer.close()
        lst.close()
        f.close()


def test_default_budget_is_capped_whatever_the_area(fronts):
    """The INS (192 MB of RAM in its image) holds at most 64 MiB of unsent bytes of closed
    sockets per frontend by default, however large a data area the frontend chose: five
    sockets closed with ~16 MiB each unsent on a 160 MiB area leave at most 64 MiB held, the
    rest dropped."""
    f = fronts(data_pages=(160 << 20) // 4096)
    lst = socket.socket()
    lst.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)    # inherited: little room
    lst.bind((LOOP, 0))
    lst.listen(8)
    peers, blob = [], bytes(range(256)) * (1 << 16)              # 16 MiB: one full tx ring
    small = (4096).to_bytes(4, "little")
    for n in range(5):
        assert f.socket(n, order=24) == 0
        assert f.call(codec.SetSockOpt(0, n, socket.SOL_SOCKET, socket.SO_SNDBUF, small)).ret == 0
        assert f.call(codec.Connect(0, n, addr(*lst.getsockname()))).ret == 0
        peers.append(lst.accept()[0])
        f.write(n, blob[:(1 << 24) - (1 << 20)])
        assert f.call(codec.Close(0, n)).ret == 0
    held = f.engine.stats(f.handle)["buf_bytes"]
    print(f"\n{held / (1 << 20):.1f} MiB held for closed sockets")
    assert 3 * (14 << 20) <= held <= 64 << 20, held
    for p in peers:
        p.close()
    lst.close()
