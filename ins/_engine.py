"""The INS engine (ins/engine/, C) for Python: create it, attach and detach frontends, run
its loop in a thread, read its statistics.

    eng = Engine()
    eng.start()                         # the loop, in a thread of its own
    handle = eng.attach(link)           # a BackLink after connect(): area, layout, evtchn
    ...
    eng.detach(handle)                  # before link.teardown(): the engine lets go first
    eng.close()                         # stops the loop, detaches the rest

Negative errnos from C become OSError in `_check` only.
"""
from __future__ import annotations

import os

from mwcomms._native import ffi, lib
from mwcomms.xen._loop import LoopThread, spin_config
from mwcomms.xen.connection import feature_bits as _feature_bits
from mwcomms.xen.platform import check_errno

__all__ = ["Engine", "feature_bits"]

_FEATURES = {"ipv6": lib.INS_F_IPV6, "udp": lib.INS_F_UDP, "dns": lib.INS_F_DNS}
_CMD_NAMES = ["UNKNOWN", "SOCKET", "CONNECT", "BIND", "LISTEN", "ACCEPT", "SHUTDOWN", "CLOSE",
              "GETSOCKOPT", "SETSOCKOPT", "GETSOCKNAME", "GETPEERNAME", "GETADDRINFO",
              "GETNAMEINFO", "IOCTL", "PING"]


def feature_bits(features) -> int:
    """INS_F_* of negotiated feature names (unknown names are ignored)."""
    return _feature_bits(features, _FEATURES)


class Engine:
    """One INS engine. log_fd: where C log lines go (-1: stderr); max_socks, max_buf_bytes:
    per-frontend limits (0: the defaults of ins_engine.h); max_buf_bytes bounds the memory the
    INS holds for a frontend (not the kernel's socket buffers): ACCEPTs wait, never reset;
    spin_us: microseconds the loop polls after work before it sleeps (None: MW_SPIN_US or 50;
    0: never; xen/include/mwcomms/spin.h)."""

    def __init__(self, *, log_fd: int = -1, dns_workers: int = 0, max_socks: int = 0,
                 max_buf_bytes: int = 0, spin_us: int | None = None):
        cfg = ffi.new("struct ins_config *")
        cfg.log_fd = log_fd
        cfg.dns_workers = dns_workers
        cfg.max_socks = max_socks
        cfg.max_buf_bytes = max_buf_bytes
        cfg.spin_us = spin_config(spin_us)
        out = ffi.new("struct ins_engine **")
        check_errno(lib.ins_engine_create(cfg, out), "INS engine")
        self._ptr = out[0]
        # The loop call releases the GIL (cffi does for every C call).
        self._loop = LoopThread("ins-engine", lambda: lib.ins_engine_run(self._ptr),
                                lambda: lib.ins_engine_stop(self._ptr))
        self._links: dict[int, object] = {}      # keeps areas and handles alive while attached

    @property
    def notify_fd(self) -> int:
        """Readable when a frontend was disconnected for a protocol violation (see broken())."""
        return lib.ins_engine_notify_fd(self._ptr)

    def attach(self, link, front_id: int | None = None) -> int:
        """Attach a connected BackLink (its area, layout, event channel, port, features)."""
        layout = link.layout
        geom = ffi.new("struct mw_area_geom *")
        geom.cmd_pages, geom.evq_pages = layout.cmd_ring_pages, layout.evq_pages
        geom.sock_slots, geom.data_pages = layout.sock_slots, layout.data_pages
        area = link.area
        size = area.npages * 4096
        handle = check_errno(lib.ins_engine_attach(
            self._ptr, link.front_domid if front_id is None else front_id,
            ffi.cast("void *", area.address), size, geom, link.evtchn._live(), link.port,
            feature_bits(link.features)), "attach frontend")
        self._links[handle] = link
        return handle

    def detach(self, handle: int) -> None:
        """Close every socket of that frontend; the engine no longer touches its area."""
        check_errno(lib.ins_engine_detach(self._ptr, handle), f"detach {handle}")
        self._links.pop(handle, None)

    def stats(self, handle: int) -> dict:
        st = ffi.new("struct ins_front_stats *")
        check_errno(lib.ins_engine_stats(self._ptr, handle, st), f"stats {handle}")
        return {"front_id": st.front_id, "sockets": st.sockets, "tx_bytes": st.tx_bytes,
                "rx_bytes": st.rx_bytes, "buf_bytes": st.buf_bytes,
                "requests": {_CMD_NAMES[i]: st.requests[i] for i in range(16) if st.requests[i]},
                "proto_errors": st.proto_errors, "broken": bool(st.broken),
                "why": ffi.string(st.why).decode("utf-8", "replace")}

    def broken(self) -> dict[int, str]:
        """Handles of frontends disconnected for a violation, with the reason (drains
        notify_fd)."""
        try:
            os.read(self.notify_fd, 8)
        except BlockingIOError:
            pass
        out = {}
        for handle in list(self._links):
            st = self.stats(handle)
            if st["broken"]:
                out[handle] = st["why"]
        return out

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
        lib.ins_engine_destroy(self._ptr)
        self._ptr = None
        self._links.clear()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
