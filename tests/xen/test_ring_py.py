"""Property tests of the ring library through its Python layer (mwcomms.xen.ring): random
sequences of operations on both ends of each ring, in one process, against a model written
from the rules of proto.h and ring.h; and random values written into the peer's indices,
against the receiver checks restated here.
"""
import errno
import mmap
import struct

import pytest
from hypothesis import given, settings, strategies as st

from mwcomms.xen import ring

PAGE = 4096
M32 = 1 << 32
ORDER = 12
SIZE = 1 << ORDER
GEOM = ring.Geometry(cmd_pages=1, evq_pages=1, sock_slots=32, data_pages=2)
NSLOTS = GEOM.cmd_pages * PAGE // 128
EVQ_LEN = GEOM.evq_pages * PAGE // 16
# byte offsets in the area (proto.h): control page, slots, fq, bq, socket table, data
CTRL_BACK = 64                       # struct mw_ctrl_back: rsp_prod, req_event, bq_prod, ...
SOCKS = PAGE * (1 + GEOM.cmd_pages + 2 * GEOM.evq_pages)
DATA = SOCKS + PAGE


def fresh():
    buf = mmap.mmap(-1, GEOM.size)
    return buf, ring.Area(buf, GEOM)


def poke(buf, off, value):
    buf[off:off + 4] = struct.pack("<I", value % M32)


def stream(pos, n):
    return bytes((i * 7 + (i >> 8)) & 0xff for i in range(pos, pos + n))


def eproto(call, *args):
    with pytest.raises(OSError) as e:
        call(*args)
    assert e.value.errno == errno.EPROTO


def kicked(old, new, event):
    """The notify rule: the peer's event index lies in (old, new]."""
    return (new - event) % M32 < (new - old) % M32


# ---- byte ring against a model ---------------------------------------------------------------

byte_ops = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, 2 * SIZE)),
    st.tuples(st.just("publish"), st.just(0)),
    st.tuples(st.just("read"), st.integers(0, 2 * SIZE)),
    st.tuples(st.just("peek"), st.integers(0, 2 * SIZE)),
    st.tuples(st.just("release"), st.just(0)),
    st.tuples(st.just("cwait"), st.integers(1, SIZE)),
    st.tuples(st.just("pwait"), st.integers(1, SIZE)),
), max_size=60)


@settings(max_examples=1000, deadline=None)
@given(byte_ops, st.sampled_from([ring.TX, ring.RX]))
def test_byte_ring_matches_model(ops, direction):
    buf, area = fresh()
    prod_side = ring.FRONT if direction == ring.TX else ring.BACK
    cons_side = ring.BACK if direction == ring.TX else ring.FRONT
    area.reset_socket(3)
    p = ring.ByteRing(area, 3, prod_side, direction, PAGE, ORDER)
    c = ring.ByteRing(area, 3, cons_side, direction, PAGE, ORDER)
    prod_pvt = prod_pub = cons_pvt = cons_pub = 0
    cons_event = prod_event = 0            # what each end last asked for (shared, zeroed)
    for op, n in ops:
        if op == "write":
            space = SIZE - (prod_pvt - cons_pub)
            assert p.space() == space
            assert p.write(stream(prod_pvt, n)) == min(n, space)
            prod_pvt += min(n, space)
        elif op == "publish":
            assert p.publish() == kicked(prod_pub, prod_pvt, prod_event)
            prod_pub = prod_pvt
        elif op in ("read", "peek"):
            avail = prod_pub - cons_pvt
            assert c.avail() == avail
            data = c.read(n) if op == "read" else c.peek(n)
            assert data == stream(cons_pvt, min(n, avail))
            if op == "read":
                cons_pvt += len(data)
            else:
                c.consume(len(data))
                cons_pvt += len(data)
        elif op == "release":
            assert c.release() == kicked(cons_pub, cons_pvt, cons_event)
            cons_pub = cons_pvt
        elif op == "cwait":
            assert c.prepare_wait(n) == (prod_pub - cons_pvt >= n)
            prod_event = cons_pvt + n
        else:
            assert p.prepare_wait(n) == (SIZE - (prod_pvt - cons_pub) >= n)
            cons_event = prod_pvt + n - SIZE


# ---- command ring against a model ------------------------------------------------------------

cmd_ops = st.lists(st.one_of(
    st.tuples(st.just("put"), st.integers(1, NSLOTS + 2)),
    st.tuples(st.just("fpush"), st.just(0)),
    st.tuples(st.just("btake"), st.integers(1, NSLOTS)),
    st.tuples(st.just("answer"), st.integers(0, 10 ** 6)),
    st.tuples(st.just("bpush"), st.just(0)),
    st.tuples(st.just("ftake"), st.integers(1, NSLOTS)),
), max_size=80)


