"""mwcommsd's engine (mwcomms/engine/, C) for Python: create it, make it listen on the
control socket, run its loop in a thread, attach and detach the INS connection, read its
counters.

    eng = Engine()
    eng.listen("/run/mwcomms/control.sock")
    eng.start()                         # the loop, in a thread of its own
    eng.attach(link)                    # a FrontLink once the handshake is Connected
    ...
    eng.detach()                        # before link.teardown(): the engine lets go first
    eng.close()                         # stops the loop, fails every socket

Negative errnos from C become OSError in `_check` only.
"""
from __future__ import annotations

import os

from mwcomms._native import ffi, lib
from mwcomms.xen._loop import LoopThread, spin_config
from mwcomms.xen.connection import feature_bits as _feature_bits
from mwcomms.xen.platform import check_errno

__all__ = ["Engine", "feature_bits"]

_FEATURES = {"ipv6": lib.MWL_FEAT_IPV6, "udp": lib.MWL_FEAT_UDP, "dns": lib.MWL_FEAT_DNS}
_STATS = ("sockets", "sockets_total", "bytes_tx", "bytes_rx", "calls", "call_errors", "clients",
          "clients_dropped", "ins_requests", "attaches", "violations", "dgrams_dropped")


def feature_bits(features) -> int:
    """MWL_FEAT_* of negotiated feature names (unknown names are ignored)."""
    return _feature_bits(features, _FEATURES)


class Engine:
    """One mwcommsd engine. stream_order / dgram_order: log2 of each byte ring of a stream /
    datagram socket (0: the defaults, 18 and 17); accept_max: ACCEPTs pre-posted per listener;
    spin_us: microseconds the loop polls after work before it sleeps (None: MW_SPIN_US or 50;
    0: never; xen/include/mwcomms/spin.h)."""

    def __init__(self, *, stream_order: int = 0, dgram_order: int = 0, accept_max: int = 0,
                 max_sockets: int = 0, spin_us: int | None = None):
        cfg = ffi.new("struct mwfe_config *")
        cfg.stream_order, cfg.dgram_order = stream_order, dgram_order
        cfg.accept_max, cfg.max_sockets = accept_max, max_sockets
        cfg.spin_us = spin_config(spin_us)
        out = ffi.new("struct mwfe **")
        check_errno(lib.mwfe_create(cfg, out), "mwcommsd engine")
        self._ptr = out[0]
        # The loop call releases the GIL (cffi does for every C call).
        self._loop = LoopThread("mwcommsd-engine", lambda: lib.mwfe_run(self._ptr),
                                lambda: lib.mwfe_stop(self._ptr))
        self._link = None            # keeps the area and event channel alive while attached

    def listen(self, path: str) -> None:
        check_errno(lib.mwfe_listen(self._ptr, os.fsencode(path)), f"control socket {path}")

    @property
    def link_fd(self) -> int:
        """Readable when the engine detached itself: a violation, or the INS vanished (link())."""
        return lib.mwfe_link_fd(self._ptr)

    def attach(self, link) -> None:
        """Attach a connected FrontLink (its area, layout, event channel, port, features)."""
        layout = link.layout
        geom = ffi.new("struct mw_area_geom *")
        geom.cmd_pages, geom.evq_pages = layout.cmd_ring_pages, layout.evq_pages
        geom.sock_slots, geom.data_pages = layout.sock_slots, layout.data_pages
        area = link.area
        check_errno(lib.mwfe_attach(self._ptr, ffi.cast("void *", area.address), area.npages * 4096,
                               geom, link.evtchn._live(), link.port,
                               feature_bits(link.features)), "attach INS")
        self._link = link

    def detach(self) -> None:
        """Fail every socket; the engine no longer touches the area afterwards."""
        check_errno(lib.mwfe_detach(self._ptr), "detach INS")
        self._link = None

    def link(self) -> tuple[int, str]:
        """(1 attached | 0 detached | -EPROTO detached by a violation | -EPIPE detached because
        the INS vanished, the reason)."""
        why = ffi.new("char[]", 200)
        state = lib.mwfe_link(self._ptr, why, 200)
        return state, ffi.string(why).decode("utf-8", "replace")

    def link_event(self) -> tuple[int, str]:
        """link(), after draining link_fd (call it when link_fd is readable)."""
        try:
            os.read(self.link_fd, 8)
        except BlockingIOError:
            pass
        return self.link()

    def stats(self) -> dict[str, int]:
        st = ffi.new("struct mwfe_stats *")
        lib.mwfe_stats(self._ptr, st)
        return {name: getattr(st, name) for name in _STATS}

    def start(self) -> None:
        """Run the loop in a thread."""
        self._loop.start()

    def stop(self) -> None:
        """Stop the loop and wait for its thread."""
        self._loop.stop()

    def close(self) -> None:
        if self._ptr is None:
            return
        self.stop()
        lib.mwfe_destroy(self._ptr)
        self._ptr = None
        self._link = None

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
