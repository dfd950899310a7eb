"""Property tests: the Python codec (mwcomms.tools.codec) and the C codec (xen/codec.c) agree on
every byte of every message of protocol v1.

Three properties per message kind:
  - Python -> C -> Python: a message encoded by Python is valid for C, C's normalizer (decode
    field by field, re-encode with its builders) gives back the same 128 bytes, and Python
    decodes them to the same message.
  - C -> Python -> C: C's builder, given the message's fields one by one, writes exactly the
    bytes Python encodes; Python decodes them to those fields. With every field drawn at
    random, any disagreement on an offset, a width or a byte order shows here.
  - Differential rejection: a valid message with random bytes corrupted is either valid for
    both codecs (and then both normalize it to the same bytes, which are the corrupted bytes
    themselves: one encoding per message) or rejected by both, for the same reason.
"""
import errno

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mwcomms.tools import codec as C

native = pytest.importorskip("mwcomms._native", reason="the C extension mwcomms._native is not built")
ffi, lib = native.ffi, native.lib

PROPS = settings(max_examples=1000, derandomize=True, database=None, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

LIM = C.Limits(sock_slots=1024, data_pages=8192)        # 32 MiB of data area
C_LIM = ffi.new("struct mw_limits *", {"sock_slots": LIM.sock_slots, "data_pages": LIM.data_pages})

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
i32 = st.integers(-(1 << 31), (1 << 31) - 1)
u64 = st.integers(0, (1 << 64) - 1)
ids = u32
socks = st.integers(0, LIM.sock_slots - 1)


# ---- strategies of valid messages --------------------------------------------------------------
def sockaddrs(families=C.FAMS_ALL):
    options = []
    if C.AF_UNSPEC in families:
        options.append(st.just(C.SockAddr()))
    if C.AF_INET in families:
        options.append(st.builds(C.SockAddr, st.ip_addresses(v=4), u16))
    if C.AF_INET6 in families:
        options.append(st.builds(C.SockAddr, st.ip_addresses(v=6), u16, u32, u32))
    return st.one_of(options)


@st.composite
def rings(draw):
    def one():
        order = draw(st.integers(C.RING_ORDER_MIN, C.RING_ORDER_MAX))
        pages = LIM.data_pages - (1 << (order - 12))
        return draw(st.integers(0, pages)) * C.PAGE_SIZE, order
    (tx_off, tx_order), (rx_off, rx_order) = one(), one()
    return C.Rings(tx_off, rx_off, tx_order, rx_order)


@st.composite
def ools(draw, min_len=0, max_len=C.OOL_MAX):
    length = draw(st.integers(min_len, max_len))
    slots = (LIM.data_bytes - length) // C.OOL_ALIGN
    return C.Ool(draw(st.integers(0, slots)) * C.OOL_ALIGN, length)


@st.composite
def sockopt_reqs(draw, get):
    id_, sock, level, name = draw(ids), draw(socks), draw(i32), draw(i32)
    inline = draw(st.booleans())
    if get:
        if inline:
            return C.GetSockOpt(id_, sock, level, name, draw(st.integers(0, C.OPT_INLINE_MAX)))
        ool = draw(ools(C.OPT_INLINE_MAX + 1))
        return C.GetSockOpt(id_, sock, level, name, ool.len, ool)
    if inline:
        return C.SetSockOpt(id_, sock, level, name, draw(st.binary(max_size=C.OPT_INLINE_MAX)))
    return C.SetSockOpt(id_, sock, level, name, b"", draw(ools(C.OPT_INLINE_MAX + 1)))


@st.composite
def getaddrinfo_reqs(draw):
    node_len = draw(st.integers(0, C.GAI_NODE_MAX))
    service_len = draw(st.integers(0, C.GAI_SERVICE_MAX))
    ool = draw(ools(max(8, node_len + service_len)))
    flags = draw(st.integers(0, C.AI_FLAGS_ALL)) & C.AI_FLAGS_ALL
    return C.GetAddrInfo(draw(ids), ool, node_len, service_len, flags,
                         draw(st.sampled_from([0, 2, 10])), draw(st.sampled_from([0, 1, 2])),
                         draw(st.sampled_from([0, 6, 17])))


@st.composite
def socket_reqs(draw):
    type_ = draw(st.sampled_from([C.SOCK_STREAM, C.SOCK_DGRAM]))
    proto = draw(st.sampled_from([0, C.IPPROTO_TCP if type_ == C.SOCK_STREAM else C.IPPROTO_UDP]))
    return C.Socket(draw(ids), draw(socks), draw(st.sampled_from([2, 10])), type_, proto,
                    draw(rings()))


@st.composite
def accept_reqs(draw):
    sock = draw(socks)
    new_sock = draw(socks.filter(lambda s: s != sock))
    return C.Accept(draw(ids), sock, new_sock, draw(rings()))


requests = st.one_of(
    socket_reqs(),
    st.builds(C.Connect, ids, socks, sockaddrs()),
    st.builds(C.Bind, ids, socks, sockaddrs(C.FAMS_IP)),
    st.builds(C.Listen, ids, socks, i32),
    accept_reqs(),
    st.builds(C.Shutdown, ids, socks, st.integers(0, 2)),
    st.builds(C.Close, ids, socks),
    sockopt_reqs(get=True),
    sockopt_reqs(get=False),
    st.builds(C.GetSockName, ids, socks),
    st.builds(C.GetPeerName, ids, socks),
    getaddrinfo_reqs(),
    st.builds(C.GetNameInfo, ids, ools(8), sockaddrs(C.FAMS_IP),
              st.integers(0, C.NI_FLAGS_ALL)),
    st.builds(C.Ioctl, ids, socks, st.integers(1, 3)),
    st.builds(C.Ping, ids, u64),
)

ALL_CMDS = list(C.CMD_NAMES)
SOCK_CMDS = [c for c in ALL_CMDS if c not in (C.CMD_GETADDRINFO, C.CMD_GETNAMEINFO, C.CMD_PING)]


@st.composite
def responses(draw):
    id_ = draw(ids)
    kind = draw(st.sampled_from(["error", "plain", "ioctl", "addr", "sockopt", "gai", "ping"]))
    if kind == "error":
        cmd = draw(st.sampled_from(ALL_CMDS))
        sock = draw(socks) if cmd in SOCK_CMDS else 0
        return C.Response(id_, cmd, sock, draw(st.integers(-C.ERRNO_MAX, -1)))
    if kind == "plain":
        cmd = draw(st.sampled_from([C.CMD_SOCKET, C.CMD_LISTEN, C.CMD_SHUTDOWN, C.CMD_CLOSE,
                                    C.CMD_SETSOCKOPT, C.CMD_IOCTL]))
        return C.Response(id_, cmd, draw(socks), 0)
    if kind == "ioctl":
        return C.Response(id_, C.CMD_IOCTL, draw(socks), draw(st.integers(0, (1 << 31) - 1)))
    if kind == "addr":
        cmd = draw(st.sampled_from(sorted(C._ADDR_RSP_CMDS)))
        return C.Response(id_, cmd, draw(socks), 0, draw(sockaddrs(C.FAMS_IP)))
    if kind == "sockopt":
        if draw(st.booleans()):
            value = draw(st.binary(max_size=C.OPT_INLINE_MAX))
            body = C.OptValue(len(value), value)
        else:
            body = C.OptValue(draw(st.integers(C.OPT_INLINE_MAX + 1, C.OOL_MAX)))
        return C.Response(id_, C.CMD_GETSOCKOPT, draw(socks), 0, body)
    if kind == "gai":
        cmd = draw(st.sampled_from([C.CMD_GETADDRINFO, C.CMD_GETNAMEINFO]))
        status = draw(st.sampled_from([0, 0, C.EAI_SYSTEM]) | st.integers(C.EAI_MIN, -1))
        if status == 0:
            body = C.GaiResult(0, 0, draw(st.integers(8, C.OOL_MAX)))
        elif status == C.EAI_SYSTEM:
            body = C.GaiResult(status, draw(st.integers(-C.ERRNO_MAX, -1)))
        else:
            body = C.GaiResult(status)
        return C.Response(id_, cmd, 0, 0, body)
    return C.Response(id_, C.CMD_PING, 0, 0, C.PingEcho(draw(u64)))


@st.composite
def events(draw):
    from_ins = draw(st.booleans())
    types = [C.EV_DATA, C.EV_SPACE] + ([C.EV_STATE] if from_ins else [])
    return C.Event(draw(socks), draw(st.sampled_from(types)), draw(u64)), from_ins


@st.composite
def dgrams(draw):
    from_ins = draw(st.booleans())
    ring_size = 1 << draw(st.integers(C.RING_ORDER_MIN, C.RING_ORDER_MAX))
    max_len = min(C.DGRAM_MAX, ring_size - C.DGRAM_HDR_SIZE)
    hdr = C.DgramHeader(draw(st.integers(0, max_len)),
                        draw(sockaddrs(C.FAMS_IP if from_ins else C.FAMS_ALL)))
    return hdr, ring_size, from_ins


names = st.binary(max_size=64).map(lambda b: b.replace(b"\0", b"x"))
ai_entries = st.builds(C.AiEntry, st.sampled_from([1, 2, 3]), st.sampled_from([0, 6, 17]),
                       sockaddrs(C.FAMS_IP))
ai_answers = st.builds(C.AiAnswer, st.lists(ai_entries, max_size=8).map(tuple), names)
ni_answers = st.builds(C.NiAnswer, names, st.binary(max_size=C.NI_SERV_MAX).map(
    lambda b: b.replace(b"\0", b"s")))


# ---- the C side --------------------------------------------------------------------------------
def _buf(n):
    return ffi.new(f"uint8_t[{n}]")


def c_sockaddr(sa):
    out = _buf(32)
    raw = sa.host.packed if sa.host is not None else bytes(16)
    lib.mw_sockaddr_build(out, sa.family, sa.port, raw, sa.flowinfo, sa.scope_id)
    return out


def c_rings(r):
    out = _buf(16)
    lib.mw_rings_build(out, r.tx_off, r.rx_off, r.tx_order, r.rx_order)
    return out


def c_build_request(m):
    """Build m's slot with the C builder of its kind, field by field."""
    r = _buf(128)
    if isinstance(m, C.Socket):
        lib.mw_req_build_socket(r, m.id, m.sock, m.family, m.type, m.protocol, c_rings(m.rings))
    elif isinstance(m, C.Connect):
        lib.mw_req_build_connect(r, m.id, m.sock, c_sockaddr(m.addr))
    elif isinstance(m, C.Bind):
        lib.mw_req_build_bind(r, m.id, m.sock, c_sockaddr(m.addr))
    elif isinstance(m, C.Listen):
        lib.mw_req_build_listen(r, m.id, m.sock, m.backlog)
    elif isinstance(m, C.Accept):
        lib.mw_req_build_accept(r, m.id, m.sock, m.new_sock, c_rings(m.rings))
    elif isinstance(m, C.Shutdown):
        lib.mw_req_build_shutdown(r, m.id, m.sock, m.how)
    elif isinstance(m, C.Close):
        lib.mw_req_build_close(r, m.id, m.sock)
    elif isinstance(m, C.GetSockOpt):
        ool = m.ool or C.Ool(0, 0)
        lib.mw_req_build_getsockopt(r, m.id, m.sock, m.level, m.name, m.optlen, ool.off, ool.len)
    elif isinstance(m, C.SetSockOpt):
        ool = m.ool or C.Ool(0, 0)
        lib.mw_req_build_setsockopt(r, m.id, m.sock, m.level, m.name, m.optlen, ool.off,
                                    ool.len, m.value)
    elif isinstance(m, C.GetSockName):
        lib.mw_req_build_getsockname(r, m.id, m.sock)
    elif isinstance(m, C.GetPeerName):
        lib.mw_req_build_getpeername(r, m.id, m.sock)
    elif isinstance(m, C.GetAddrInfo):
        lib.mw_req_build_getaddrinfo(r, m.id, m.ool.off, m.ool.len, m.node_len, m.service_len,
                                     m.flags, m.family, m.socktype, m.protocol)
    elif isinstance(m, C.GetNameInfo):
        lib.mw_req_build_getnameinfo(r, m.id, m.ool.off, m.ool.len, c_sockaddr(m.addr), m.flags)
    elif isinstance(m, C.Ioctl):
        lib.mw_req_build_ioctl(r, m.id, m.sock, m.request)
    elif isinstance(m, C.Ping):
        lib.mw_req_build_ping(r, m.id, m.arg)
    else:
        raise AssertionError(m)
    return bytes(r)


def c_build_response(m):
    r = _buf(128)
    b = m.body
    if b is None:
        lib.mw_rsp_build(r, m.id, m.cmd, m.sock, m.ret)
    elif isinstance(b, C.SockAddr):
        lib.mw_rsp_build_addr(r, m.id, m.cmd, m.sock, c_sockaddr(b))
    elif isinstance(b, C.OptValue):
        lib.mw_rsp_build_sockopt(r, m.id, m.sock, b.len, b.value)
    elif isinstance(b, C.GaiResult):
        lib.mw_rsp_build_gai(r, m.id, m.cmd, b.status, b.sys_errno, b.len)
    else:
        lib.mw_rsp_build_ping(r, m.id, b.arg)
    return bytes(r)


def c_build_ai_answer(a):
    entries = _buf(48 * max(1, len(a.entries)))
    for i, e in enumerate(a.entries):
        lib.mw_ai_entry_build(entries + 48 * i, e.socktype, e.protocol, c_sockaddr(e.addr))
    out = _buf(C.OOL_MAX)
    n = lib.mw_ai_answer_build(out, C.OOL_MAX, entries, len(a.entries), a.canonname,
                               len(a.canonname))
    assert n >= 0
    return bytes(ffi.buffer(out, n))


def _result(rc, out, n, why):
    """(reason or None, normalized bytes or None) of a C normalizer's outcome."""
    if rc == -errno.EPROTO:
        return ffi.string(why[0]).decode(), None
    assert rc >= 0 or rc == -errno.EOPNOTSUPP, rc
    return None, bytes(ffi.buffer(out, n))


def c_norm_request(b):
    out, why = _buf(128), ffi.new("const char **")
    return _result(lib.mw_req_normalize(b, out, C_LIM, why), out, 128, why)


def c_norm_response(b):
    out, why = _buf(128), ffi.new("const char **")
    return _result(lib.mw_rsp_normalize(b, out, C_LIM, why), out, 128, why)


def c_norm_event(b, from_ins):
    out, why = _buf(16), ffi.new("const char **")
    return _result(lib.mw_event_normalize(b, out, C_LIM, from_ins, why), out, 16, why)


def c_norm_dgram(b, ring_size, from_ins):
    out, why = _buf(40), ffi.new("const char **")
    return _result(lib.mw_dgram_normalize(b, out, ring_size, from_ins, why), out, 40, why)


def c_norm_ai(b):
    out, why = _buf(max(1, len(b))), ffi.new("const char **")
    return _result(lib.mw_ai_answer_normalize(b, len(b), out, why), out, len(b), why)


def c_norm_ni(b):
    out, why = _buf(max(1, len(b))), ffi.new("const char **")
    return _result(lib.mw_ni_answer_normalize(b, len(b), out, why), out, len(b), why)


def py_norm(decode, b):
    try:
        return None, decode(b).encode()
    except C.ProtocolError as e:
        return e.reason, None


def corrupt(data, b):
    """Corrupt 1 to 4 places of b: a random byte, a flipped bit, or an aligned 16- or 32-bit
    word set to a value near a limit. Places fall in the first 64 bytes (header and the
    busiest fields) three times out of four."""
    b = bytearray(b)

    def place(unit):
        end = min(len(b), 64) if data.draw(st.integers(0, 3), label="near") else len(b)
        return data.draw(st.integers(0, max(0, end // unit - 1)), label="place") * unit

    for _ in range(data.draw(st.integers(1, 4), label="places")):
        how = data.draw(st.sampled_from(["byte", "bit", "half", "word"]), label="how")
        if how == "byte":
            b[place(1)] = data.draw(st.integers(0, 255))
        elif how == "bit":
            b[place(1)] ^= 1 << data.draw(st.integers(0, 7))
        elif how == "half" and len(b) >= 2:
            off = place(2)
            value = data.draw(st.sampled_from([0, 1, 2, 3, 10, 15, 16, 31, 32, 64, 65, 1024,
                                               1025, 0x8000, 0xFFFF]))
            b[off:off + 2] = value.to_bytes(2, "little")
        elif len(b) >= 4:
            off = place(4)
            value = data.draw(st.sampled_from([0, 1, 2, 3, 4, 6, 10, 12, 17, 24, 25, 88, 89,
                                               0x100, 1023, 1024, 4096, 65535, 65536,
                                               0x7FFFFFFF, 0x80000000, 0xFFFFF001, 0xFFFFFFFF]))
            b[off:off + 4] = value.to_bytes(4, "little")
    return bytes(b)


# ---- requests ----------------------------------------------------------------------------------
@PROPS
@given(requests)
def test_request_python_to_c_to_python(m):
    b = m.encode()
    assert len(b) == C.SLOT_SIZE
    why, out = c_norm_request(b)
    assert why is None
    assert out == b
    assert C.decode_request(out, LIM) == m


@PROPS
@given(requests)
def test_request_c_to_python_to_c(m):
    b = c_build_request(m)
    assert C.decode_request(b, LIM) == m
    again = C.decode_request(b, LIM).encode()
    assert again == b
    assert c_norm_request(again) == (None, b)


@PROPS
@given(requests, st.data())
def test_request_corruption_rejected_by_both_or_neither(m, data):
    b = corrupt(data, m.encode())
    py, c = py_norm(lambda x: C.decode_request(x, LIM), b), c_norm_request(b)
    assert py == c
    if py[0] is None and C.decode_request(b, LIM).__class__ is not C.UnknownCommand:
        assert py[1] == b, "a valid request has exactly one encoding"


@PROPS
@given(u32, st.integers(C.CMD_PING + 1, 0xFFFF) | st.just(0), u32, st.binary(min_size=112, max_size=112))
def test_unknown_command_is_answered_not_fatal(id_, cmd, sock, body):
    b = C._REQ_HDR.pack(id_, cmd, 0, sock, 0) + body
    msg = C.decode_request(b, LIM)
    assert msg == C.UnknownCommand(id_, cmd, sock)
    out, why = _buf(128), ffi.new("const char **")
    assert lib.mw_req_normalize(b, out, C_LIM, why) == -errno.EOPNOTSUPP
    assert bytes(out) == msg.encode()


# ---- responses ---------------------------------------------------------------------------------
@PROPS
@given(responses())
def test_response_python_to_c_to_python(m):
    b = m.encode()
    assert c_norm_response(b) == (None, b)
    assert C.decode_response(b, LIM) == m


@PROPS
@given(responses())
def test_response_c_to_python_to_c(m):
    b = c_build_response(m)
    assert C.decode_response(b, LIM) == m
    assert C.decode_response(b, LIM).encode() == b
    assert c_norm_response(b) == (None, b)


@PROPS
@given(responses(), st.data())
def test_response_corruption_rejected_by_both_or_neither(m, data):
    b = corrupt(data, m.encode())
    py = py_norm(lambda x: C.decode_response(x, LIM), b)
    assert py == c_norm_response(b)
    if py[0] is None:
        assert py[1] == b


@PROPS
@given(st.sampled_from(["getsockopt", "gai", "gni", "ping"]), st.integers(0, 2 * C.OOL_MAX),
       st.integers(0, 2 * C.OOL_MAX), ids, st.booleans(), st.booleans())
def test_response_matching_agrees(kind, room, answer, id_, same_id, error):
    """mw_rsp_match and check_response_matches accept and refuse the same pairs."""
    room = min(room, C.OOL_MAX)
    ool = C.Ool(0, max(8, room))
    if kind == "getsockopt":
        req = C.GetSockOpt(id_, 5, 1, 2, room, ool if room > C.OPT_INLINE_MAX else None)
        body = C.OptValue(min(answer, C.OOL_MAX), bytes(min(answer, C.OOL_MAX)) if answer <= 88 else b"")
    elif kind in ("gai", "gni"):
        req = (C.GetAddrInfo(id_, ool, 0, 0) if kind == "gai"
               else C.GetNameInfo(id_, ool, C.SockAddr.from_tuple(("1.2.3.4", 5))))
        body = C.GaiResult(0, 0, min(max(8, answer), C.OOL_MAX))
    else:
        req = C.Ping(id_, 7)
        body = C.PingEcho(7)
    rsp = C.Response(id_ if same_id else id_ ^ 1, req.cmd, getattr(req, "sock", 0),
                     -5 if error else 0, None if error else body)
    try:
        C.check_response_matches(rsp, req)
        py = None
    except C.ProtocolError as e:
        py = e.reason
    why = ffi.new("const char **")
    rc = lib.mw_rsp_match(rsp.encode(), req.encode(), why)
    assert py == (ffi.string(why[0]).decode() if rc else None)


# ---- events, datagram headers, addresses -------------------------------------------------------
@PROPS
@given(events(), st.data())
def test_event_round_trips_and_corruption_agrees(ev_dir, data):
    ev, from_ins = ev_dir
    b = ev.encode()
    c = _buf(16)
    lib.mw_event_build(c, ev.sock, ev.type, ev.arg)
    assert bytes(c) == b
    assert C.decode_event(b, LIM, from_ins=from_ins) == ev
    assert c_norm_event(b, from_ins) == (None, b)
    bad = corrupt(data, b)
    py = py_norm(lambda x: C.decode_event(x, LIM, from_ins=from_ins), bad)
    assert py == c_norm_event(bad, from_ins)
    assert py[0] is not None or py[1] == bad


@PROPS
@given(dgrams(), st.data())
def test_dgram_header_round_trips_and_corruption_agrees(d, data):
    hdr, ring_size, from_ins = d
    b = hdr.encode()
    c = _buf(40)
    lib.mw_dgram_build(c, hdr.len, c_sockaddr(hdr.addr))
    assert bytes(c) == b
    assert C.decode_dgram_header(b, ring_size, from_ins=from_ins) == hdr
    assert c_norm_dgram(b, ring_size, from_ins) == (None, b)
    bad = corrupt(data, b)
    py = py_norm(lambda x: C.decode_dgram_header(x, ring_size, from_ins=from_ins), bad)
    assert py == c_norm_dgram(bad, ring_size, from_ins)
    assert py[0] is not None or py[1] == bad


@PROPS
@given(sockaddrs(), st.data())
def test_sockaddr_round_trips_and_corruption_agrees(sa, data):
    b = sa.encode()
    assert bytes(c_sockaddr(sa)) == b
    assert C.SockAddr.decode(b) == sa
    if sa.host is not None:
        assert C.SockAddr.from_tuple(sa.to_tuple()) == sa
    bad = corrupt(data, b)
    families = data.draw(st.sampled_from([C.FAMS_ALL, C.FAMS_IP]))
    mask = (1 if C.AF_UNSPEC in families else 0) | 6
    out, why = _buf(32), ffi.new("const char **")
    c = _result(lib.mw_sockaddr_normalize(bad, out, mask, why), out, 32, why)
    py = py_norm(lambda x: C.SockAddr.decode(x, families), bad)
    assert py == c
    assert py[0] is not None or py[1] == bad


# ---- out-of-line blobs -------------------------------------------------------------------------
@PROPS
@given(ai_answers, st.data())
def test_ai_answer_round_trips_and_corruption_agrees(a, data):
    b = a.encode()
    assert c_build_ai_answer(a) == b
    assert C.decode_ai_answer(b) == a
    assert c_norm_ai(b) == (None, b)
    bad = corrupt(data, b)
    if data.draw(st.booleans(), label="truncate"):
        bad = bad[:data.draw(st.integers(0, len(bad)))]
    py = py_norm(C.decode_ai_answer, bad)
    assert py == c_norm_ai(bad)
    assert py[0] is not None or py[1] == bad


@PROPS
@given(ni_answers, st.data())
def test_ni_answer_round_trips_and_corruption_agrees(a, data):
    b = a.encode()
    out = _buf(C.OOL_MAX)
    n = lib.mw_ni_answer_build(out, C.OOL_MAX, a.host, len(a.host), a.serv, len(a.serv))
    assert bytes(ffi.buffer(out, n)) == b
    assert C.decode_ni_answer(b) == a
    assert c_norm_ni(b) == (None, b)
    bad = corrupt(data, b)
    if data.draw(st.booleans(), label="truncate"):
        bad = bad[:data.draw(st.integers(0, len(bad)))]
    py = py_norm(C.decode_ni_answer, bad)
    assert py == c_norm_ni(bad)
    assert py[0] is not None or py[1] == bad


@PROPS
@given(st.binary(max_size=C.GAI_NODE_MAX + 4), st.binary(max_size=C.GAI_SERVICE_MAX + 4),
       st.integers(0, 8))
def test_gai_query_agrees(node, service, slack):
    """C and Python accept the same queries; a valid one decodes to what was laid out."""
    blob, node_len, service_len = C.GaiQuery(node, service).encode()
    room = max(0, len(blob) - 4 + slack)
    out = _buf(max(1, len(blob)))
    n = lib.mw_gai_query_build(out, len(blob), node, len(node), service, len(service))
    assert bytes(ffi.buffer(out, n)) == blob
    blob = blob[:room]
    why = ffi.new("const char **")
    rc = lib.mw_gai_query_check(blob, len(blob), node_len, service_len, why)
    try:
        q = C.decode_gai_query(blob, node_len, service_len)
        py = None
    except C.ProtocolError as e:
        py = e.reason
    assert py == (ffi.string(why[0]).decode() if rc else None)
    if py is None:
        assert q == C.GaiQuery(node or None, service or None)


# ---- every receiver check, one case each -------------------------------------------------------
def _patch(b, off, fmt, value):
    b = bytearray(b)
    C.struct.pack_into(fmt, b, off, value)
    return bytes(b)


RINGS = C.Rings(0, 4096, 12, 12)
V4 = C.SockAddr.from_tuple(("192.0.2.1", 80))
OOL = C.Ool(64, 512)
DATA_END = LIM.data_bytes

REQ_CASES = [
    (C.Close(1, 2), 6, "<H", 1, "request flags not zero"),
    (C.Close(1, 2), 12, "<I", 1, "request padding not zero"),
    (C.Close(1, 2), 8, "<I", LIM.sock_slots, "socket slot out of range"),
    (C.Ping(1, 2), 8, "<I", 1, "socket slot not zero for a command without socket"),
    (C.Close(1, 2), 16, "<B", 1, "unused body bytes not zero"),
    (C.Ping(1, 2), 24, "<B", 1, "unused body bytes not zero"),
    (C.Bind(1, 2, V4), 16, "<H", 0, "address family not allowed"),
    (C.Connect(1, 2, V4), 16, "<H", 1, "address family not allowed"),
    (C.Bind(1, 2, V4), 44, "<I", 1, "address padding not zero"),
    (C.Bind(1, 2, V4), 40, "<I", 1, "address unused bytes not zero"),
    (C.Bind(1, 2, V4), 28, "<B", 1, "address unused bytes not zero"),
    (C.Connect(1, 2, C.SockAddr()), 18, "<H", 80, "address unused bytes not zero"),
    (C.Socket(1, 2, 2, 1, 0, RINGS), 16, "<H", 1, "socket family not supported"),
    (C.Socket(1, 2, 2, 1, 0, RINGS), 18, "<H", 3, "socket type not supported"),
    (C.Socket(1, 2, 2, 1, 0, RINGS), 20, "<i", 17, "socket protocol does not match its type"),
    (C.Socket(1, 2, 2, 2, 0, RINGS), 20, "<i", 6, "socket protocol does not match its type"),
    (C.Socket(1, 2, 2, 1, 0, RINGS), 32, "<B", 11, "ring order out of range"),
    (C.Socket(1, 2, 2, 1, 0, RINGS), 33, "<B", 25, "ring order out of range"),
    (C.Socket(1, 2, 2, 1, 0, RINGS), 24, "<I", 8, "ring offset not page aligned"),
    (C.Socket(1, 2, 2, 1, 0, RINGS), 28, "<I", DATA_END - 2048, "ring offset not page aligned"),
    (C.Socket(1, 2, 2, 1, 0, RINGS), 24, "<I", DATA_END, "ring outside the data area"),
    (C.Socket(1, 2, 2, 1, 0, RINGS), 28, "<I", 0xFFFFF000, "ring outside the data area"),
    (C.Socket(1, 2, 2, 1, 0, RINGS), 34, "<B", 1, "body padding not zero"),
    (C.Listen(1, 2, 5), 20, "<I", 1, "body padding not zero"),
    (C.Accept(1, 2, 3, RINGS), 16, "<I", 2, "accept into the listening socket slot"),
    (C.Accept(1, 2, 3, RINGS), 16, "<I", LIM.sock_slots, "socket slot out of range"),
    (C.Accept(1, 2, 3, RINGS), 20, "<I", 1, "accept flags not zero"),
    (C.Shutdown(1, 2, 1), 16, "<i", 3, "shutdown how out of range"),
    (C.Shutdown(1, 2, 1), 16, "<i", -1, "shutdown how out of range"),
    (C.Shutdown(1, 2, 1), 20, "<I", 1, "body padding not zero"),
    (C.GetSockOpt(1, 2, 1, 2, 4), 28, "<I", 1, "body padding not zero"),
    (C.GetSockOpt(1, 2, 1, 2, 4), 24, "<I", C.OOL_MAX + 1, "option length too long"),
    (C.GetSockOpt(1, 2, 1, 2, 4), 32, "<I", 8, "inline option with an out-of-line buffer"),
    (C.GetSockOpt(1, 2, 1, 2, 4), 40, "<B", 1, "unused body bytes not zero"),
    (C.SetSockOpt(1, 2, 1, 2, b"abcd"), 44, "<B", 1, "unused body bytes not zero"),
    (C.SetSockOpt(1, 2, 1, 2, b"", C.Ool(8, 200)), 40, "<B", 1, "unused body bytes not zero"),
    (C.GetSockOpt(1, 2, 1, 2, 200, C.Ool(8, 200)), 36, "<I", 208,
     "out-of-line length does not match option length"),
    (C.GetSockOpt(1, 2, 1, 2, 200, C.Ool(8, 200)), 36, "<I", C.OOL_MAX + 8,
     "out-of-line buffer too long"),
    (C.GetAddrInfo(1, OOL, 10, 2), 20, "<I", C.OOL_MAX + 1, "out-of-line buffer too long"),
    (C.GetAddrInfo(1, OOL, 10, 2), 16, "<I", 4, "out-of-line buffer not aligned"),
    (C.GetAddrInfo(1, OOL, 10, 2), 16, "<I", DATA_END - 8,
     "out-of-line buffer outside the data area"),
    (C.GetAddrInfo(1, OOL, 10, 2), 16, "<I", 0xFFFFFFF8,
     "out-of-line buffer outside the data area"),
    (C.GetAddrInfo(1, OOL, 10, 2), 24, "<H", C.GAI_NODE_MAX + 1, "node too long"),
    (C.GetAddrInfo(1, OOL, 10, 2), 26, "<H", C.GAI_SERVICE_MAX + 1, "service too long"),
    (C.GetAddrInfo(1, C.Ool(64, 8), 0, 0), 20, "<I", 7, "out-of-line buffer too short"),
    (C.GetAddrInfo(1, C.Ool(64, 16), 10, 2), 24, "<H", 15, "out-of-line buffer too short"),
    (C.GetAddrInfo(1, OOL, 10, 2), 28, "<i", 0x100, "addrinfo flags not supported"),
    (C.GetAddrInfo(1, OOL, 10, 2), 28, "<i", -1, "addrinfo flags not supported"),
    (C.GetAddrInfo(1, OOL, 10, 2), 32, "<i", 1, "addrinfo family not supported"),
    (C.GetAddrInfo(1, OOL, 10, 2), 36, "<i", 3, "addrinfo socktype not supported"),
    (C.GetAddrInfo(1, OOL, 10, 2), 40, "<i", 1, "addrinfo protocol not supported"),
    (C.GetAddrInfo(1, OOL, 10, 2), 44, "<I", 1, "body padding not zero"),
    (C.GetAddrInfo(1, OOL, 10, 2), 48, "<B", 1, "unused body bytes not zero"),
    (C.GetNameInfo(1, OOL, V4), 20, "<I", 4, "out-of-line buffer too short"),
    (C.GetNameInfo(1, OOL, V4), 24, "<H", 0, "address family not allowed"),
    (C.GetNameInfo(1, OOL, V4), 56, "<i", 0x40, "nameinfo flags not supported"),
    (C.GetNameInfo(1, OOL, V4), 60, "<I", 1, "body padding not zero"),
    (C.Ioctl(1, 2, 1), 16, "<I", 4, "ioctl request not supported"),
    (C.Ioctl(1, 2, 1), 16, "<I", 0, "ioctl request not supported"),
    (C.Ioctl(1, 2, 1), 20, "<I", 1, "body padding not zero"),
    (C.Ioctl(1, 2, 1), 24, "<I", 8, "ioctl buffer not zero"),
]

RSP_CASES = [
    (C.Response(1, C.CMD_CLOSE, 2, 0), 6, "<H", 1, "response flags not zero"),
    (C.Response(1, C.CMD_CLOSE, 2, 0), 16, "<I", 1, "response padding not zero"),
    (C.Response(1, C.CMD_CLOSE, 2, 0), 20, "<I", 1, "response padding not zero"),
    (C.Response(1, C.CMD_CLOSE, 2, 0), 4, "<H", 16, "response command unknown"),
    (C.Response(1, C.CMD_CLOSE, 2, 0), 4, "<H", 0, "response command unknown"),
    (C.Response(1, C.CMD_CLOSE, 2, 0), 8, "<I", LIM.sock_slots, "socket slot out of range"),
    (C.Response(1, C.CMD_PING, 0, 0, C.PingEcho(3)), 8, "<I", 1,
     "socket slot not zero for a command without socket"),
    (C.Response(1, C.CMD_CLOSE, 2, -1), 12, "<i", -C.ERRNO_MAX - 1, "error code out of range"),
    (C.Response(1, C.CMD_CLOSE, 2, 0), 12, "<i", 1, "positive result for a command without one"),
    (C.Response(1, C.CMD_CLOSE, 2, -1), 24, "<B", 1, "error response with a body"),
    (C.Response(1, C.CMD_CLOSE, 2, -1), 127, "<B", 1, "error response with a body"),
    (C.Response(1, C.CMD_CLOSE, 2, 0), 24, "<B", 1, "unused body bytes not zero"),
    (C.Response(1, C.CMD_IOCTL, 2, 7), 24, "<B", 1, "unused body bytes not zero"),
    (C.Response(1, C.CMD_ACCEPT, 2, 0, V4), 24, "<H", 0, "address family not allowed"),
    (C.Response(1, C.CMD_ACCEPT, 2, 0, V4), 56, "<B", 1, "unused body bytes not zero"),
    (C.Response(1, C.CMD_GETSOCKOPT, 2, 0, C.OptValue(4, b"abcd")), 28, "<I", 1,
     "body padding not zero"),
    (C.Response(1, C.CMD_GETSOCKOPT, 2, 0, C.OptValue(4, b"abcd")), 24, "<I", C.OOL_MAX + 1,
     "option length too long"),
    (C.Response(1, C.CMD_GETSOCKOPT, 2, 0, C.OptValue(4, b"abcd")), 36, "<B", 1,
     "unused body bytes not zero"),
    (C.Response(1, C.CMD_GETSOCKOPT, 2, 0, C.OptValue(200)), 32, "<B", 1,
     "unused body bytes not zero"),
    (C.Response(1, C.CMD_GETSOCKOPT, 2, 0, C.OptValue(88, bytes(88))), 120, "<B", 1,
     "unused body bytes not zero"),
    (C.Response(1, C.CMD_GETADDRINFO, 0, 0, C.GaiResult(0, 0, 8)), 24, "<i", 1,
     "resolver status out of range"),
    (C.Response(1, C.CMD_GETADDRINFO, 0, 0, C.GaiResult(0, 0, 8)), 24, "<i", C.EAI_MIN - 1,
     "resolver status out of range"),
    (C.Response(1, C.CMD_GETNAMEINFO, 0, 0, C.GaiResult(-11, -5)), 28, "<i", 0,
     "system errno does not match status"),
    (C.Response(1, C.CMD_GETNAMEINFO, 0, 0, C.GaiResult(-11, -5)), 28, "<i", -C.ERRNO_MAX - 1,
     "system errno does not match status"),
    (C.Response(1, C.CMD_GETNAMEINFO, 0, 0, C.GaiResult(0, 0, 8)), 28, "<i", -1,
     "system errno does not match status"),
    (C.Response(1, C.CMD_GETADDRINFO, 0, 0, C.GaiResult(0, 0, 8)), 32, "<I", 7,
     "answer length out of range"),
    (C.Response(1, C.CMD_GETADDRINFO, 0, 0, C.GaiResult(0, 0, 8)), 32, "<I", C.OOL_MAX + 1,
     "answer length out of range"),
    (C.Response(1, C.CMD_GETADDRINFO, 0, 0, C.GaiResult(-2)), 32, "<I", 8,
     "answer length out of range"),
    (C.Response(1, C.CMD_GETADDRINFO, 0, 0, C.GaiResult(-2)), 36, "<I", 1,
     "body padding not zero"),
    (C.Response(1, C.CMD_PING, 0, 0, C.PingEcho(3)), 32, "<B", 1, "unused body bytes not zero"),
]


def _reasons_both(decode, c_norm, b):
    py, c = py_norm(decode, b), c_norm(b)
    assert py == c
    return py[0]


@pytest.mark.parametrize("msg,off,fmt,value,reason", REQ_CASES,
                         ids=[f"{type(c[0]).__name__}-{c[4]}" for c in REQ_CASES])
def test_request_check(msg, off, fmt, value, reason):
    assert c_norm_request(msg.encode()) == (None, msg.encode())
    bad = _patch(msg.encode(), off, fmt, value)
    assert _reasons_both(lambda x: C.decode_request(x, LIM), c_norm_request, bad) == reason


@pytest.mark.parametrize("msg,off,fmt,value,reason", RSP_CASES,
                         ids=[f"{C.CMD_NAMES[c[0].cmd]}-{c[4]}" for c in RSP_CASES])
def test_response_check(msg, off, fmt, value, reason):
    assert c_norm_response(msg.encode()) == (None, msg.encode())
    bad = _patch(msg.encode(), off, fmt, value)
    assert _reasons_both(lambda x: C.decode_response(x, LIM), c_norm_response, bad) == reason


EV = C.Event(3, C.EV_DATA, 9)
EVENT_CASES = [
    (EV, True, 6, "<H", 1, "event flags not zero"),
    (EV, True, 4, "<H", 4, "event type unknown"),
    (EV, True, 4, "<H", 0, "event type unknown"),
    (EV, False, 4, "<H", C.EV_STATE, "state event from the frontend"),
    (EV, True, 0, "<I", LIM.sock_slots, "socket slot out of range"),
]


@pytest.mark.parametrize("ev,from_ins,off,fmt,value,reason", EVENT_CASES)
def test_event_check(ev, from_ins, off, fmt, value, reason):
    bad = _patch(ev.encode(), off, fmt, value)
    assert _reasons_both(lambda x: C.decode_event(x, LIM, from_ins=from_ins),
                         lambda x: c_norm_event(x, from_ins), bad) == reason


DG = C.DgramHeader(100, V4)
DGRAM_CASES = [
    (DG, False, 4, "<I", 1, "datagram flags not zero"),
    (DG, False, 0, "<I", C.DGRAM_MAX + 1, "datagram too long"),
    (DG, False, 0, "<I", 4096 - 40 + 1, "datagram record larger than its ring"),
    (DG, True, 8, "<H", 0, "address family not allowed"),
]


@pytest.mark.parametrize("hdr,from_ins,off,fmt,value,reason", DGRAM_CASES)
def test_dgram_check(hdr, from_ins, off, fmt, value, reason):
    good = _patch(hdr.encode(), 0, "<I", 4096 - 40)             # the largest record of 4 KiB
    assert c_norm_dgram(good, 4096, from_ins) == (None, good)
    assert C.decode_dgram_header(good, 4096, from_ins=from_ins).len == 4096 - 40
    bad = _patch(hdr.encode(), off, fmt, value)
    assert _reasons_both(lambda x: C.decode_dgram_header(x, 4096, from_ins=from_ins),
                         lambda x: c_norm_dgram(x, 4096, from_ins), bad) == reason


AI = C.AiAnswer((C.AiEntry(1, 6, V4), C.AiEntry(2, 17, C.SockAddr.from_tuple(("::1", 53)))),
                b"example.org")
NI = C.NiAnswer(b"example.org", b"http")
BLOB_CASES = [
    ("ai", AI.encode()[:7], "answer shorter than its header"),
    ("ai", _patch(AI.encode(), 0, "<I", C.AI_ENTRIES_MAX + 1), "too many addrinfo entries"),
    ("ai", _patch(AI.encode(), 4, "<I", C.AI_CANON_MAX + 1), "canonical name too long"),
    ("ai", _patch(AI.encode(), 0, "<I", 1), "answer length does not match its contents"),
    ("ai", AI.encode() + b"x", "answer length does not match its contents"),
    ("ai", _patch(AI.encode(), 8, "<i", 1), "addrinfo entry family not supported"),
    ("ai", _patch(AI.encode(), 12, "<i", 0), "addrinfo entry socktype not supported"),
    ("ai", _patch(AI.encode(), 16, "<i", 1), "addrinfo entry protocol not supported"),
    ("ai", _patch(AI.encode(), 20, "<I", 1), "addrinfo entry padding not zero"),
    ("ai", _patch(AI.encode(), 8, "<i", 10), "addrinfo entry address family mismatch"),
    ("ai", _patch(AI.encode(), 8 + 48 + 16 + 28, "<I", 1), "address padding not zero"),
    ("ai", _patch(AI.encode(), len(AI.encode()) - 1, "<B", 0), "name contains a NUL byte"),
    ("ni", NI.encode()[:4], "answer shorter than its header"),
    ("ni", _patch(NI.encode(), 0, "<I", C.NI_HOST_MAX + 1), "host name too long"),
    ("ni", _patch(NI.encode(), 4, "<I", C.NI_SERV_MAX + 1), "service name too long"),
    ("ni", _patch(NI.encode(), 4, "<I", 3), "answer length does not match its contents"),
    ("ni", _patch(NI.encode(), 9, "<B", 0), "name contains a NUL byte"),
    ("ni", _patch(NI.encode(), len(NI.encode()) - 1, "<B", 0), "name contains a NUL byte"),
]


@pytest.mark.parametrize("kind,blob,reason", BLOB_CASES)
def test_answer_check(kind, blob, reason):
    decode, c_norm = ((C.decode_ai_answer, c_norm_ai) if kind == "ai"
                      else (C.decode_ni_answer, c_norm_ni))
    assert _reasons_both(decode, c_norm, blob) == reason


@pytest.mark.parametrize("blob,node_len,service_len,reason", [
    (b"host" + b"80", 4, 3, "query longer than its buffer"),
    (b"ho\0t80", 4, 2, "name contains a NUL byte"),
    (b"x" * 2000, C.GAI_NODE_MAX + 1, 0, "node too long"),
    (b"x" * 2000, 0, C.GAI_SERVICE_MAX + 1, "service too long"),
])
def test_gai_query_check(blob, node_len, service_len, reason):
    why = ffi.new("const char **")
    assert lib.mw_gai_query_check(blob, len(blob), node_len, service_len, why) == -errno.EPROTO
    assert ffi.string(why[0]).decode() == reason
    with pytest.raises(C.ProtocolError, match=reason):
        C.decode_gai_query(blob, node_len, service_len)


MATCH_CASES = [
    (C.GetSockOpt(1, 2, 1, 2, 8), C.Response(2, C.CMD_GETSOCKOPT, 2, 0, C.OptValue(0)),
     "response does not match its request"),
    (C.GetSockOpt(1, 2, 1, 2, 8), C.Response(1, C.CMD_GETSOCKOPT, 3, 0, C.OptValue(0)),
     "response does not match its request"),
    (C.Close(1, 2), C.Response(1, C.CMD_SHUTDOWN, 2, 0), "response does not match its request"),
    (C.GetSockOpt(1, 2, 1, 2, 8), C.Response(1, C.CMD_GETSOCKOPT, 2, 0, C.OptValue(9, bytes(9))),
     "option longer than the room given"),
    (C.GetAddrInfo(1, C.Ool(0, 64), 0, 0), C.Response(1, C.CMD_GETADDRINFO, 0, 0, C.GaiResult(0, 0, 72)),
     "answer longer than its buffer"),
    (C.GetNameInfo(1, C.Ool(0, 64), V4), C.Response(1, C.CMD_GETNAMEINFO, 0, 0, C.GaiResult(0, 0, 72)),
     "answer longer than its buffer"),
    (C.GetNameInfo(1, C.Ool(0, 64), V4), C.Response(1, C.CMD_GETNAMEINFO, 0, 0, C.GaiResult(0, 0, 64)),
     None),
]


@pytest.mark.parametrize("req,rsp,reason", MATCH_CASES)
def test_response_match_check(req, rsp, reason):
    why = ffi.new("const char **")
    rc = lib.mw_rsp_match(rsp.encode(), req.encode(), why)
    assert (ffi.string(why[0]).decode() if rc else None) == reason
    if reason is None:
        C.check_response_matches(rsp, req)
    else:
        with pytest.raises(C.ProtocolError, match=reason):
            C.check_response_matches(rsp, req)


def test_every_reason_of_the_c_codec_has_a_case():
    """Each FAIL("...") of xen/codec.c is exercised by one of the cases above, so every check
    is shown to exist, in both codecs, with the same words."""
    import pathlib
    import re
    src = pathlib.Path(__file__).resolve().parents[2] / "xen" / "codec.c"
    if not src.exists():
        pytest.skip(f"{src} not found (tests run outside the source tree)")
    reasons = set(re.findall(r'FAIL\("([^"]+)"\)', src.read_text()))
    covered = {c[-1] for c in REQ_CASES + RSP_CASES + EVENT_CASES + DGRAM_CASES + BLOB_CASES
               + MATCH_CASES}
    covered |= {"query longer than its buffer"}
    assert len(reasons) > 50
    assert reasons - covered == set()


def test_every_reason_is_written_in_the_protocol_document():
    """docs/protocol.md, "Receiver checks", quotes each reason the codecs report."""
    import pathlib
    import re
    top = pathlib.Path(__file__).resolve().parents[2]
    src, doc = top / "xen" / "codec.c", top / "docs" / "protocol.md"
    if not (src.exists() and doc.exists()):
        pytest.skip("the source tree is not here (tests run outside it)")
    text = re.sub(r"\s+", " ", doc.read_text())
    reasons = set(re.findall(r'FAIL\("([^"]+)"\)', src.read_text()))
    assert [r for r in sorted(reasons) if f'"{r}"' not in text] == []
