"""The shared area of one mwcomms connection: its layout, its XenStore keys, sharing and mapping.

The frontend shares the area (docs/protocol.md, "The shared area"): page 0 the control page,
then the command ring, the two event queues, the socket table and the data area. It also
shares directory pages that list the area's grant references, 1024 per page, and publishes
the directory's references and the layout in XenStore. The INS reads those keys, checks them
against the limits it advertised (the frontend may be compromised), copies the references out
of the directory once, and maps the area.

The layout always comes from XenStore, never from shared memory, so the frontend cannot
change it after the INS has checked it.
"""
from __future__ import annotations

import errno
import struct
from dataclasses import dataclass

PAGE = 4096
REFS_PER_PAGE = PAGE // 4
CMD_SLOT = 128
EVENT_SIZE = 16
SOCK_ENTRY = 128

CMD_RING_PAGES_MAX = 16
EVQ_PAGES_MAX = 64
SOCK_SLOTS_MAX = 65536
DATA_PAGES_MAX = 1 << 18
REF_PAGES_MAX = 258           # enough for the largest area: (1 + 16 + 128 + 2048 + 2^18) / 1024


class LayoutError(OSError):
    """Layout keys that break a rule of docs/protocol.md: the connection must not proceed."""

    def __init__(self, msg: str):
        super().__init__(errno.EPROTO, msg)


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@dataclass(frozen=True)
class AreaLayout:
    """Sizes of the parts of the shared area, in pages (sock_slots in entries).

    The defaults are sized for the sim backend, where an area page is an untouched page of a
    sparse file until a side writes it, so a large area costs nothing while unused: 512
    command slots, 4096 events per queue, 32768 socket slots and a 512 MiB data area (with
    mwcommsd's ring sizing, docs/protocol.md 4: 673 sockets with 256 KiB rings each way, then
    ~17,000 more with smaller ones). That is 132,145 pages, within what an INS accepts by
    default (connection.Limits). On Xen every page is a grant (gntalloc allows 1024 pages per
    domain unless raised): pass a smaller layout.
    """

    cmd_ring_pages: int = 16
    evq_pages: int = 16
    sock_slots: int = 32768
    data_pages: int = 131072

    def check(self, max_area_pages: int | None = None,
              max_sock_slots: int | None = None) -> "AreaLayout":
        """Raise LayoutError unless every size is within the limits of protocol v1 and the
        limits the INS advertised."""
        if not (_pow2(self.cmd_ring_pages) and self.cmd_ring_pages <= CMD_RING_PAGES_MAX):
            raise LayoutError(f"cmd-ring-pages {self.cmd_ring_pages}: a power of two <= {CMD_RING_PAGES_MAX}")
        if not (_pow2(self.evq_pages) and self.evq_pages <= EVQ_PAGES_MAX):
            raise LayoutError(f"evq-pages {self.evq_pages}: a power of two <= {EVQ_PAGES_MAX}")
        if not (_pow2(self.sock_slots) and 32 <= self.sock_slots <= SOCK_SLOTS_MAX):
            raise LayoutError(f"sock-slots {self.sock_slots}: a power of two in 32..{SOCK_SLOTS_MAX}")
        if not (1 <= self.data_pages <= DATA_PAGES_MAX):
            raise LayoutError(f"data-pages {self.data_pages}: 1..{DATA_PAGES_MAX}")
        if max_sock_slots is not None and self.sock_slots > max_sock_slots:
            raise LayoutError(f"sock-slots {self.sock_slots} exceeds the limit of {max_sock_slots}")
        if max_area_pages is not None and self.area_pages > max_area_pages:
            raise LayoutError(f"area of {self.area_pages} pages exceeds the limit of {max_area_pages}")
        return self

    # Offsets, in pages from the start of the area.
    @property
    def cmd_off(self) -> int:
        return 1

    @property
    def fq_off(self) -> int:
        return self.cmd_off + self.cmd_ring_pages

    @property
    def bq_off(self) -> int:
        return self.fq_off + self.evq_pages

    @property
    def socks_off(self) -> int:
        return self.bq_off + self.evq_pages

    @property
    def sock_pages(self) -> int:
        return self.sock_slots * SOCK_ENTRY // PAGE

    @property
    def data_off(self) -> int:
        return self.socks_off + self.sock_pages

    @property
    def area_pages(self) -> int:
        return self.data_off + self.data_pages

    @property
    def cmd_slots(self) -> int:
        return self.cmd_ring_pages * PAGE // CMD_SLOT

    @property
    def evq_slots(self) -> int:
        return self.evq_pages * PAGE // EVENT_SIZE

    @property
    def ref_pages(self) -> int:
        return -(-self.area_pages // REFS_PER_PAGE)

    def to_keys(self) -> dict[str, str]:
        return {"cmd-ring-pages": str(self.cmd_ring_pages), "evq-pages": str(self.evq_pages),
                "sock-slots": str(self.sock_slots), "data-pages": str(self.data_pages),
                "area-pages": str(self.area_pages)}

    @classmethod
    def from_keys(cls, keys: dict[str, str], max_area_pages: int | None = None,
                  max_sock_slots: int | None = None) -> "AreaLayout":
        """Parse and check the frontend's layout keys (hostile input)."""
        def num(name: str) -> int:
            raw = keys.get(name)
            if raw is None or not raw.isdigit() or len(raw) > 10:
                raise LayoutError(f"{name}: missing or not a number ({raw!r})")
            return int(raw)

        layout = cls(num("cmd-ring-pages"), num("evq-pages"), num("sock-slots"), num("data-pages"))
        layout.check(max_area_pages, max_sock_slots)
        if num("area-pages") != layout.area_pages:
            raise LayoutError(f"area-pages {keys['area-pages']} != {layout.area_pages} from the layout")
        return layout


def directory_bytes(refs: list[int]) -> bytes:
    """The directory pages' contents for `refs`: uint32 little-endian, zero padded."""
    raw = struct.pack(f"<{len(refs)}I", *refs)
    return raw + bytes(-len(raw) % PAGE)


def parse_directory(raw: bytes, area_pages: int) -> list[int]:
    """Grant references of the area from a copy of the directory pages."""
    if len(raw) < 4 * area_pages:
        raise LayoutError("directory shorter than the area")
    return list(struct.unpack_from(f"<{area_pages}I", raw))


def share_area(plat, remote: int, layout: AreaLayout):
    """Frontend: share a fresh, zeroed area and its directory with domain `remote`.

    @return (area grant, directory grant, keys to publish in XenStore)
    """
    layout.check()
    area = plat.share(remote, layout.area_pages)
    try:
        directory = plat.share(remote, layout.ref_pages)
    except BaseException:
        area.release()
        raise
    # Written before the keys are published: the XenStore write that publishes them orders it.
    raw = directory_bytes(list(area.refs))
    directory.buffer[:len(raw)] = raw
    keys = layout.to_keys()
    keys["ref-pages"] = str(layout.ref_pages)
    for i, ref in enumerate(directory.refs):
        keys[f"ref-{i}"] = str(ref)
    return area, directory, keys


def map_area(plat, remote: int, keys: dict[str, str], max_area_pages: int,
             max_sock_slots: int = SOCK_SLOTS_MAX):
    """INS: check the frontend's keys and map its area.

    @return (layout, area mapping)
    @raise LayoutError on keys that break the protocol; OSError when mapping fails
    """
    layout = AreaLayout.from_keys(keys, max_area_pages, max_sock_slots)
    raw = keys.get("ref-pages", "")
    if not raw.isdigit() or int(raw) != layout.ref_pages:
        raise LayoutError(f"ref-pages {raw!r} != {layout.ref_pages}")
    dir_refs = []
    for i in range(layout.ref_pages):
        ref = keys.get(f"ref-{i}", "")
        if not ref.isdigit() or int(ref) >= 1 << 32:
            raise LayoutError(f"ref-{i}: {ref!r} is not a grant reference")
        dir_refs.append(int(ref))
    directory = plat.map(remote, dir_refs)
    try:
        # One copy out of the shared pages, then parse the copy.
        refs = parse_directory(bytes(directory.buffer[:4 * layout.area_pages]), layout.area_pages)
    finally:
        directory.release()
    return layout, plat.map(remote, refs)
