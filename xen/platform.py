"""Grant tables and event channels for Python: a thin typed layer over mwcomms._native.

The C API (xen/include/mwcomms/platform.h) does the work on both backends, ``sim`` (one host,
processes as domains) and ``xen`` (the /dev/xen devices of a real domain). This module only
allocates arguments, calls it, and turns a negative errno into an ``OSError`` with ``.errno``
(in ``check_errno``, the one place that does so).

    with Platform(backend="sim", sim_dir="/dev/shm/sim", domid=1) as plat:
        with plat.share(2, 4) as g:            # 4 pages that domain 2 may map
            g.buffer[:5] = b"hello"
            ...  # tell domain 2 about g.refs, e.g. through XenStore
        with plat.evtchn() as ec:
            port = ec.alloc_unbound(2)
            ec.wait(1.0) and ec.pending()

Handles are closed by ``close()``/``release()``, by ``with``, or when garbage collected; a
Platform closes its grants and event channels first. A handle belongs to the process that
opened it: after fork() the child cannot use it, and dropping it there leaves the parent's
state alone. Touch shared memory through ``buffer`` only for control-plane work: data-plane
indices belong to the C ring library (Python has no memory barriers).
"""
from __future__ import annotations

import errno
import os
import weakref
from typing import Iterable, Optional

from mwcomms._native import ffi, lib

__all__ = ["Platform", "Grant", "EventChannel", "DOMID_SELF", "PAGE_SIZE"]

DOMID_SELF = lib.MW_DOMID_SELF
PAGE_SIZE = lib.MW_GNT_PAGE_SIZE


def check_errno(rc: int, what: str) -> int:
    """Return rc when it is >= 0; raise OSError(-rc) naming `what` when it is a -errno.
    The one place where a C error of the data plane becomes a Python exception."""
    if rc < 0:
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}")
    return rc


class Platform:
    """An open platform: one backend, one domain.

    backend: "sim", "xen" or None (MW_BACKEND, else xen where /dev/xen/evtchn exists, else sim).
    sim_dir, domid: the sim's directory and this process's domain id (None: MW_SIM_DIR and
    MW_SIM_DOMID). Raises OSError (ENODEV: backend not here, EINVAL: bad configuration).
    """

    def __init__(self, backend: Optional[str] = None, sim_dir: Optional[str] = None,
                 domid: Optional[int] = None) -> None:
        self._ptr = None
        self._pid = os.getpid()
        self._children = weakref.WeakSet()
        keep = []

        def cstr(s):
            if s is None:
                return ffi.NULL
            keep.append(ffi.new("char[]", os.fsencode(s)))
            return keep[-1]

        cfg = ffi.new("struct mw_plat_config *")
        cfg.backend = cstr(backend)
        cfg.sim_dir = cstr(sim_dir)
        cfg.sim_domid = -1 if domid is None else int(domid)
        out = ffi.new("struct mw_plat **")
        check_errno(lib.mw_plat_open(cfg, out), "platform open")
        self._ptr = out[0]
        self.backend: str = ffi.string(lib.mw_plat_backend(self._ptr)).decode()

    @property
    def domid(self) -> Optional[int]:
        """This domain's id on sim; None on xen (XenStore knows it there)."""
        rc = lib.mw_plat_domid(self._live())
        return rc if rc >= 0 else None

    def _live(self):
        if self._ptr is None or self._pid != os.getpid():
            raise ValueError("platform is closed, or belongs to the parent process")
        return self._ptr

    def share(self, remote: int, npages: int) -> Grant:
        """Grant `npages` zeroed pages to domain `remote`; returns a Grant with .refs."""
        n = npages if 0 < npages <= lib.MW_GNT_MAX_PAGES else 0   # C refuses 0: EINVAL
        refs = ffi.new("uint32_t[]", max(n, 1))
        addr = ffi.new("void **")
        out = ffi.new("struct mw_gnt **")
        check_errno(lib.mw_gnt_share(self._live(), remote, n, refs, addr, out),
               f"share {npages} pages with domain {remote}")
        return self._adopt(Grant(self, out[0], addr[0], npages, tuple(refs[0:npages])))

    def map(self, remote: int, refs: Iterable[int]) -> Grant:
        """Map the pages `refs` granted by domain `remote`, in that order, contiguously."""
        refs = tuple(int(r) for r in refs)
        crefs = ffi.new("uint32_t[]", refs) if refs else ffi.new("uint32_t[1]")
        addr = ffi.new("void **")
        out = ffi.new("struct mw_gnt **")
        check_errno(lib.mw_gnt_map(self._live(), remote, len(refs), crefs, addr, out),
               f"map {len(refs)} pages of domain {remote}")
        return self._adopt(Grant(self, out[0], addr[0], len(refs), refs))

    def evtchn(self) -> EventChannel:
        """Open an event channel handle."""
        out = ffi.new("struct mw_evtchn **")
        check_errno(lib.mw_evtchn_open(self._live(), out), "event channel open")
        return self._adopt(EventChannel(self, out[0]))

    def _adopt(self, child):
        self._children.add(child)
        return child

    def close(self) -> None:
        """Release every grant and event channel of this platform, then close it."""
        if self._ptr is None:
            return
        if self._pid == os.getpid():
            for child in list(self._children):
                child.close()
            lib.mw_plat_close(self._ptr)
        self._ptr = None

    def __enter__(self) -> Platform:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()

    def __repr__(self):
        state = "closed" if self._ptr is None else f"domid={lib.mw_plat_domid(self._ptr)}"
        return f"<Platform {self.backend} {state}>"


