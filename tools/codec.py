"""The mwcomms wire protocol, version 1: every message as a frozen dataclass, to and from bytes.

Sans-IO, like h11: this module knows nothing of shared memory, rings, sockets or cffi. It turns
bytes into message objects and back, and it makes the receiver checks of docs/protocol.md
("Receiver checks") that concern a single message:

    decode_request(b, limits)    -> Socket | Connect | ... | UnknownCommand
    decode_response(b, limits)   -> Response
    decode_event(b, limits, from_ins=...)
    decode_dgram_header(b, ring_size, from_ins=...)
    decode_gai_query(blob, node_len, service_len), decode_ai_answer(blob), decode_ni_answer(blob)

Every decoder raises one exception, ProtocolError (a ValueError), whose `reason` is the same
string the C codec (xen/codec.c) reports for the same message. Every message has exactly one
valid encoding: `encode()` writes all pads and unused bytes as zero, and the decoders reject
anything else, so decode(b).encode() == b for every b that decodes.

Byte order: little-endian, except a SockAddr's port and flow label, which travel in network
byte order as in struct sockaddr; the dataclasses hold them as plain numbers.

CtrlPage and SockShared decode the control page and a socket table entry for inspection
(mwctl trace): they check nothing, since those indices are judged by the ring code in context.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import ClassVar, Union

__all__ = [
    "ProtocolError", "Limits", "SockAddr", "Rings", "Ool",
    "Socket", "Connect", "Bind", "Listen", "Accept", "Shutdown", "Close", "GetSockOpt",
    "SetSockOpt", "GetSockName", "GetPeerName", "GetAddrInfo", "GetNameInfo", "Ioctl", "Ping",
    "UnknownCommand", "Request", "decode_request",
    "Response", "OptValue", "GaiResult", "PingEcho", "decode_response", "check_response_matches",
    "Event", "decode_event", "DgramHeader", "decode_dgram_header", "dgram_record_size",
    "GaiQuery", "decode_gai_query", "AiEntry", "AiAnswer", "decode_ai_answer",
    "NiAnswer", "decode_ni_answer", "CtrlPage", "SockShared",
]

# ---- constants of proto.h -----------------------------------------------------------------------
PROTO_VERSION = 1
PAGE_SIZE = 4096
SLOT_SIZE = 128
REQ_BODY_SIZE = 112
RSP_BODY_SIZE = 104
EVENT_SIZE = 16
DGRAM_HDR_SIZE = 40
SOCKADDR_SIZE = 32

CMD_RING_PAGES_MAX = 16
EVQ_PAGES_MAX = 64
SOCK_SLOTS_MAX = 65536
DATA_PAGES_MAX = 1 << 18
RING_ORDER_MIN = 12
RING_ORDER_MAX = 24
OPT_INLINE_MAX = 88
OOL_MAX = 65536
DGRAM_MAX = 65535
OOL_ALIGN = 8
ERRNO_MAX = 4095
GAI_NODE_MAX = 1024
GAI_SERVICE_MAX = 64
AI_ENTRIES_MAX = 128
AI_CANON_MAX = 1024
NI_HOST_MAX = 1024
NI_SERV_MAX = 31
DGRAM_ALIGN = 8

AF_UNSPEC, AF_INET, AF_INET6 = 0, 2, 10
SOCK_STREAM, SOCK_DGRAM, SOCK_RAW = 1, 2, 3
IPPROTO_TCP, IPPROTO_UDP = 6, 17
AI_FLAGS_ALL = 0x04FF
NI_FLAGS_ALL = 0x003F
EAI_SYSTEM = -11
EAI_MIN = -105
IOCTL_SIOCATMARK, IOCTL_SIOCOUTQ, IOCTL_SIOCINQ = 1, 2, 3

(CMD_SOCKET, CMD_CONNECT, CMD_BIND, CMD_LISTEN, CMD_ACCEPT, CMD_SHUTDOWN, CMD_CLOSE,
 CMD_GETSOCKOPT, CMD_SETSOCKOPT, CMD_GETSOCKNAME, CMD_GETPEERNAME, CMD_GETADDRINFO,
 CMD_GETNAMEINFO, CMD_IOCTL, CMD_PING) = range(1, 16)
CMD_NAMES = {1: "SOCKET", 2: "CONNECT", 3: "BIND", 4: "LISTEN", 5: "ACCEPT", 6: "SHUTDOWN",
             7: "CLOSE", 8: "GETSOCKOPT", 9: "SETSOCKOPT", 10: "GETSOCKNAME",
             11: "GETPEERNAME", 12: "GETADDRINFO", 13: "GETNAMEINFO", 14: "IOCTL", 15: "PING"}
_NO_SOCK_CMDS = frozenset((CMD_GETADDRINFO, CMD_GETNAMEINFO, CMD_PING))
_ADDR_RSP_CMDS = frozenset((CMD_CONNECT, CMD_BIND, CMD_ACCEPT, CMD_GETSOCKNAME, CMD_GETPEERNAME))

EV_DATA, EV_SPACE, EV_STATE = 1, 2, 3
RXF_EOF, RXF_ERROR = 0x1, 0x2

FAMS_ALL = frozenset((AF_UNSPEC, AF_INET, AF_INET6))
FAMS_IP = frozenset((AF_INET, AF_INET6))


class ProtocolError(ValueError):
    """A message a receiver must reject: the connection is torn down and `reason` logged."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _fail(reason: str):
    raise ProtocolError(reason)