def ping(arg):
    return struct.pack("<IHHII", 0, 15, 0, arg % 32, 0) + struct.pack("<Q", arg).ljust(112, b"\0")


@settings(max_examples=1000, deadline=None)
@given(cmd_ops)
def test_command_ring_matches_model(ops):
    _, area = fresh()
    back, front = ring.CommandBack(area), ring.CommandFront(area)
    cookie = 0
    sent, pushed, taken, answered, rsp_pushed = [], 0, [], [], 0
    outstanding = {}                            # id -> cookie
    received = 0
    for op, n in ops:
        if op == "put":
            for _ in range(n):
                if len(outstanding) == NSLOTS:
                    with pytest.raises(OSError) as e:
                        front.put(ping(cookie), cookie)
                    assert e.value.errno == errno.ENOSPC
                    break
                rid = front.put(ping(cookie), cookie)
                assert rid not in outstanding and rid != 0
                outstanding[rid] = cookie
                sent.append((rid, cookie))
                cookie += 1
            assert front.space == NSLOTS - len(outstanding)
        elif op == "fpush":
            front.push()
            pushed = len(sent)
        elif op == "btake":
            for _ in range(n):
                req = back.take()
                if len(taken) == pushed:
                    assert req is None
                    break
                rid, ck = sent[len(taken)]
                assert struct.unpack_from("<I", req)[0] == rid
                assert struct.unpack_from("<Q", req, 16)[0] == ck
                taken.append(req)
        elif op == "answer":
            pending = [r for r in taken if r not in answered]
            if pending:
                req = pending[n % len(pending)]
                back.put(req[:4] + req[4:6] + b"\0\0" + req[8:12] + b"\0" * 116)
                answered.append(req)
        elif op == "bpush":
            back.push()
            rsp_pushed = len(answered)
        else:
            for _ in range(n):
                got = front.take()
                if received == rsp_pushed:
                    assert got is None
                    break
                rsp, ck = got
                rid = struct.unpack_from("<I", rsp)[0]
                assert rid == struct.unpack_from("<I", answered[received])[0]
                assert outstanding.pop(rid) == ck
                received += 1
        assert front.outstanding == len(outstanding)
        assert back.unanswered == len(taken) - len(answered)


# ---- event queue against a model -------------------------------------------------------------

evq_ops = st.lists(st.one_of(
    st.tuples(st.just("put"), st.integers(1, EVQ_LEN + 40)),
    st.tuples(st.just("push"), st.just(0)),
    st.tuples(st.just("take"), st.integers(1, EVQ_LEN + 40)),
), max_size=30)


@settings(max_examples=1000, deadline=None)
@given(evq_ops, st.sampled_from([ring.FRONT, ring.BACK]))
def test_event_queue_matches_model(ops, side):
    _, area = fresh()
    other = ring.BACK if side == ring.FRONT else ring.FRONT
    cons, prod = ring.EventQueue(area, other, False), ring.EventQueue(area, side, True)
    queued, pushed, consumed, overflow, seen_overflow, seq = [], 0, 0, 0, 0, 0
    for op, n in ops:
        if op == "put":
            for _ in range(n):
                ok = prod.put(seq % 32, 1 + seq % 2, seq)
                assert ok == (len(queued) - consumed < EVQ_LEN)
                if ok:
                    queued.append(seq)
                else:
                    overflow += 1
                seq += 1
        elif op == "push":
            prod.push()
            pushed = len(queued)
        else:
            for _ in range(n):
                got = cons.take()
                if overflow != seen_overflow:
                    assert got == ring.RESCAN
                    seen_overflow = overflow
                elif consumed == pushed:
                    assert got is None
                    break
                else:
                    arg = queued[consumed]
                    assert got == (arg % 32, 1 + arg % 2, 0, arg)
                    consumed += 1


# ---- the receiver checks, restated -----------------------------------------------------------

u32 = st.integers(0, M32 - 1)
near = st.integers(-2 * SIZE, 2 * SIZE)


