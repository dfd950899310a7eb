"""mwcommsd: the frontend driver of a protected domain.

    python -m mwcomms.daemon --backend sim --sim-dir D --domid 1 --ins-domid 2 \\
        --xenstore SOCKET --socket CONTROL_PATH [--log F]
    python -m mwcomms.daemon --backend xen --domid 0 --socket /run/mwcomms/control.sock

It listens on the control socket for the shims of the domain's applications (the local
protocol, docs/local-protocol.md) and serves them with its C engine (mwcomms/engine/), whose
loop runs in a thread of its own. It drives the frontend side of the XenStore handshake of
device /local/domain/<domid>/device/mwcomms/<devid> (created by the toolstack, `mwctl
attach`): a FrontendDriver with a FrontLink shares the area and allocates the event channel;
once the INS is Connected the engine is attached; when the INS leaves (or breaks the protocol:
the engine detaches itself and the reason goes to the `error` key) the engine is detached,
which fails every forwarded socket, and the driver sets up again for the next INS.
SIGTERM and SIGINT leave cleanly (Closing, Closed) and exit 0.

The INS is the one the toolstack named in the device's `backend-id`; --ins-domid only says
which one to expect. On Xen an INS domain that is destroyed and created again comes back
with a new domain id: the toolstack attaches the device to it (`mwctl attach`), and mwcommsd
follows, with a fresh link shared with the new domain. On Xen the area is shared through
gntalloc, whose module allows 1024 pages by default: mwcommsd raises that limit when the
area needs more (it runs as root there), or says what to do.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import os
import select
import signal
import sys
import threading
import time

from mwcomms.xen._loop import SPIN_US_MAX, serve
from mwcomms.xen import area, connection, xenbus
from mwcomms.xen.platform import Platform
from mwcomms.xen.xenbus import FrontendDriver, XenbusState

from ._engine import Engine

__all__ = ["FrontendDaemon", "DEFAULT_LAYOUT", "XEN_LAYOUT", "ensure_gntalloc_room", "main"]

log = logging.getLogger("mwcomms.daemon")

# The area's layout by backend. sim: xen/area.py's defaults (a sparse file: untouched pages
# cost nothing). xen: every page is a grant of real memory, shared through gntalloc and
# mapped by the INS: 8246 pages (1024 sockets, 32 MiB of rings) unless told otherwise.
DEFAULT_LAYOUT = area.AreaLayout()
XEN_LAYOUT = area.AreaLayout(cmd_ring_pages=4, evq_pages=4, sock_slots=1024, data_pages=8192)
GNTALLOC_LIMIT = "/sys/module/xen_gntalloc/parameters/limit"


def ensure_gntalloc_room(pages: int, limit_path: str = GNTALLOC_LIMIT) -> None:
    """Xen: make room for `pages` granted pages in gntalloc's limit (a module parameter that
    counts every page the domain shares through /dev/xen/gntalloc; 1024 by default).
    @raise OSError ENOSPC when the limit is lower and cannot be raised"""
    try:
        with open(limit_path) as f:
            limit = int(f.read())
    except (OSError, ValueError):
        return          # no such parameter here: sharing reports its own errno
    if limit >= pages:
        return
    want = pages + 1024   # room for a second area while an old one is being released
    try:
        with open(limit_path, "w") as f:
            f.write(str(want))
    except OSError as exc:
        raise OSError(errno.ENOSPC, f"the area needs {pages} granted pages, gntalloc allows "
                                    f"{limit} ({exc.strerror}): raise {limit_path} as root "
                                    f"or lower --data-pages") from None
    log.info("gntalloc limit raised from %d to %d pages (the area needs %d)", limit, want, pages)


class FrontendDaemon:
    """mwcommsd's control plane (see the module docstring)."""

    def __init__(self, plat: Platform, xs_path: str | None, domid: int, ins_domid: int | None,
                 socket_path: str, *, devid: int = 0, layout: area.AreaLayout = DEFAULT_LAYOUT,
                 engine: Engine | None = None, retry_delay: float = 1.0,
                 stats_path: str | None = None):
        self.plat = plat
        self.xs_path = xs_path
        self.domid, self.ins_domid, self.devid = domid, ins_domid, devid
        self.path = xenbus.front_path(domid, devid)
        self.socket_path = socket_path
        self.retry_delay = retry_delay
        self.stats_path = stats_path
        self.layout = layout
        self.link: connection.FrontLink | None = None   # for the INS the device names now
        self.engine = engine or Engine()
        self.attached = False
        self.driver: FrontendDriver | None = None

    # -- handshake callbacks (run in the driver's thread) -----------------------------------
    def _setup(self, keys: dict) -> dict:
        return self.link.setup(keys)

    def _connected(self) -> None:
        try:
            self.engine.attach(self.link)
        except OSError as exc:
            log.error("attach to the engine failed: %s", exc)
            return
        self.attached = True
        log.info("INS dom%d connected (features %s): serving sockets", self.link.ins_domid,
                 " ".join(self.link.features) or "-")

    def _teardown(self) -> None:
        if self.attached:
            self.engine.detach()
            self.attached = False
            log.info("INS dom%d gone: every forwarded socket failed", self.link.ins_domid)
        self.link.teardown()

    # -- supervision ------------------------------------------------------------------------
    def _wait_device(self, stop: threading.Event) -> int | None:
        """Wait for the toolstack to create the device; @return the INS it names
        (backend-id), or None when stopped first."""
        client = xenbus.connect_xenstore(self.xs_path)
        try:
            while not stop.is_set():
                ins = _domid(xenbus.read_opt(client, f"{self.path}/backend-id"))
                if ins is not None:
                    if self.ins_domid is not None and ins != self.ins_domid:
                        log.warning("the device names INS dom%d, not dom%d as told: following "
                                    "the device", ins, self.ins_domid)
                    return ins
                stop.wait(0.5)
        finally:
            client.close()
        return None

    def _make_driver(self, stop: threading.Event) -> FrontendDriver | None:
        """Build the device's driver (retried while the toolstack is still writing it)."""
        while not stop.is_set():
            client = xenbus.connect_xenstore(self.xs_path)
            try:
                return FrontendDriver(client, self.path, setup=self._setup,
                                      teardown=self._teardown, connected=self._connected,
                                      retry_delay=self.retry_delay)
            except OSError as exc:
                client.close()
                if exc.errno != errno.ENOENT:
                    raise
            stop.wait(0.5)
        return None

    def _lost(self, state: int, why: str, stop: threading.Event) -> None:
        """The engine detached itself (a violation, or the INS vanished): say why, close the
        connection, then set up again."""
        what = "protocol violation" if state == -errno.EPROTO else "INS gone"
        log.warning("INS dom%d: %s: %s", self.link.ins_domid, what, why)
        self.attached = False
        # A client of our own: the driver's belongs to the driver's thread.
        client = xenbus.connect_xenstore(self.xs_path)
        driver = self.driver
        try:
            try:
                xenbus.write_txn(client, {f"{self.path}/error": f"{what}: {why}"[:1000]},
                                 require=self.path)
            except OSError:
                pass
            driver.want = False                  # rule 5: Closing, wait for the INS, Closed
            end = time.monotonic() + 10
            while not stop.is_set() and time.monotonic() < end:
                state = XenbusState.parse(xenbus.read_opt(client, f"{self.path}/state"))
                if state in (XenbusState.CLOSED, XenbusState.UNKNOWN):
                    break
                time.sleep(0.05)
        finally:
            driver.want = True                   # rule 2 sets up again for the next INS
            client.close()

    def write_stats(self) -> None:
        """The engine's counters and the link state as JSON in stats_path (replaced
        atomically), for mwctl."""
        if not self.stats_path:
            return
        state, why = self.engine.link()
        doc = {"link": {1: "attached", 0: "detached"}.get(state, "broken"), "why": why,
               "ins_domid": self.link.ins_domid if self.link else None, **self.engine.stats()}
        tmp = f"{self.stats_path}.tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, self.stats_path)

    def run(self, stop: threading.Event) -> None:
        self.engine.listen(self.socket_path)
        self.engine.start()
        log.info("mwcommsd dom%d: control socket %s, device %s", self.domid, self.socket_path,
                 self.path)
        try:
            if self.plat.backend == "xen":
                ensure_gntalloc_room(self.layout.area_pages + self.layout.ref_pages)
            while not stop.is_set():
                ins = self._wait_device(stop)
                if ins is None:
                    return
                self._serve(ins, stop)
        finally:
            self.engine.close()

    def _serve(self, ins: int, stop: threading.Event) -> None:
        """Run the handshake with INS `ins` until `stop`, or until the toolstack attaches the
        device to another INS (a new domain after the old one was destroyed)."""
        self.link = connection.FrontLink(self.plat, ins, self.layout)
        self.driver = self._make_driver(stop)
        if self.driver is None:
            return
        log.info("device %s: INS dom%d", self.path, ins)
        watch = xenbus.connect_xenstore(self.xs_path)
        drv_stop = threading.Event()
        runner = threading.Thread(target=self.driver.run, args=(drv_stop,),
                                  kwargs={"poll_timeout": 0.2}, name="mwcommsd-xenbus",
                                  daemon=True)
        runner.start()
        try:
            last = 0.0
            while not stop.is_set() and runner.is_alive():
                ready, _, _ = select.select([self.engine.link_fd], [], [], 0.2)
                if ready:
                    state, why = self.engine.link_event()
                    if state < 0:
                        self._lost(state, why, stop)
                if time.monotonic() - last >= 1.0:
                    last = time.monotonic()
                    self.write_stats()
                    now = _domid(xenbus.read_opt(watch, f"{self.path}/backend-id"))
                    if now is not None and now != ins:
                        log.info("device %s: attached to INS dom%d now (was dom%d)",
                                 self.path, now, ins)
                        return
        finally:
            drv_stop.set()
            runner.join(15)
            if self.attached or self.link.area is not None:
                self._teardown()
            self.driver.client.close()
            watch.close()