def _slot(raw: bytes) -> bytes:
    """Pad an encoded message to one command slot; a body too large for it is a caller bug."""
    if len(raw) > SLOT_SIZE:
        raise ValueError(f"message of {len(raw)} bytes does not fit a {SLOT_SIZE}-byte slot")
    return raw.ljust(SLOT_SIZE, b"\0")


@dataclass(frozen=True)
class Limits:
    """What the checks know of one connection: values negotiated through XenStore."""

    sock_slots: int = SOCK_SLOTS_MAX
    data_pages: int = DATA_PAGES_MAX

    @property
    def data_bytes(self) -> int:
        return self.data_pages * PAGE_SIZE


_DEFAULT_LIMITS = Limits()


def _u32(b: bytes, off: int) -> int:
    return struct.unpack_from("<I", b, off)[0]


def _zero(b: bytes, start: int, end: int) -> bool:
    return not any(b[start:end])


def _exact(b: bytes, size: int, what: str) -> bytes:
    b = bytes(b)
    if len(b) != size:
        raise ProtocolError(f"{what} is {len(b)} bytes, not {size}")
    return b


# ---- addresses ----------------------------------------------------------------------------------
_SA_HEAD = struct.Struct("<H")      # family, little-endian
_SA_NET = struct.Struct(">HI")      # port, flowinfo: network byte order
_SA_TAIL = struct.Struct("<II")     # scope_id, pad


@dataclass(frozen=True)
class SockAddr:
    """struct mw_sockaddr. host None means "no address" (family AF_UNSPEC)."""

    host: Union[ipaddress.IPv4Address, ipaddress.IPv6Address, None] = None
    port: int = 0
    flowinfo: int = 0      # IPv6 only
    scope_id: int = 0      # IPv6 only

    @property
    def family(self) -> int:
        if self.host is None:
            return AF_UNSPEC
        return AF_INET if self.host.version == 4 else AF_INET6

    @classmethod
    def from_tuple(cls, addr: tuple) -> "SockAddr":
        """From a Python socket address: (host, port) or (host, port, flowinfo, scope_id)."""
        host = ipaddress.ip_address(addr[0])
        return cls(host, addr[1], *addr[2:4])

    def to_tuple(self) -> tuple:
        """As the socket module writes addresses: (host, port), or a 4-tuple for IPv6."""
        if self.host is None:
            raise ValueError("no address")
        if self.host.version == 4:
            return (str(self.host), self.port)
        return (str(self.host), self.port, self.flowinfo, self.scope_id)

    def encode(self) -> bytes:
        raw = self.host.packed if self.host is not None else b""
        return (_SA_HEAD.pack(self.family) + _SA_NET.pack(self.port, self.flowinfo)
                + raw.ljust(16, b"\0") + _SA_TAIL.pack(self.scope_id, 0))

    @classmethod
    def decode(cls, b: bytes, families=FAMS_ALL) -> "SockAddr":
        return _sockaddr(_exact(b, SOCKADDR_SIZE, "address"), 0, families)


def _sockaddr(b: bytes, off: int, families) -> SockAddr:
    (family,) = _SA_HEAD.unpack_from(b, off)
    port, flowinfo = _SA_NET.unpack_from(b, off + 2)
    raw = b[off + 8:off + 24]
    scope_id, pad = _SA_TAIL.unpack_from(b, off + 24)
    if family not in families:
        _fail("address family not allowed")
    if pad:
        _fail("address padding not zero")
    if family == AF_UNSPEC:
        if port or flowinfo or scope_id or any(raw):
            _fail("address unused bytes not zero")
        return SockAddr()
    if family == AF_INET:
        if flowinfo or scope_id or any(raw[4:]):
            _fail("address unused bytes not zero")
        return SockAddr(ipaddress.IPv4Address(raw[:4]), port)
    return SockAddr(ipaddress.IPv6Address(raw), port, flowinfo, scope_id)


# ---- rings and out-of-line buffers --------------------------------------------------------------
_RINGS = struct.Struct("<IIBB6s")
_OOL = struct.Struct("<II")


@dataclass(frozen=True)
class Rings:
    """struct mw_rings: a socket's two byte rings in the data area."""

    tx_off: int
    rx_off: int
    tx_order: int
    rx_order: int

    def encode(self) -> bytes:
        return _RINGS.pack(self.tx_off, self.rx_off, self.tx_order, self.rx_order, bytes(6))


