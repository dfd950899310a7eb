"""One mwcomms connection's resources, as the handshake sets them up and tears them down.

`FrontLink` is what mwcommsd hands to xenbus.FrontendDriver: on setup it picks the protocol
version and features from the INS's offer, shares a fresh area and its grant directory, and
allocates the event channel; the keys it returns are published with state Initialised.
`BackLink` is the INS's side for xenbus.BackendDriver: it advertises versions, features and
limits, and on connect checks everything the frontend published (docs/protocol.md 14.1: the
frontend may be compromised), maps the area and binds the event channel.

After the handshake both expose the same things to their engine: `area` (a platform Grant),
`layout`, `evtchn` and `port`, `version` and `features`.
"""
from __future__ import annotations

import errno
import logging
from dataclasses import dataclass

from . import area as _area

__all__ = ["PROTOCOL_VERSIONS", "FEATURES", "Limits", "NegotiationError", "FrontLink",
           "BackLink", "choose_version", "parse_tokens", "feature_bits"]

log = logging.getLogger("mwcomms.connection")

PROTOCOL_VERSIONS = (1,)
FEATURES = ("ipv6", "udp", "dns")
_TOKEN_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-")


class NegotiationError(OSError):
    """The other side's keys break docs/protocol.md section 3 or 14.1."""

    def __init__(self, msg: str, code: int = errno.EPROTO):
        super().__init__(code, msg)


@dataclass(frozen=True)
class Limits:
    """What an INS accepts from one frontend."""

    max_area_pages: int = 1 + 16 + 2 * 64 + 2048 + (1 << 17)
    max_sock_slots: int = 65536


def parse_tokens(raw: str | None, what: str) -> list[str]:
    """A space-separated list of [a-z0-9-]+ tokens (versions, features)."""
    if raw is None:
        raise NegotiationError(f"{what}: missing")
    if raw == "":
        return []
    tokens = raw.split(" ")
    for tok in tokens:
        if not tok or len(tok) > 32 or not set(tok) <= _TOKEN_CHARS:
            raise NegotiationError(f"{what}: bad token {tok!r}")
    return tokens


def feature_bits(features, table: dict[str, int]) -> int:
    """The bit mask of negotiated feature names in an engine's `table` (unknown names are
    ignored)."""
    bits = 0
    for name in features:
        bits |= table.get(name, 0)
    return bits


def _number(keys: dict[str, str], name: str) -> int:
    raw = keys.get(name)
    if raw is None or not raw.isdigit() or len(raw) > 10:
        raise NegotiationError(f"{name}: missing or not a number ({raw!r})")
    return int(raw)


def choose_version(offered: list[str]) -> int:
    """The highest version both sides speak."""
    common = [v for v in PROTOCOL_VERSIONS if str(v) in offered]
    if not common:
        raise NegotiationError(f"no common protocol version: INS offers {offered}, "
                               f"we speak {list(PROTOCOL_VERSIONS)}", errno.EPROTONOSUPPORT)
    return max(common)


class FrontLink:
    """The frontend's resources of one connection (see the module docstring)."""

    def __init__(self, plat, ins_domid: int, layout: _area.AreaLayout | None = None,
                 features: tuple[str, ...] = FEATURES):
        self.plat = plat
        self.ins_domid = ins_domid
        self.layout = (layout or _area.AreaLayout()).check()
        self.wanted = tuple(features)
        self.area = self.directory = self.evtchn = None
        self.port = 0
        self.version = 0
        self.features: tuple[str, ...] = ()

    def setup(self, backend_keys: dict[str, str]) -> dict[str, str]:
        """Callback of FrontendDriver (rule 2): returns the keys to publish."""
        version = choose_version(parse_tokens(backend_keys.get("versions"), "versions"))
        offered = parse_tokens(backend_keys.get("features", ""), "features")
        features = tuple(f for f in self.wanted if f in offered)
        max_pages = _number(backend_keys, "max-area-pages")
        max_socks = _number(backend_keys, "max-sock-slots")
        self.layout.check(max_pages, max_socks)
        area, directory, keys = _area.share_area(self.plat, self.ins_domid, self.layout)
        try:
            evtchn = self.plat.evtchn()
            try:
                port = evtchn.alloc_unbound(self.ins_domid)
            except BaseException:
                evtchn.close()
                raise
        except BaseException:
            directory.release()
            area.release()
            raise
        self.area, self.directory, self.evtchn, self.port = area, directory, evtchn, port
        self.version, self.features = version, features
        keys.update({"version": str(version), "features": " ".join(features),
                     "event-channel": str(port)})
        log.info("frontend: area of %d pages shared with dom%d, event channel %d",
                 self.layout.area_pages, self.ins_domid, port)
        return keys

    def teardown(self) -> None:
        """Callback of FrontendDriver: end the sharing and close the event channel."""
        if self.evtchn is not None:
            self.evtchn.close()
        for g in (self.directory, self.area):
            if g is not None:
                g.release()
        self.area = self.directory = self.evtchn = None
        self.port = 0


class BackLink:
    """The INS's resources of one connection (see the module docstring)."""

    def __init__(self, plat, front_domid: int, limits: Limits | None = None,
                 features: tuple[str, ...] = FEATURES):
        self.plat = plat
        self.front_domid = front_domid
        self.limits = limits or Limits()
        self.offered = tuple(features)
        self.area = self.evtchn = self.layout = None
        self.port = 0
        self.version = 0
        self.features: tuple[str, ...] = ()

    def advertise(self) -> dict[str, str]:
        """Callback of BackendDriver (rule 1)."""
        return {"versions": " ".join(str(v) for v in PROTOCOL_VERSIONS),
                "features": " ".join(self.offered),
                "max-area-pages": str(self.limits.max_area_pages),
                "max-sock-slots": str(self.limits.max_sock_slots)}

    def connect(self, front_keys: dict[str, str]) -> None:
        """Callback of BackendDriver (rule 3): check the frontend's keys, then map and bind.
        @raise NegotiationError / LayoutError on keys that break the protocol"""
        version = _number(front_keys, "version")
        if version not in PROTOCOL_VERSIONS:
            raise NegotiationError(f"version {version} was not offered")
        features = parse_tokens(front_keys.get("features", ""), "features")
        extra = set(features) - set(self.offered)
        if extra:
            raise NegotiationError(f"features {sorted(extra)} were not offered")
        port = _number(front_keys, "event-channel")
        if port == 0:
            raise NegotiationError("event-channel: port 0")
        layout, area = _area.map_area(self.plat, self.front_domid, front_keys,
                                      self.limits.max_area_pages, self.limits.max_sock_slots)
        try:
            evtchn = self.plat.evtchn()
            try:
                local = evtchn.bind_interdomain(self.front_domid, port)
            except BaseException:
                evtchn.close()
                raise
        except BaseException:
            area.release()
            raise
        self.area, self.layout, self.evtchn, self.port = area, layout, evtchn, local
        self.version, self.features = version, tuple(features)
        log.info("INS: mapped %d pages of dom%d, event channel %d", layout.area_pages,
                 self.front_domid, local)

    def teardown(self) -> None:
        """Callback of BackendDriver: unbind and unmap."""
        if self.evtchn is not None:
            self.evtchn.close()
        if self.area is not None:
            self.area.release()
        self.area = self.evtchn = self.layout = None
        self.port = 0