def _domid(raw: bytes | None) -> int | None:
    """A domain id from XenStore (written by the toolstack), or None."""
    if raw is None or not raw.isdigit() or len(raw) > 5:
        return None
    return int(raw)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mwcomms.daemon",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=("sim", "xen"), default=None)
    ap.add_argument("--sim-dir", help="sim platform directory")
    ap.add_argument("--domid", type=int, required=True, help="this protected domain's id")
    ap.add_argument("--ins-domid", type=int, default=None,
                    help="the INS domain to expect (the device's backend-id decides)")
    ap.add_argument("--devid", type=int, default=0)
    ap.add_argument("--xenstore", help="XenStore socket (default: the platform's own)")
    ap.add_argument("--socket", required=True, help="control socket path for the shims")
    ap.add_argument("--log", help="log file (default: stderr)")
    ap.add_argument("--data-pages", type=int,
                    help="pages of the data area (byte rings and out-of-line buffers; default "
                         f"{DEFAULT_LAYOUT.data_pages} on sim, {XEN_LAYOUT.data_pages} on xen)")
    ap.add_argument("--sock-slots", type=int, help=f"socket table entries (default "
                    f"{DEFAULT_LAYOUT.sock_slots} on sim, {XEN_LAYOUT.sock_slots} on xen)")
    ap.add_argument("--cmd-ring-pages", type=int, help="pages of the command ring")
    ap.add_argument("--evq-pages", type=int, help="pages of each event queue")
    ap.add_argument("--ring-order", type=int, default=0,
                    help="log2 of each byte ring of a stream socket (default 18)")
    ap.add_argument("--spin-us", type=int, default=None,
                    help="microseconds the engine keeps polling after work before it sleeps "
                         "(default: $MW_SPIN_US, else 50; 0: never poll; at most 1000; not while "
                         "the machine has more runnable tasks than CPUs): a wake-up costs more "
                         "than that on a small VM")
    ap.add_argument("--stats", help="write the engine's counters here (JSON, every second)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.spin_us is not None and not 0 <= args.spin_us <= SPIN_US_MAX:
        ap.error(f"--spin-us {args.spin_us}: must be 0 (never poll) to {SPIN_US_MAX}")

    level = logging.DEBUG if args.verbose else logging.INFO
    fmt = "%(asctime)s %(name)s %(levelname)s %(message)s"
    if args.log:
        logging.basicConfig(filename=args.log, level=level, format=fmt)
    else:
        logging.basicConfig(stream=sys.stderr, level=level, format=fmt)

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if args.backend == "sim" or (args.backend is None and args.sim_dir):
            if not args.sim_dir:
                ap.error("sim needs --sim-dir")
            plat = Platform("sim", sim_dir=args.sim_dir, domid=args.domid)
        else:
            plat = Platform(args.backend)
    except OSError as exc:
        log.error("platform: %s", exc)
        return 1
    try:
        given = {k: getattr(args, k) for k in ("cmd_ring_pages", "evq_pages", "sock_slots",
                                                "data_pages") if getattr(args, k) is not None}
        layout = dataclasses.replace(XEN_LAYOUT if plat.backend == "xen" else DEFAULT_LAYOUT,
                                     **given).check()
        daemon = FrontendDaemon(plat, args.xenstore, args.domid, args.ins_domid, args.socket,
                                devid=args.devid, layout=layout,
                                engine=Engine(stream_order=args.ring_order,
                                              spin_us=args.spin_us),
                                stats_path=args.stats)
        if serve(daemon.run, stop, "mwcommsd", log):
            return 1
    except OSError as exc:
        log.error("mwcommsd: %s", exc)
        return 1
    finally:
        plat.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