def _ring(off: int, order: int, lim: Limits) -> None:
    if not RING_ORDER_MIN <= order <= RING_ORDER_MAX:
        _fail("ring order out of range")
    if off % PAGE_SIZE:
        _fail("ring offset not page aligned")
    if off + (1 << order) > lim.data_bytes:
        _fail("ring outside the data area")


def _rings(b: bytes, off: int, lim: Limits) -> Rings:
    tx_off, rx_off, tx_order, rx_order, pad = _RINGS.unpack_from(b, off)
    _ring(tx_off, tx_order, lim)
    _ring(rx_off, rx_order, lim)
    if any(pad):
        _fail("body padding not zero")
    return Rings(tx_off, rx_off, tx_order, rx_order)


@dataclass(frozen=True)
class Ool:
    """struct mw_ool: bytes of the data area named by offset and length."""

    off: int
    len: int

    def encode(self) -> bytes:
        return _OOL.pack(self.off, self.len)


def _ool(b: bytes, off: int, lim: Limits) -> Ool:
    o_off, o_len = _OOL.unpack_from(b, off)
    if o_len > OOL_MAX:
        _fail("out-of-line buffer too long")
    if o_off % OOL_ALIGN:
        _fail("out-of-line buffer not aligned")
    if o_off + o_len > lim.data_bytes:
        _fail("out-of-line buffer outside the data area")
    return Ool(o_off, o_len)


def _encode_ool(ool: "Ool | None") -> bytes:
    return ool.encode() if ool is not None else bytes(8)


# ---- requests -----------------------------------------------------------------------------------
_REQ_HDR = struct.Struct("<IHHII")          # id, cmd, flags, sock, pad
_B = _REQ_HDR.size                          # offset of the request body: 16


class _Req:
    cmd: ClassVar[int]

    def _body(self) -> bytes:
        return b""

    def encode(self) -> bytes:
        """The 128-byte command slot of this request."""
        sock = getattr(self, "sock", 0)     # GETADDRINFO, GETNAMEINFO, PING carry none
        return _slot(_REQ_HDR.pack(self.id, self.cmd, 0, sock, 0) + self._body())


_SOCKET = struct.Struct("<HHi")


@dataclass(frozen=True)
class Socket(_Req):
    cmd: ClassVar[int] = CMD_SOCKET
    id: int
    sock: int
    family: int
    type: int
    protocol: int
    rings: Rings

    def _body(self):
        return _SOCKET.pack(self.family, self.type, self.protocol) + self.rings.encode()


@dataclass(frozen=True)
class Connect(_Req):
    cmd: ClassVar[int] = CMD_CONNECT
    id: int
    sock: int
    addr: SockAddr

    def _body(self):
        return self.addr.encode()


@dataclass(frozen=True)
class Bind(_Req):
    cmd: ClassVar[int] = CMD_BIND
    id: int
    sock: int
    addr: SockAddr

    def _body(self):
        return self.addr.encode()


_I32_PAD = struct.Struct("<iI")


@dataclass(frozen=True)
class Listen(_Req):
    cmd: ClassVar[int] = CMD_LISTEN
    id: int
    sock: int
    backlog: int

    def _body(self):
        return _I32_PAD.pack(self.backlog, 0)


_ACCEPT = struct.Struct("<II")


@dataclass(frozen=True)
class Accept(_Req):
    cmd: ClassVar[int] = CMD_ACCEPT
    id: int
    sock: int
    new_sock: int
    rings: Rings

    def _body(self):
        return _ACCEPT.pack(self.new_sock, 0) + self.rings.encode()


@dataclass(frozen=True)
class Shutdown(_Req):
    cmd: ClassVar[int] = CMD_SHUTDOWN
    id: int
    sock: int
    how: int

    def _body(self):
        return _I32_PAD.pack(self.how, 0)


@dataclass(frozen=True)
class Close(_Req):
    cmd: ClassVar[int] = CMD_CLOSE
    id: int
    sock: int


_SOCKOPT = struct.Struct("<iiII")           # level, name, len, pad; then ool, then val[88]


@dataclass(frozen=True)
class GetSockOpt(_Req):
    """optlen is the room for the value; ool is given when optlen > OPT_INLINE_MAX."""

    cmd: ClassVar[int] = CMD_GETSOCKOPT
    id: int
    sock: int
    level: int
    name: int
    optlen: int
    ool: "Ool | None" = None

    def _body(self):
        return (_SOCKOPT.pack(self.level, self.name, self.optlen, 0) + _encode_ool(self.ool)
                + bytes(OPT_INLINE_MAX))


@dataclass(frozen=True)
class SetSockOpt(_Req):
    """The value travels inline (value, at most OPT_INLINE_MAX bytes) or out of line (ool,
    whose len is the value's length)."""

    cmd: ClassVar[int] = CMD_SETSOCKOPT
    id: int
    sock: int
    level: int
    name: int
    value: bytes = b""
    ool: "Ool | None" = None

    @property
    def optlen(self) -> int:
        return self.ool.len if self.ool is not None else len(self.value)

    def _body(self):
        return (_SOCKOPT.pack(self.level, self.name, self.optlen, 0) + _encode_ool(self.ool)
                + self.value.ljust(OPT_INLINE_MAX, b"\0"))


