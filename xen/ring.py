"""The ring library for Python: a thin typed layer over mwcomms._native (xen/ring.c).

For tests, tools and the control plane; the data plane calls the C library directly. Python
has no memory fence, so it never reads or writes a shared index itself: every access goes
through the C functions, which copy what they read once and check it. Messages are bytes (a
128-byte command slot, a 16-byte event, a 40-byte datagram header), built and checked by the
codec.

    area = Area(grant.buffer, Geometry(cmd_pages=1, evq_pages=1, sock_slots=32, data_pages=16))
    front = CommandFront(area)
    front.put(request_bytes, cookie=7)
    if front.push():
        evtchn.notify(port)

Errors: a negative errno from C becomes an OSError with .errno, in `check_errno` (xen/platform.py) only. EPROTO
means the peer broke the protocol: the object stays broken, the connection must go.
"""
import struct
from dataclasses import dataclass

from mwcomms._native import ffi, lib
from mwcomms.xen.platform import check_errno

__all__ = ["Geometry", "Area", "CommandFront", "CommandBack", "EventQueue", "ByteRing",
           "RESCAN", "FRONT", "BACK", "TX", "RX"]

FRONT, BACK = lib.MW_SIDE_FRONT, lib.MW_SIDE_BACK
TX, RX = lib.MW_BRING_TX, lib.MW_BRING_RX
RESCAN = "rescan"          # EventQueue.take(): events were dropped, rescan every socket

_SLOT = 128
_EVENT = struct.Struct("<IHHQ")
_DGRAM_HDR = 40


@dataclass(frozen=True)
class Geometry:
    """Sizes of the shared area's parts, as negotiated through XenStore."""

    cmd_pages: int = 1
    evq_pages: int = 1
    sock_slots: int = 32
    data_pages: int = 16

    def _c(self):
        g = ffi.new("struct mw_area_geom *")
        g.cmd_pages, g.evq_pages = self.cmd_pages, self.evq_pages
        g.sock_slots, g.data_pages = self.sock_slots, self.data_pages
        return g

    @property
    def size(self):
        """Bytes of the area; OSError(EINVAL) for a geometry out of the limits."""
        out = ffi.new("size_t *")
        check_errno(lib.mw_area_size(self._c(), out), "area size")
        return out[0]


class Area:
    """A mapped shared area: a writable, page-aligned buffer (a Grant's, an mmap) of at least
    geometry.size bytes. The buffer is kept alive as long as the Area and its rings."""

    def __init__(self, buffer, geometry):
        self.geometry = geometry
        self._buf = ffi.from_buffer(buffer, require_writable=True)
        self._c = ffi.new("struct mw_area *")
        check_errno(lib.mw_area_init(self._c, self._buf, len(self._buf), geometry._c()), "area")

    def reset_socket(self, sock):
        """Frontend: zero socket slot `sock` before handing it to a SOCKET/ACCEPT request."""
        check_errno(lib.mw_sock_reset(self._c, sock), "socket reset")


class CommandFront:
    """The frontend's end of the command ring: requests out, responses in."""

    def __init__(self, area):
        self._area = area
        self._c = ffi.new("struct mw_cmd_front *")
        check_errno(lib.mw_cmd_front_init(self._c, area._c), "command ring")

    @property
    def space(self):
        """Requests that may be put now."""
        return check_errno(lib.mw_cmd_front_space(self._c), "command ring")

    @property
    def outstanding(self):
        return lib.mw_cmd_front_outstanding(self._c)

    def put(self, req, cookie=0):
        """Write a 128-byte request (its id is assigned here); return the id."""
        buf = ffi.new("char[]", bytes(req).ljust(_SLOT, b"\0")[:_SLOT])
        check_errno(lib.mw_cmd_front_put_req(self._c, buf, cookie), "put request")
        return int.from_bytes(ffi.buffer(buf, 4), "little")

    def push(self):
        """Publish; True when the INS asked to be kicked."""
        return bool(check_errno(lib.mw_cmd_front_push(self._c), "push requests"))

    def take(self):
        """The next response as (bytes, cookie), or None."""
        buf, cookie = ffi.new("char[]", _SLOT), ffi.new("uint64_t *")
        if not check_errno(lib.mw_cmd_front_take_rsp(self._c, buf, cookie), "take response"):
            return None
        return bytes(ffi.buffer(buf)), cookie[0]

    def final_check(self):
        """Before sleeping: True when a response came meanwhile (do not sleep)."""
        return bool(check_errno(lib.mw_cmd_front_final_check(self._c), "final check"))


class CommandBack:
    """The INS's end of the command ring: requests in, responses out."""

    def __init__(self, area):
        self._area = area
        self._c = ffi.new("struct mw_cmd_back *")
        check_errno(lib.mw_cmd_back_init(self._c, area._c), "command ring")

    @property
    def unanswered(self):
        return lib.mw_cmd_back_unanswered(self._c)

    def take(self):
        """The next request (128 bytes, unchecked content), or None."""
        buf = ffi.new("char[]", _SLOT)
        if not check_errno(lib.mw_cmd_back_take_req(self._c, buf), "take request"):
            return None
        return bytes(ffi.buffer(buf))

    def put(self, rsp):
        buf = ffi.new("char[]", bytes(rsp).ljust(_SLOT, b"\0")[:_SLOT])
        check_errno(lib.mw_cmd_back_put_rsp(self._c, buf), "put response")

    def push(self):
        return bool(check_errno(lib.mw_cmd_back_push(self._c), "push responses"))

    def final_check(self):
        return bool(check_errno(lib.mw_cmd_back_final_check(self._c), "final check"))