@settings(max_examples=1000, deadline=None)
@given(st.integers(0, SIZE), st.integers(0, SIZE), st.one_of(u32, near), st.booleans())
def test_consumer_checks_producer_index(written, read, value, relative):
    """prod is accepted iff last_prod - cons <= prod - cons <= size."""
    buf, area = fresh()
    p = ring.ByteRing(area, 0, ring.BACK, ring.RX, 0, ORDER)
    c = ring.ByteRing(area, 0, ring.FRONT, ring.RX, 0, ORDER)
    p.write(b"x" * written)
    p.publish()
    cons = len(c.read(read))
    prod = (written + value) % M32 if relative else value % M32
    poke(buf, SOCKS + 64 + 0, prod)                    # socks[0].back.rx_prod
    fill = (prod - cons) % M32
    if written - cons <= fill <= SIZE:
        assert c.avail() == fill
    else:
        eproto(c.avail)
        eproto(c.read, 1)                              # and it stays broken
        poke(buf, SOCKS + 64, written)
        eproto(c.avail)


@settings(max_examples=1000, deadline=None)
@given(st.integers(0, SIZE), st.integers(0, SIZE), st.one_of(u32, near), st.booleans())
def test_producer_checks_consumer_index(written, read, value, relative):
    """cons is accepted iff it moved forward from what we saw and not past prod."""
    buf, area = fresh()
    p = ring.ByteRing(area, 0, ring.FRONT, ring.TX, 0, ORDER)
    c = ring.ByteRing(area, 0, ring.BACK, ring.TX, 0, ORDER)
    p.write(b"y" * written)
    p.publish()
    seen = len(c.read(read))
    c.release()
    assert p.space() == SIZE - (written - seen)
    cons = (seen + value) % M32 if relative else value % M32
    poke(buf, SOCKS + 64 + 8, cons)                    # socks[0].back.tx_cons
    if (written - cons) % M32 <= written - seen:
        assert p.space() == SIZE - (written - cons) % M32
    else:
        eproto(p.space)
        eproto(p.write, b"z")


@settings(max_examples=1000, deadline=None)
@given(st.integers(0, NSLOTS), st.integers(0, NSLOTS), st.one_of(u32, st.integers(-64, 64)))
def test_front_checks_rsp_prod(nreq, nrsp, value):
    """rsp_prod may run ahead of rsp_cons by at most the requests outstanding."""
    buf, area = fresh()
    back, front = ring.CommandBack(area), ring.CommandFront(area)
    nrsp = min(nrsp, nreq)
    for i in range(nreq):
        front.put(ping(i), i)
    front.push()
    for _ in range(nrsp):
        req = back.take()
        back.put(req[:12] + b"\0" * 116)
    back.push()
    for _ in range(nrsp):
        assert front.take() is not None
    rsp_prod = (nrsp + value) % M32
    poke(buf, CTRL_BACK + 0, rsp_prod)                 # ctrl.back.rsp_prod
    if (rsp_prod - nrsp) % M32 <= nreq - nrsp:
        assert front.final_check() == (rsp_prod != nrsp)
    else:
        eproto(front.final_check)
        eproto(front.take)


@settings(max_examples=1000, deadline=None)
@given(st.integers(0, NSLOTS), st.integers(0, NSLOTS), st.one_of(u32, st.integers(-64, 64)))
def test_back_checks_req_prod(ntaken, nanswered, value):
    """req_prod - req_cons may not exceed the slots free of unanswered requests."""
    buf, area = fresh()
    back = ring.CommandBack(area)
    nanswered = min(nanswered, ntaken)
    poke(buf, 0, ntaken)                               # ctrl.front.req_prod
    for _ in range(ntaken):
        assert back.take() is not None
    for _ in range(nanswered):
        back.put(b"\0" * 128)
    req_prod = (ntaken + value) % M32
    poke(buf, 0, req_prod)
    room = NSLOTS - (ntaken - nanswered)
    if (req_prod - ntaken) % M32 <= room:
        assert back.final_check() == (req_prod != ntaken)
    else:
        eproto(back.take)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, SIZE), st.integers(-4095, 0), st.integers(0, SIZE))
def test_end_of_stream_after_the_last_byte(nbytes, error, read_first):
    """The frontend sees the flag only together with every byte before it, and nothing after."""
    _, area = fresh()
    p = ring.ByteRing(area, 1, ring.BACK, ring.RX, 0, ORDER)
    c = ring.ByteRing(area, 1, ring.FRONT, ring.RX, 0, ORDER)
    assert p.write(stream(0, nbytes)) == nbytes
    got = c.read(read_first)
    assert got == b""                              # nothing published before end_rx
    assert c.rx_state() == (0, 0)
    p.end_rx(error)
    flags, err = c.rx_state()
    assert flags == (2 if error else 1) and err == error
    assert c.read(SIZE) == stream(0, nbytes)
    assert c.read(SIZE) == b""
    with pytest.raises(OSError) as e:
        p.write(b"late")
    assert e.value.errno == errno.EPIPE