@dataclass(frozen=True)
class GetSockName(_Req):
    cmd: ClassVar[int] = CMD_GETSOCKNAME
    id: int
    sock: int


@dataclass(frozen=True)
class GetPeerName(_Req):
    cmd: ClassVar[int] = CMD_GETPEERNAME
    id: int
    sock: int


_GAI = struct.Struct("<HHiiiiI")            # after the ool


@dataclass(frozen=True)
class GetAddrInfo(_Req):
    """The query (GaiQuery) is in ool; the INS overwrites it with the answer (AiAnswer)."""

    cmd: ClassVar[int] = CMD_GETADDRINFO
    id: int
    ool: Ool
    node_len: int
    service_len: int
    flags: int = 0
    family: int = AF_UNSPEC
    socktype: int = 0
    protocol: int = 0

    def _body(self):
        return self.ool.encode() + _GAI.pack(self.node_len, self.service_len, self.flags,
                                             self.family, self.socktype, self.protocol, 0)


@dataclass(frozen=True)
class GetNameInfo(_Req):
    """The answer (NiAnswer) is written into ool."""

    cmd: ClassVar[int] = CMD_GETNAMEINFO
    id: int
    ool: Ool
    addr: SockAddr
    flags: int = 0

    def _body(self):
        return self.ool.encode() + self.addr.encode() + _I32_PAD.pack(self.flags, 0)


@dataclass(frozen=True)
class Ioctl(_Req):
    cmd: ClassVar[int] = CMD_IOCTL
    id: int
    sock: int
    request: int

    def _body(self):
        return struct.pack("<II", self.request, 0) + bytes(8)


@dataclass(frozen=True)
class Ping(_Req):
    cmd: ClassVar[int] = CMD_PING
    id: int
    arg: int

    def _body(self):
        return struct.pack("<Q", self.arg)


@dataclass(frozen=True)
class UnknownCommand:
    """A well-formed request whose cmd this version does not know. It is not a violation: the
    INS answers Response(id, cmd, sock, -EOPNOTSUPP). Its body is not looked at."""

    id: int
    cmd: int
    sock: int

    def encode(self) -> bytes:
        return _REQ_HDR.pack(self.id, self.cmd, 0, self.sock, 0).ljust(SLOT_SIZE, b"\0")


Request = Union[Socket, Connect, Bind, Listen, Accept, Shutdown, Close, GetSockOpt, SetSockOpt,
                GetSockName, GetPeerName, GetAddrInfo, GetNameInfo, Ioctl, Ping, UnknownCommand]


def _tail(b: bytes, start: int) -> None:
    if any(b[start:SLOT_SIZE]):
        _fail("unused body bytes not zero")


def _sockopt(b: bytes, id_: int, sock: int, is_set: bool, lim: Limits):
    level, name, optlen, pad = _SOCKOPT.unpack_from(b, _B)
    ool_off, ool_len = _OOL.unpack_from(b, _B + 16)
    val = _B + 24
    if pad:
        _fail("body padding not zero")
    if optlen > OOL_MAX:
        _fail("option length too long")
    if optlen <= OPT_INLINE_MAX:
        used = optlen if is_set else 0
        if ool_off or ool_len:
            _fail("inline option with an out-of-line buffer")
        _tail(b, val + used)
        if is_set:
            return SetSockOpt(id_, sock, level, name, b[val:val + optlen])
        return GetSockOpt(id_, sock, level, name, optlen)
    ool = _ool(b, _B + 16, lim)
    if ool.len != optlen:
        _fail("out-of-line length does not match option length")
    _tail(b, val)
    if is_set:
        return SetSockOpt(id_, sock, level, name, b"", ool)
    return GetSockOpt(id_, sock, level, name, optlen, ool)


def _getaddrinfo(b: bytes, id_: int, lim: Limits) -> GetAddrInfo:
    ool = _ool(b, _B, lim)
    node_len, service_len, flags, family, socktype, protocol, pad = _GAI.unpack_from(b, _B + 8)
    if node_len > GAI_NODE_MAX:
        _fail("node too long")
    if service_len > GAI_SERVICE_MAX:
        _fail("service too long")
    if ool.len < 8 or ool.len < node_len + service_len:
        _fail("out-of-line buffer too short")
    if flags & ~AI_FLAGS_ALL:
        _fail("addrinfo flags not supported")
    if family not in (AF_UNSPEC, AF_INET, AF_INET6):
        _fail("addrinfo family not supported")
    if socktype not in (0, SOCK_STREAM, SOCK_DGRAM):
        _fail("addrinfo socktype not supported")
    if protocol not in (0, IPPROTO_TCP, IPPROTO_UDP):
        _fail("addrinfo protocol not supported")
    if pad:
        _fail("body padding not zero")
    _tail(b, _B + 8 + _GAI.size)
    return GetAddrInfo(id_, ool, node_len, service_len, flags, family, socktype, protocol)