class Grant:
    """Pages shared with (Platform.share) or mapped from (Platform.map) another domain.

    refs: the grant references, in page order. address: where the pages are mapped here.
    buffer: a writable memoryview of them. release() releases it before unmapping the pages,
    and refuses (BufferError) while something still holds a buffer exported from it. Views
    made from it (slices, memoryview(buffer), ctypes from_buffer) are not tracked by Python:
    do not keep them past release(), they would point at unmapped memory.
    """

    def __init__(self, plat, ptr, addr, npages, refs):
        self._plat = plat          # keeps the platform open as long as the grant lives
        self._ptr = ptr
        self._pid = os.getpid()
        self.refs: tuple[int, ...] = refs
        self.npages: int = npages
        self.address: int = int(ffi.cast("uintptr_t", addr))
        self._view = memoryview(ffi.buffer(addr, npages * PAGE_SIZE))

    @property
    def buffer(self) -> memoryview:
        if self._ptr is None or self._pid != os.getpid():
            raise ValueError("grant is released, or belongs to the parent process")
        return self._view

    def release(self) -> None:
        """Unmap (or stop sharing) the pages. Idempotent."""
        if self._ptr is None:
            return
        try:
            self._view.release()
        except BufferError:
            raise BufferError("a buffer exported from this grant is still held: "
                              "drop it before releasing the grant") from None
        if self._pid == os.getpid():
            lib.mw_gnt_release(self._ptr)
        self._ptr = None

    close = release

    def __enter__(self) -> Grant:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        try:
            self.release()
        except BufferError:
            pass                    # still exported: leave the pages mapped, never dangling

    def __repr__(self):
        state = "released" if self._ptr is None else f"at {self.address:#x}"
        return f"<Grant {self.npages} pages refs={list(self.refs)} {state}>"


class EventChannel:
    """An event channel handle: any number of ports, one fd to poll (also via fileno())."""

    def __init__(self, plat, ptr):
        self._plat = plat          # keeps the platform open as long as the handle lives
        self._ptr = ptr
        self._pid = os.getpid()
        self.fd: int = lib.mw_evtchn_fd(ptr)

    def _live(self):
        if self._ptr is None or self._pid != os.getpid():
            raise ValueError("event channel is closed, or belongs to the parent process")
        return self._ptr

    def fileno(self) -> int:
        return self.fd

    def alloc_unbound(self, remote: int) -> int:
        """A new local port that domain `remote` (or DOMID_SELF) may bind to."""
        return check_errno(lib.mw_evtchn_alloc_unbound(self._live(), remote),
                      f"alloc unbound port for domain {remote}")

    def bind_interdomain(self, remote: int, remote_port: int) -> int:
        """Bind to `remote_port` of domain `remote`; returns the local port."""
        return check_errno(lib.mw_evtchn_bind_interdomain(self._live(), remote, remote_port),
                      f"bind to port {remote_port} of domain {remote}")

    def notify(self, port: int) -> None:
        """Kick the other end of local `port`."""
        check_errno(lib.mw_evtchn_notify(self._live(), port), f"notify port {port}")

    def pending(self) -> Optional[int]:
        """Take one pending port and unmask it; None when none is pending."""
        rc = lib.mw_evtchn_pending(self._live())
        if rc == -errno.EAGAIN:
            return None
        return check_errno(rc, "pending")

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait up to `timeout` seconds (None: forever) for a pending port; True if one is."""
        ms = -1 if timeout is None else max(0, int(timeout * 1000))
        return bool(check_errno(lib.mw_evtchn_wait(self._live(), ms), "wait"))

    def unbind(self, port: int) -> None:
        """Close local `port`."""
        check_errno(lib.mw_evtchn_unbind(self._live(), port), f"unbind port {port}")

    def close(self) -> None:
        """Close the handle and every port bound through it. Idempotent."""
        if self._ptr is None:
            return
        if self._pid == os.getpid():
            lib.mw_evtchn_close(self._ptr)
        self._ptr = None
        self.fd = -1

    def __enter__(self) -> EventChannel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()

    def __repr__(self):
        return f"<EventChannel fd={self.fd}>"