class EventQueue:
    """One end of an event queue: the side's own queue (produce=True) or the peer's."""

    def __init__(self, area, side, produce):
        self._area = area
        self._c = ffi.new("struct mw_evq *")
        check_errno(lib.mw_evq_init(self._c, area._c, side, 1 if produce else 0), "event queue")

    def put(self, sock, type, arg=0):
        """Queue an event; False when the queue was full (dropped; the peer will rescan)."""
        return bool(check_errno(lib.mw_evq_put(self._c, sock, type, arg), "put event"))

    def push(self):
        return bool(check_errno(lib.mw_evq_push(self._c), "push events"))

    def take(self):
        """(sock, type, flags, arg), RESCAN, or None when empty."""
        buf = ffi.new("char[]", _EVENT.size)
        rc = check_errno(lib.mw_evq_take(self._c, buf), "take event")
        if rc == lib.MW_EVQ_RESCAN:
            return RESCAN
        return _EVENT.unpack(ffi.buffer(buf)) if rc else None

    def final_check(self):
        return bool(check_errno(lib.mw_evq_final_check(self._c), "final check"))


class ByteRing:
    """One end of one direction of a socket's byte ring (see ring.h for who produces what)."""

    def __init__(self, area, sock, side, direction, off, order):
        self._area = area
        self._c = ffi.new("struct mw_bring *")
        check_errno(lib.mw_bring_init(self._c, area._c, sock, side, direction, off, order),
               "byte ring")
        self.size = self._c.size

    # producer
    def space(self):
        return check_errno(lib.mw_bring_space(self._c), "space")

    def write(self, data):
        """Copy as much of data as fits; return the count (publish() makes it visible)."""
        return check_errno(lib.mw_bring_write(self._c, ffi.from_buffer(data), len(data)), "write")

    def read_fd(self, fd, max_bytes):
        return check_errno(lib.mw_bring_read_fd(self._c, fd, max_bytes), "read from fd")

    def publish(self):
        """True when the consumer asked to be told (post MW_EV_DATA)."""
        return bool(check_errno(lib.mw_bring_publish(self._c), "publish"))

    def dgram_put(self, hdr, payload):
        """Append a record: hdr is 40 bytes whose len field must equal len(payload)."""
        h = ffi.new("char[]", bytes(hdr).ljust(_DGRAM_HDR, b"\0")[:_DGRAM_HDR])
        return check_errno(lib.mw_bring_dgram_put(self._c, h, ffi.from_buffer(payload)), "dgram put")

    # consumer
    def avail(self):
        return check_errno(lib.mw_bring_avail(self._c), "avail")

    def peek(self, n):
        buf = ffi.new("char[]", max(n, 1))
        got = check_errno(lib.mw_bring_peek(self._c, buf, n), "peek")
        return bytes(ffi.buffer(buf, got))

    def consume(self, n):
        check_errno(lib.mw_bring_consume(self._c, n), "consume")

    def read(self, n):
        buf = ffi.new("char[]", max(n, 1))
        got = check_errno(lib.mw_bring_read(self._c, buf, n), "read")
        return bytes(ffi.buffer(buf, got))

    def write_fd(self, fd, max_bytes):
        return check_errno(lib.mw_bring_write_fd(self._c, fd, max_bytes), "write to fd")

    def release(self):
        """True when the producer asked to be told (post MW_EV_SPACE)."""
        return bool(check_errno(lib.mw_bring_release(self._c), "release"))

    def dgram_get(self, room):
        """The next record as (40-byte header, payload truncated to room), or None."""
        h, buf = ffi.new("char[]", _DGRAM_HDR), ffi.new("char[]", max(room, 1))
        if not check_errno(lib.mw_bring_dgram_get(self._c, h, buf, room), "dgram get"):
            return None
        hdr = bytes(ffi.buffer(h))
        length = int.from_bytes(hdr[:4], "little")
        return hdr, bytes(ffi.buffer(buf, min(length, room)))

    def seal(self):
        """INS on tx after SHUTDOWN(SHUT_WR): the producer index is final; bytes left to drain."""
        return check_errno(lib.mw_bring_seal(self._c), "seal")

    def rx_state(self):
        """Frontend on rx: (MW_RXF_* flags, error); with a flag set, what is readable is all."""
        err = ffi.new("int32_t *")
        flags = check_errno(lib.mw_bring_rx_state(self._c, err), "rx state")
        return flags, err[0]

    def end_rx(self, error=0):
        """INS on rx: end of file (error 0) or failure (a negative errno) after the last byte."""
        check_errno(lib.mw_bring_end_rx(self._c, error), "end rx")

    # both
    def prepare_wait(self, need=1):
        """Before sleeping: True when `need` bytes are already there (do not sleep)."""
        return bool(check_errno(lib.mw_bring_prepare_wait(self._c, need), "prepare wait"))