def _getnameinfo(b: bytes, id_: int, lim: Limits) -> GetNameInfo:
    ool = _ool(b, _B, lim)
    if ool.len < 8:
        _fail("out-of-line buffer too short")
    addr = _sockaddr(b, _B + 8, FAMS_IP)
    flags, pad = _I32_PAD.unpack_from(b, _B + 40)
    if flags & ~NI_FLAGS_ALL:
        _fail("nameinfo flags not supported")
    if pad:
        _fail("body padding not zero")
    _tail(b, _B + 48)
    return GetNameInfo(id_, ool, addr, flags)


def decode_request(b: bytes, limits: Limits = _DEFAULT_LIMITS) -> Request:
    """Decode and check one command slot as the INS does. @raise ProtocolError"""
    b = _exact(b, SLOT_SIZE, "request")
    id_, cmd, flags, sock, pad = _REQ_HDR.unpack_from(b, 0)
    if flags:
        _fail("request flags not zero")
    if pad:
        _fail("request padding not zero")
    if cmd not in CMD_NAMES:
        return UnknownCommand(id_, cmd, sock)
    if cmd not in _NO_SOCK_CMDS and sock >= limits.sock_slots:
        _fail("socket slot out of range")
    if cmd in _NO_SOCK_CMDS and sock:
        _fail("socket slot not zero for a command without socket")

    if cmd == CMD_SOCKET:
        family, type_, protocol = _SOCKET.unpack_from(b, _B)
        if family not in (AF_INET, AF_INET6):
            _fail("socket family not supported")
        if type_ not in (SOCK_STREAM, SOCK_DGRAM):
            _fail("socket type not supported")
        if protocol not in (0, IPPROTO_TCP if type_ == SOCK_STREAM else IPPROTO_UDP):
            _fail("socket protocol does not match its type")
        msg = Socket(id_, sock, family, type_, protocol, _rings(b, _B + 8, limits))
        _tail(b, _B + 24)
    elif cmd in (CMD_CONNECT, CMD_BIND):
        addr = _sockaddr(b, _B, FAMS_ALL if cmd == CMD_CONNECT else FAMS_IP)
        msg = (Connect if cmd == CMD_CONNECT else Bind)(id_, sock, addr)
        _tail(b, _B + 32)
    elif cmd == CMD_LISTEN:
        backlog, bpad = _I32_PAD.unpack_from(b, _B)
        if bpad:
            _fail("body padding not zero")
        msg = Listen(id_, sock, backlog)
        _tail(b, _B + 8)
    elif cmd == CMD_ACCEPT:
        new_sock, aflags = _ACCEPT.unpack_from(b, _B)
        if new_sock >= limits.sock_slots:
            _fail("socket slot out of range")
        if new_sock == sock:
            _fail("accept into the listening socket slot")
        if aflags:
            _fail("accept flags not zero")
        msg = Accept(id_, sock, new_sock, _rings(b, _B + 8, limits))
        _tail(b, _B + 24)
    elif cmd == CMD_SHUTDOWN:
        how, spad = _I32_PAD.unpack_from(b, _B)
        if not 0 <= how <= 2:
            _fail("shutdown how out of range")
        if spad:
            _fail("body padding not zero")
        msg = Shutdown(id_, sock, how)
        _tail(b, _B + 8)
    elif cmd in (CMD_GETSOCKOPT, CMD_SETSOCKOPT):
        msg = _sockopt(b, id_, sock, cmd == CMD_SETSOCKOPT, limits)
    elif cmd == CMD_GETADDRINFO:
        msg = _getaddrinfo(b, id_, limits)
    elif cmd == CMD_GETNAMEINFO:
        msg = _getnameinfo(b, id_, limits)
    elif cmd == CMD_IOCTL:
        request, ipad, ool_off, ool_len = struct.unpack_from("<IIII", b, _B)
        if not IOCTL_SIOCATMARK <= request <= IOCTL_SIOCINQ:
            _fail("ioctl request not supported")
        if ipad:
            _fail("body padding not zero")
        if ool_off or ool_len:
            _fail("ioctl buffer not zero")
        msg = Ioctl(id_, sock, request)
        _tail(b, _B + 16)
    elif cmd == CMD_PING:
        msg = Ping(id_, struct.unpack_from("<Q", b, _B)[0])
        _tail(b, _B + 8)
    else:                                   # CLOSE, GETSOCKNAME, GETPEERNAME
        msg = {CMD_CLOSE: Close, CMD_GETSOCKNAME: GetSockName,
               CMD_GETPEERNAME: GetPeerName}[cmd](id_, sock)
        _tail(b, _B)
    return msg


