"""pcap-ng, the little of it mwctl needs: write one interface's packets, read them back.

    with open(path, "wb") as f:
        w = PcapNgWriter(f, LINKTYPE_MWCOMMS, name="mwcomms", description="...")
        w.packet(ts_ns, data, flags=EPB_INBOUND)
    for pkt in read_pcapng(path): pkt.linktype, pkt.ts_ns, pkt.data, pkt.flags

Format: draft-ietf-opsawg-pcapng. Blocks in little-endian order: a Section Header Block, one
Interface Description Block (link type, snap length 0 = none, if_tsresol 9: timestamps in
nanoseconds), then one Enhanced Packet Block per packet (epb_flags carries the direction).
The reader understands what the writer writes (and skips other block types); it is the
project's own check when tshark is not installed.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterator

__all__ = ["PcapNgWriter", "Packet", "read_pcapng", "LINKTYPE_USER0", "EPB_INBOUND",
           "EPB_OUTBOUND"]

LINKTYPE_USER0 = 147                  # DLT_USER0: private use (LINKTYPE_USER0..15 = 147..162)
EPB_INBOUND, EPB_OUTBOUND = 1, 2      # epb_flags bits 0-1: direction

_SHB, _IDB, _EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
_BOM = 0x1A2B3C4D
_OPT_END, _OPT_COMMENT = 0, 1
_SHB_USERAPPL = 4
_IF_NAME, _IF_DESCRIPTION, _IF_TSRESOL = 2, 3, 9
_EPB_FLAGS = 2


def _pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def _options(opts: list[tuple[int, bytes]]) -> bytes:
    if not opts:
        return b""
    out = b"".join(struct.pack("<HH", code, len(value)) + _pad4(value) for code, value in opts)
    return out + struct.pack("<HH", _OPT_END, 0)


def _block(btype: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", btype, total) + body + struct.pack("<I", total)


class PcapNgWriter:
    """One section with one interface of link type `linktype`; packets in nanoseconds."""

    def __init__(self, f: BinaryIO, linktype: int, *, name: str = "", description: str = "",
                 application: str = "mwctl"):
        self.f = f
        shb = struct.pack("<IHHq", _BOM, 1, 0, -1) + _options(
            [(_SHB_USERAPPL, application.encode())])
        idb_opts = [(_IF_TSRESOL, b"\x09")]
        if name:
            idb_opts.append((_IF_NAME, name.encode()))
        if description:
            idb_opts.append((_IF_DESCRIPTION, description.encode()))
        idb = struct.pack("<HHI", linktype, 0, 0) + _options(idb_opts)
        f.write(_block(_SHB, shb) + _block(_IDB, idb))

    def packet(self, ts_ns: int, data: bytes, *, flags: int | None = None,
               comment: str | None = None) -> None:
        opts = []
        if flags is not None:
            opts.append((_EPB_FLAGS, struct.pack("<I", flags)))
        if comment:
            opts.append((_OPT_COMMENT, comment.encode()))
        body = struct.pack("<IIIII", 0, ts_ns >> 32, ts_ns & 0xFFFFFFFF, len(data), len(data))
        self.f.write(_block(_EPB, body + _pad4(data) + _options(opts)))

    def flush(self) -> None:
        self.f.flush()


@dataclass(frozen=True)
class Packet:
    linktype: int
    ts_ns: int
    data: bytes
    orig_len: int
    flags: int | None = None
    comment: str | None = None


def _parse_options(raw: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    off = 0
    while off + 4 <= len(raw):
        code, length = struct.unpack_from("<HH", raw, off)
        if code == _OPT_END:
            break
        if off + 4 + length > len(raw):
            raise ValueError("option runs past its block")
        out.setdefault(code, raw[off + 4:off + 4 + length])
        off += 4 + length + (-length % 4)
    return out


def read_pcapng(path: str) -> Iterator[Packet]:
    """Every Enhanced Packet Block of a little-endian pcap-ng file, with its interface's link
    type. @raise ValueError on any file that is not pcap-ng as written here (malformed,
    truncated, other byte order or format)"""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        yield from _parse(raw)
    except (struct.error, IndexError) as exc:      # a field cut short: the one place
        raise ValueError(f"malformed pcap-ng: {exc}") from None


def _parse(raw: bytes) -> Iterator[Packet]:
    off = 0
    ifaces: list[tuple[int, int]] = []     # (linktype, ns per tick)
    seen_shb = False
    while off < len(raw):
        if off + 12 > len(raw):
            raise ValueError("truncated block")
        btype, total = struct.unpack_from("<II", raw, off)
        if total < 12 or total % 4 or off + total > len(raw):
            raise ValueError(f"bad block length {total} at {off}")
        body = raw[off + 8:off + total - 4]
        if struct.unpack_from("<I", raw, off + total - 4)[0] != total:
            raise ValueError(f"block length mismatch at {off}")
        if not seen_shb and btype != _SHB:
            raise ValueError("not pcap-ng: no section header first")
        if btype == _SHB:
            if len(body) < 16 or struct.unpack_from("<I", body, 0)[0] != _BOM:
                raise ValueError("not a little-endian pcap-ng section")
            seen_shb = True
            ifaces = []
        elif btype == _IDB:
            if len(body) < 8:
                raise ValueError("interface block too short")
            linktype = struct.unpack_from("<H", body, 0)[0]
            opts = _parse_options(body[8:])
            tsresol = opts.get(_IF_TSRESOL, b"\x06")
            if len(tsresol) != 1 or tsresol[0] > 9:
                raise ValueError("timestamp resolution not supported")
            ifaces.append((linktype, 10 ** (9 - tsresol[0])))
        elif btype == _EPB:
            if len(body) < 20:
                raise ValueError("packet block too short")
            iface, hi, lo, cap, orig = struct.unpack_from("<IIIII", body, 0)
            if iface >= len(ifaces):
                raise ValueError("packet of an undeclared interface")
            if 20 + cap > len(body):
                raise ValueError("packet data runs past its block")
            linktype, scale = ifaces[iface]
            data = body[20:20 + cap]
            opts = _parse_options(body[20 + cap + (-cap % 4):])
            flags = opts.get(_EPB_FLAGS)
            if flags is not None and len(flags) != 4:
                raise ValueError("bad epb_flags option")
            comment = opts.get(_OPT_COMMENT)
            yield Packet(linktype, ((hi << 32) | lo) * scale, data, orig,
                         struct.unpack("<I", flags)[0] if flags is not None else None,
                         comment.decode("utf-8", "replace") if comment is not None else None)
        off += total
