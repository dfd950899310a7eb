"""A test frontend for the INS engine: the frontend's side of a real shared area on the sim
platform, driven from Python through the ring library (mwcomms.xen.ring) and the Python codec
(every response the INS writes is decoded and checked as mwcommsd would).

    eng = Engine(); eng.start()
    f = TestFront(simdir, 1, 2, eng)
    f.socket(0, AF_INET, SOCK_STREAM); f.call(codec.Connect(0, 0, SockAddr.from_tuple(addr)))
"""
import dataclasses
import select
import struct
import time
from types import SimpleNamespace

import pytest

from mwcomms.ins._engine import Engine
from mwcomms.tools import codec
from mwcomms.xen import area as _area
from mwcomms.xen import ring
from mwcomms.xen.platform import Platform

TIMEOUT = 10.0


class TestFront:
    """One frontend domain attached to an engine (not a pytest class)."""

    __test__ = False

    def __init__(self, simdir, front_dom, ins_dom, engine, *, sock_slots=32, data_pages=512,
                 features=("ipv6", "udp", "dns")):
        self.fplat = Platform("sim", sim_dir=simdir, domid=front_dom)
        self.bplat = Platform("sim", sim_dir=simdir, domid=ins_dom)
        self.layout = _area.AreaLayout(cmd_ring_pages=1, evq_pages=1, sock_slots=sock_slots,
                                       data_pages=data_pages)
        self.grant = self.fplat.share(ins_dom, self.layout.area_pages)
        self.mapping = self.bplat.map(front_dom, self.grant.refs)
        self.fec = self.fplat.evtchn()
        self.port = self.fec.alloc_unbound(ins_dom)
        self.bec = self.bplat.evtchn()
        bport = self.bec.bind_interdomain(front_dom, self.port)
        self.engine = engine
        link = SimpleNamespace(layout=self.layout, area=self.mapping, evtchn=self.bec,
                               port=bport, features=tuple(features), front_domid=front_dom)
        geom = ring.Geometry(1, 1, sock_slots, data_pages)
        self.limits = codec.Limits(sock_slots, data_pages)
        self.area = ring.Area(self.grant.buffer, geom)
        self.cmd = ring.CommandFront(self.area)
        self.fq = ring.EventQueue(self.area, ring.FRONT, True)
        self.bq = ring.EventQueue(self.area, ring.FRONT, False)
        self.data_off = self.layout.data_off * _area.PAGE
        self.next_page = 0
        self.responses = {}
        self.sent = {}
        self.events = []
        self.socks = {}
        self.handle = engine.attach(link)

    # -- the data area ------------------------------------------------------------------
    def alloc(self, nbytes):
        """Data-area offset of nbytes (rounded up to pages): a bump allocator."""
        pages = -(-nbytes // _area.PAGE)
        off = self.next_page * _area.PAGE
        self.next_page += pages
        assert self.next_page <= self.layout.data_pages, "test data area exhausted"
        return off

    def data(self, off, n):
        return bytes(self.grant.buffer[self.data_off + off:self.data_off + off + n])

    def put_data(self, off, blob):
        self.grant.buffer[self.data_off + off:self.data_off + off + len(blob)] = blob

    # -- commands -----------------------------------------------------------------------
    def kick(self):
        self.fec.notify(self.port)

    def send(self, req):
        """Put one request (codec object, id ignored) and publish it; return its id."""
        rid = self.cmd.put(req.encode())
        self.sent[rid] = dataclasses.replace(req, id=rid)
        if self.cmd.push():
            self.kick()
        return rid

    def poll(self, timeout):
        """Take responses and bq events; sleep on the event channel when there is none."""
        got = False
        while True:
            r = self.cmd.take()
            if r is None:
                break
            raw, _ = r
            rid, cmd, _flags, sock, ret = struct.unpack_from("<IHHIi", raw)
            if cmd not in codec.CMD_NAMES:      # the answer to an unknown command (7.4)
                assert raw[24:] == bytes(104) and isinstance(self.sent.pop(rid),
                                                             codec.UnknownCommand)
                self.responses[rid] = SimpleNamespace(id=rid, cmd=cmd, sock=sock, ret=ret)
                got = True
                continue
            rsp = codec.decode_response(raw, self.limits)
            codec.check_response_matches(rsp, self.sent.pop(rsp.id))
            self.responses[rsp.id] = rsp
            got = True
        while True:
            ev = self.bq.take()
            if ev is None:
                break
            self.events.append(ev)
            got = True
        if got:
            return True
        if self.cmd.final_check() or self.bq.final_check():
            return True
        if select.select([self.fec.fileno()], [], [], timeout)[0]:
            while self.fec.pending() is not None:
                pass
            return True
        return False

    def wait(self, rid, timeout=TIMEOUT):
        end = time.monotonic() + timeout
        while rid not in self.responses:
            left = end - time.monotonic()
            assert left > 0, f"no response to request {rid} ({self.engine.stats(self.handle)})"
            self.poll(min(left, 0.2))
        return self.responses.pop(rid)

    def call(self, req, timeout=TIMEOUT):
        return self.wait(self.send(req), timeout)

    # -- sockets ------------------------------------------------------------------------
    def rings(self, sock, order=16):
        tx, rx = self.alloc(1 << order), self.alloc(1 << order)
        self.area.reset_socket(sock)
        self.socks[sock] = SimpleNamespace(
            tx=ring.ByteRing(self.area, sock, ring.FRONT, ring.TX, tx, order),
            rx=ring.ByteRing(self.area, sock, ring.FRONT, ring.RX, rx, order))
        return codec.Rings(tx, rx, order, order)

    def socket(self, sock, family=codec.AF_INET, type_=codec.SOCK_STREAM, order=16):
        rsp = self.call(codec.Socket(0, sock, family, type_, 0, self.rings(sock, order)))
        return rsp.ret

    def post(self, sock, type_):
        self.fq.put(sock, type_)
        if self.fq.push():
            self.kick()

    def write(self, sock, blob, timeout=TIMEOUT):
        """Write all of blob into sock's tx ring, waiting for space as needed."""
        tx = self.socks[sock].tx
        end = time.monotonic() + timeout
        view = memoryview(blob)
        while view:
            n = tx.write(view)
            view = view[n:]
            if n and tx.publish():
                self.post(sock, codec.EV_DATA)
            if view and not n:
                assert time.monotonic() < end, "tx ring stays full"
                if not tx.prepare_wait(1):
                    self.poll(0.2)

    def read(self, sock, want=None, timeout=TIMEOUT):
        """Read rx bytes until `want` bytes or the end of the stream: (bytes, flags, error)."""
        rx = self.socks[sock].rx
        out = bytearray()
        end = time.monotonic() + timeout
        while want is None or len(out) < want:
            n = rx.avail()
            if n:
                out += rx.read(n if want is None else min(n, want - len(out)))
                if rx.release():
                    self.post(sock, codec.EV_SPACE)
                continue
            flags, err = rx.rx_state()
            if flags and not rx.avail():
                return bytes(out), flags, err
            assert time.monotonic() < end, f"rx: {len(out)} bytes, then nothing"
            if not rx.prepare_wait(1):
                self.poll(0.2)
        return bytes(out), 0, 0

    def close(self):
        if self.handle:
            try:
                self.engine.detach(self.handle)
            except OSError:
                pass
            self.handle = 0
        self.area = self.cmd = self.fq = self.bq = None
        self.socks.clear()
        self.fec.close()
        self.bec.close()
        self.mapping.release()
        self.grant.release()
        self.fplat.close()
        self.bplat.close()


@pytest.fixture
def engine():
    eng = Engine(max_socks=0)
    eng.start()
    yield eng
    eng.close()


@pytest.fixture
def fronts(tmp_path, engine):
    """make(front_dom) -> a TestFront attached to `engine` (INS is domain 2)."""
    made = []
    simdir = str(tmp_path / "sim")

    def make(front_dom=1, **kw):
        made.append(TestFront(simdir, front_dom, 2, kw.pop("engine", engine), **kw))
        return made[-1]

    yield make
    for f in made:
        f.close()