# ---- responses ----------------------------------------------------------------------------------
_RSP_HDR = struct.Struct("<IHHIiII")        # id, cmd, flags, sock, ret, pad[2]
_RB = _RSP_HDR.size                         # offset of the response body: 24
_RSP_SOCKOPT = struct.Struct("<II")         # len, pad; then val[88]
_RSP_GAI = struct.Struct("<iiII")           # status, sys_errno, len, pad


@dataclass(frozen=True)
class OptValue:
    """GETSOCKOPT's answer: len bytes of value, inline (value) when len <= OPT_INLINE_MAX,
    else in the request's out-of-line buffer (value empty)."""

    len: int
    value: bytes = b""


@dataclass(frozen=True)
class GaiResult:
    """GETADDRINFO / GETNAMEINFO's answer: resolver status (0 or EAI_*), the errno behind
    EAI_SYSTEM, and the bytes of answer in the out-of-line buffer."""

    status: int = 0
    sys_errno: int = 0
    len: int = 0


@dataclass(frozen=True)
class PingEcho:
    arg: int


@dataclass(frozen=True)
class Response:
    """One response. body: SockAddr (CONNECT, BIND, ACCEPT, GETSOCKNAME, GETPEERNAME), OptValue
    (GETSOCKOPT), GaiResult (GETADDRINFO, GETNAMEINFO), PingEcho (PING) when ret >= 0; else
    None."""

    id: int
    cmd: int
    sock: int
    ret: int
    body: Union[SockAddr, OptValue, GaiResult, PingEcho, None] = None

    def encode(self) -> bytes:
        body = self.body
        if body is None:
            raw = b""
        elif isinstance(body, SockAddr):
            raw = body.encode()
        elif isinstance(body, OptValue):
            if len(body.value) > OPT_INLINE_MAX:
                raise ValueError(f"an inline option value is at most {OPT_INLINE_MAX} bytes")
            raw = _RSP_SOCKOPT.pack(body.len, 0) + body.value
        elif isinstance(body, GaiResult):
            raw = _RSP_GAI.pack(body.status, body.sys_errno, body.len, 0)
        else:
            raw = struct.pack("<Q", body.arg)
        return _slot(_RSP_HDR.pack(self.id, self.cmd, 0, self.sock, self.ret, 0, 0) + raw)


def decode_response(b: bytes, limits: Limits = _DEFAULT_LIMITS) -> Response:
    """Decode and check one command slot as the frontend does. @raise ProtocolError"""
    b = _exact(b, SLOT_SIZE, "response")
    id_, cmd, flags, sock, ret, pad0, pad1 = _RSP_HDR.unpack_from(b, 0)
    if flags:
        _fail("response flags not zero")
    if pad0 or pad1:
        _fail("response padding not zero")
    if cmd not in CMD_NAMES:
        _fail("response command unknown")
    if cmd not in _NO_SOCK_CMDS and sock >= limits.sock_slots:
        _fail("socket slot out of range")
    if cmd in _NO_SOCK_CMDS and sock:
        _fail("socket slot not zero for a command without socket")
    if ret < -ERRNO_MAX:
        _fail("error code out of range")
    if ret > 0 and cmd != CMD_IOCTL:
        _fail("positive result for a command without one")
    if ret < 0:
        if any(b[_RB:]):
            _fail("error response with a body")
        return Response(id_, cmd, sock, ret)

    body = None
    used = 0
    if cmd in _ADDR_RSP_CMDS:
        body = _sockaddr(b, _RB, FAMS_IP)
        used = SOCKADDR_SIZE
    elif cmd == CMD_GETSOCKOPT:
        optlen, opad = _RSP_SOCKOPT.unpack_from(b, _RB)
        if opad:
            _fail("body padding not zero")
        if optlen > OOL_MAX:
            _fail("option length too long")
        inline = optlen if optlen <= OPT_INLINE_MAX else 0
        used = 8 + inline
        body = OptValue(optlen, b[_RB + 8:_RB + 8 + inline])
    elif cmd in (CMD_GETADDRINFO, CMD_GETNAMEINFO):
        status, sys_errno, alen, gpad = _RSP_GAI.unpack_from(b, _RB)
        if status > 0 or status < EAI_MIN:
            _fail("resolver status out of range")
        if (not -ERRNO_MAX <= sys_errno <= -1) if status == EAI_SYSTEM else sys_errno != 0:
            _fail("system errno does not match status")
        if (not 8 <= alen <= OOL_MAX) if status == 0 else alen != 0:
            _fail("answer length out of range")
        if gpad:
            _fail("body padding not zero")
        body = GaiResult(status, sys_errno, alen)
        used = _RSP_GAI.size
    elif cmd == CMD_PING:
        body = PingEcho(struct.unpack_from("<Q", b, _RB)[0])
        used = 8
    if any(b[_RB + used:]):
        _fail("unused body bytes not zero")
    return Response(id_, cmd, sock, ret, body)


def check_response_matches(rsp: Response, req: Request) -> None:
    """Check that a valid response answers `req`, the outstanding request of the same id
    (the frontend's own copy). @raise ProtocolError"""
    if rsp.id != req.id or rsp.cmd != req.cmd or rsp.sock != getattr(req, "sock", 0):
        _fail("response does not match its request")
    if rsp.ret < 0:
        return
    if isinstance(req, GetSockOpt) and rsp.body.len > req.optlen:
        _fail("option longer than the room given")
    if isinstance(req, (GetAddrInfo, GetNameInfo)) and rsp.body.len > req.ool.len:
        _fail("answer longer than its buffer")


# ---- events -------------------------------------------------------------------------------------
_EVENT = struct.Struct("<IHHQ")


@dataclass(frozen=True)
class Event:
    """One hint record of an event queue; arg is informational only (the new index)."""

    sock: int
    type: int
    arg: int = 0

    def encode(self) -> bytes:
        return _EVENT.pack(self.sock, self.type, 0, self.arg)


def decode_event(b: bytes, limits: Limits = _DEFAULT_LIMITS, *, from_ins: bool) -> Event:
    """Decode and check an event record. from_ins: read from the INS -> frontend queue."""
    sock, type_, flags, arg = _EVENT.unpack(_exact(b, EVENT_SIZE, "event"))
    if flags:
        _fail("event flags not zero")
    if type_ not in (EV_DATA, EV_SPACE, EV_STATE):
        _fail("event type unknown")
    if type_ == EV_STATE and not from_ins:
        _fail("state event from the frontend")
    if sock >= limits.sock_slots:
        _fail("socket slot out of range")
    return Event(sock, type_, arg)


# ---- datagram records ---------------------------------------------------------------------------
_DGRAM = struct.Struct("<II")


def dgram_record_size(payload_len: int) -> int:
    """Bytes a datagram record of payload_len takes in a byte ring: header, payload, padding."""
    return DGRAM_HDR_SIZE + -(-payload_len // DGRAM_ALIGN) * DGRAM_ALIGN


@dataclass(frozen=True)
class DgramHeader:
    """struct mw_dgram_hdr: payload length and the destination (tx) or source (rx); a tx
    record with SockAddr() goes to the connected peer."""

    len: int
    addr: SockAddr = SockAddr()

    def encode(self) -> bytes:
        return _DGRAM.pack(self.len, 0) + self.addr.encode()


def decode_dgram_header(b: bytes, ring_size: int, *, from_ins: bool) -> DgramHeader:
    """Decode and check a record header read from a byte ring of ring_size bytes."""
    b = _exact(b, DGRAM_HDR_SIZE, "datagram header")
    length, flags = _DGRAM.unpack_from(b, 0)
    if flags:
        _fail("datagram flags not zero")
    if length > DGRAM_MAX:
        _fail("datagram too long")
    if dgram_record_size(length) > ring_size:
        _fail("datagram record larger than its ring")
    return DgramHeader(length, _sockaddr(b, 8, FAMS_IP if from_ins else FAMS_ALL))


# ---- out-of-line query and answers --------------------------------------------------------------
def _no_nul(raw: bytes) -> None:
    if b"\0" in raw:
        _fail("name contains a NUL byte")


@dataclass(frozen=True)
class GaiQuery:
    """GETADDRINFO's query: node and service without terminators; None (or empty) is NULL."""

    node: "bytes | None" = None
    service: "bytes | None" = None

    def encode(self) -> tuple[bytes, int, int]:
        """@return (blob for the out-of-line buffer, node_len, service_len)"""
        node, service = self.node or b"", self.service or b""
        return node + service, len(node), len(service)


def decode_gai_query(blob: bytes, node_len: int, service_len: int) -> GaiQuery:
    """Check the query the INS copied out of the out-of-line buffer (len(blob) bytes)."""
    if node_len > GAI_NODE_MAX:
        _fail("node too long")
    if service_len > GAI_SERVICE_MAX:
        _fail("service too long")
    if node_len + service_len > len(blob):
        _fail("query longer than its buffer")
    _no_nul(blob[:node_len + service_len])
    return GaiQuery(bytes(blob[:node_len]) or None,
                    bytes(blob[node_len:node_len + service_len]) or None)


_AI_HDR = struct.Struct("<II")              # count, canon_len
_AI_ENTRY = struct.Struct("<iiiI")          # family, socktype, protocol, pad; then the address
_AI_ENTRY_SIZE = _AI_ENTRY.size + SOCKADDR_SIZE


@dataclass(frozen=True)
class AiEntry:
    """One struct addrinfo of an answer; its family is its address's."""

    socktype: int
    protocol: int
    addr: SockAddr

    def encode(self) -> bytes:
        return _AI_ENTRY.pack(self.addr.family, self.socktype, self.protocol, 0) + self.addr.encode()


@dataclass(frozen=True)
class AiAnswer:
    """GETADDRINFO's answer: entries in glibc's order, and the canonical name (may be empty)."""

    entries: tuple = ()
    canonname: bytes = b""

    def encode(self) -> bytes:
        return (_AI_HDR.pack(len(self.entries), len(self.canonname))
                + b"".join(e.encode() for e in self.entries) + self.canonname)


def decode_ai_answer(blob: bytes) -> AiAnswer:
    """Check the answer the frontend copied out of the out-of-line buffer (rsp len bytes)."""
    blob = bytes(blob)
    if len(blob) < _AI_HDR.size:
        _fail("answer shorter than its header")
    count, canon_len = _AI_HDR.unpack_from(blob, 0)
    if count > AI_ENTRIES_MAX:
        _fail("too many addrinfo entries")
    if canon_len > AI_CANON_MAX:
        _fail("canonical name too long")
    if _AI_HDR.size + count * _AI_ENTRY_SIZE + canon_len != len(blob):
        _fail("answer length does not match its contents")
    entries = []
    for i in range(count):
        off = _AI_HDR.size + i * _AI_ENTRY_SIZE
        family, socktype, protocol, pad = _AI_ENTRY.unpack_from(blob, off)
        if family not in (AF_INET, AF_INET6):
            _fail("addrinfo entry family not supported")
        if socktype not in (SOCK_STREAM, SOCK_DGRAM, SOCK_RAW):
            _fail("addrinfo entry socktype not supported")
        if protocol not in (0, IPPROTO_TCP, IPPROTO_UDP):
            _fail("addrinfo entry protocol not supported")
        if pad:
            _fail("addrinfo entry padding not zero")
        if struct.unpack_from("<H", blob, off + _AI_ENTRY.size)[0] != family:
            _fail("addrinfo entry address family mismatch")
        entries.append(AiEntry(socktype, protocol, _sockaddr(blob, off + _AI_ENTRY.size, FAMS_IP)))
    canon = blob[len(blob) - canon_len:]
    _no_nul(canon)
    return AiAnswer(tuple(entries), canon)


_NI_HDR = struct.Struct("<II")              # host_len, serv_len


@dataclass(frozen=True)
class NiAnswer:
    """GETNAMEINFO's answer: host and service, without terminators."""

    host: bytes = b""
    serv: bytes = b""

    def encode(self) -> bytes:
        return _NI_HDR.pack(len(self.host), len(self.serv)) + self.host + self.serv


def decode_ni_answer(blob: bytes) -> NiAnswer:
    """Check the answer the frontend copied out of the out-of-line buffer (rsp len bytes)."""
    blob = bytes(blob)
    if len(blob) < _NI_HDR.size:
        _fail("answer shorter than its header")
    host_len, serv_len = _NI_HDR.unpack_from(blob, 0)
    if host_len > NI_HOST_MAX:
        _fail("host name too long")
    if serv_len > NI_SERV_MAX:
        _fail("service name too long")
    if _NI_HDR.size + host_len + serv_len != len(blob):
        _fail("answer length does not match its contents")
    _no_nul(blob[_NI_HDR.size:])
    return NiAnswer(blob[8:8 + host_len], blob[8 + host_len:])


# ---- shared structures, for inspection ----------------------------------------------------------
_CTRL = struct.Struct("<6I40x6I40x")


@dataclass(frozen=True)
class CtrlPage:
    """The indices of the control page (page 0), as one snapshot. Written by the frontend:
    req_prod .. bq_event; by the INS: rsp_prod .. fq_event."""

    req_prod: int = 0
    rsp_event: int = 0
    fq_prod: int = 0
    fq_overflow: int = 0
    bq_cons: int = 0
    bq_event: int = 0
    rsp_prod: int = 0
    req_event: int = 0
    bq_prod: int = 0
    bq_overflow: int = 0
    fq_cons: int = 0
    fq_event: int = 0

    @classmethod
    def decode(cls, b: bytes) -> "CtrlPage":
        """From the first 128 bytes (or more) of a copy of page 0."""
        return cls(*_CTRL.unpack_from(bytes(b[:_CTRL.size]).ljust(_CTRL.size, b"\0")))

    def encode(self) -> bytes:
        return _CTRL.pack(*(getattr(self, f) for f in self.__dataclass_fields__))


_SOCK = struct.Struct("<4I48x4IIi40x")


@dataclass(frozen=True)
class SockShared:
    """One 128-byte socket table entry. Written by the frontend: tx_prod .. rx_prod_event; by
    the INS: rx_prod .. error."""

    tx_prod: int = 0
    tx_cons_event: int = 0
    rx_cons: int = 0
    rx_prod_event: int = 0
    rx_prod: int = 0
    rx_cons_event: int = 0
    tx_cons: int = 0
    tx_prod_event: int = 0
    rx_flags: int = 0
    error: int = 0

    @classmethod
    def decode(cls, b: bytes) -> "SockShared":
        return cls(*_SOCK.unpack(_exact(b, _SOCK.size, "socket entry")))

    def encode(self) -> bytes:
        return _SOCK.pack(*(getattr(self, f) for f in self.__dataclass_fields__))
