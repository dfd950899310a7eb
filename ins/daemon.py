"""The INS daemon: one per INS domain, serving every frontend the toolstack attaches to it.

    python -m mwcomms.ins.daemon --backend sim --sim-dir D --domid 2 --xenstore SOCKET [--log F]
                                 [--stats F] [--max-socks N] [--max-buf-mb N] [--spin-us N]
    python -m mwcomms.ins.daemon --backend xen   # on Xen: domid and XenStore found by itself

It watches /local/domain/<ins>/backend/mwcomms/ for device directories (created by the
toolstack's `xenbus.attach`), runs one BackendDriver with a BackLink per device, attaches the
device's area and event channel to the C engine when the handshake connects and detaches them
on teardown. The engine's loop runs in a thread of its own; a frontend the engine disconnects
for a protocol violation gets the reason in its backend `error` key and is closed (Closing,
Closed), after which the device advertises again for a fresh connection. SIGTERM and SIGINT
close every device cleanly (Closing, Closed) and exit 0.

XenStore: the --xenstore path is a Unix socket (the sim's xenstored, or dom0's C xenstored) or
a xenbus character device (a domU's /dev/xen/xenbus); without it, the local xenstored's socket
when there is one, else /dev/xen/xenbus (the INS image, tools/insimage.py).
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import queue
import select
import signal
import sys
import threading
import time

import pyxs

from mwcomms.xen._loop import SPIN_US_MAX, serve
from mwcomms.xen import connection, xenbus
from mwcomms.xen.platform import Platform
from mwcomms.xen.xenbus import BackendDriver, XenbusState

from ._engine import Engine

__all__ = ["InsDaemon", "main"]

log = logging.getLogger("mwcomms.ins")


def process_age() -> float:
    """Seconds since this process started (its imports included), from /proc; 0.0 when
    unknown. Logged at start-up: under emulation the INS's start is worth watching."""
    try:
        with open("/proc/self/stat") as f:
            start = int(f.read().rsplit(")", 1)[1].split()[19])     # field 22, starttime
        with open("/proc/uptime") as f:
            up = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, up - start / os.sysconf("SC_CLK_TCK"))


class _Device:
    """One frontend device: its BackLink, its BackendDriver (in a thread) and engine handle."""

    def __init__(self, daemon: "InsDaemon", front: int, devid: int):
        self.daemon = daemon
        self.front, self.devid = front, devid
        self.path = xenbus.back_path(daemon.domid, front, devid)
        self.link = connection.BackLink(daemon.plat, front, daemon.limits)
        self.client = daemon.xs_client()
        try:
            self.driver = BackendDriver(self.client, self.path, advertise=self.link.advertise,
                                        connect=self._connect, teardown=self._teardown,
                                        retry_delay=daemon.retry_delay)
        except BaseException:
            self.client.close()
            raise
        self.handle = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"ins-dev-{front}-{devid}",
                                       daemon=True)

    def _run(self) -> None:
        try:
            self.driver.run(self.stop, poll_timeout=0.2)
        except Exception:
            log.exception("device %s: handshake driver failed", self.path)

    def _connect(self, keys: dict) -> None:
        self.link.connect(keys)
        try:
            self.handle = self.daemon.engine.attach(self.link)
        except BaseException:
            self.link.teardown()
            raise
        log.info("device %s: frontend dom%d connected (engine handle %d, features %s)",
                 self.path, self.front, self.handle, " ".join(self.link.features) or "-")

    def _teardown(self) -> None:
        if self.handle:
            self.daemon.engine.detach(self.handle)
            log.info("device %s: frontend dom%d detached", self.path, self.front)
            self.handle = 0
        self.link.teardown()

    def kick_out(self, why: str) -> None:
        """The engine disconnected the frontend (a violation, or the frontend is gone): close
        the connection, then offer a fresh one."""
        log.warning("device %s: frontend dom%d disconnected: %s", self.path, self.front, why)

        def cycle():
            # the driver's XenStore connection belongs to its thread: watch with our own
            client = self.daemon.xs_client()
            try:
                self.driver.want = False        # rule 7: Closing, teardown, Closed
                end = time.monotonic() + 10
                while not self.stop.is_set() and time.monotonic() < end:
                    state = XenbusState.parse(xenbus.read_opt(client, f"{self.path}/state"))
                    if self.handle == 0 and state in (XenbusState.CLOSED, XenbusState.UNKNOWN):
                        break
                    time.sleep(0.05)
            finally:
                client.close()
                if not self.stop.is_set():
                    self.driver.want = True     # rule 1: advertise again

        # the engine disconnects a frontend that broke the protocol, and one found gone (its
        # event channel end closed): the reason says which
        what = "frontend gone" if "is gone" in why else "protocol violation"
        client = self.daemon.xs_client()
        try:
            xenbus.write_txn(client, {f"{self.path}/error": f"{what}: {why}"[:1000]},
                             require=self.path)
        except OSError:
            pass
        finally:
            client.close()
        threading.Thread(target=cycle, daemon=True).start()

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(15)
        if self.handle:                         # the driver could not leave cleanly
            self._teardown()
        self.client.close()


class InsDaemon:
    """The INS control plane (see the module docstring)."""

    def __init__(self, plat: Platform, xs_path: str | None, domid: int, *,
                 limits: connection.Limits | None = None, log_fd: int = -1,
                 max_socks: int = 0, max_buf_bytes: int = 0, retry_delay: float = 1.0,
                 stats_path: str | None = None, spin_us: int | None = None):
        self.plat = plat
        self.stats_path = stats_path
        self.xs_path = xs_path
        self.domid = domid
        self.limits = limits or connection.Limits()
        self.retry_delay = retry_delay
        self.engine = Engine(log_fd=log_fd, max_socks=max_socks, max_buf_bytes=max_buf_bytes,
                             spin_us=spin_us)
        self.devices: dict[tuple[int, int], _Device] = {}
        self.root = f"/local/domain/{domid}/backend/mwcomms"
        self.imported_at = 0.0                  # process_age() when main() began

    def xs_client(self) -> pyxs.Client:
        return xenbus.connect_xenstore(self.xs_path)

    def _scan(self, client: pyxs.Client) -> set[tuple[int, int]]:
        """The devices the toolstack has attached to this INS now."""
        found = set()
        try:
            fronts = client.list(self.root.encode())
        except pyxs.PyXSError:
            return found
        for f in fronts:
            if not f.isdigit():
                continue
            try:
                devs = client.list(f"{self.root}/{f.decode()}".encode())
            except pyxs.PyXSError:
                continue
            found.update((int(f), int(d)) for d in devs if d.isdigit())
        return found

    def _sync(self, client: pyxs.Client) -> None:
        now = self._scan(client)
        for key in sorted(now - set(self.devices)):
            try:
                dev = _Device(self, *key)
            except OSError as exc:               # e.g. `frontend` not written yet
                log.debug("device %s: not ready: %s", key, exc)
                continue
            self.devices[key] = dev
            dev.start()
            log.info("device %s: watching", dev.path)
        for key in sorted(set(self.devices) - now):
            dev = self.devices.pop(key)
            dev.close()
            log.info("device %s: removed by the toolstack", dev.path)

    def _violations(self) -> None:
        for handle, why in self.engine.broken().items():
            for dev in self.devices.values():
                if dev.handle == handle:
                    dev.kick_out(why)

    def stats(self, client: pyxs.Client) -> dict:
        """The engine's counters per device (for mwctl); `client` is the caller's own XenStore
        connection (a driver's belongs to its thread)."""
        out = {}
        for (front, devid), dev in list(self.devices.items()):
            state = XenbusState.parse(xenbus.read_opt(client, f"{dev.path}/state"))
            entry = {"front": front, "devid": devid, "state": state.name}
            handle = dev.handle
            if handle:
                try:
                    entry.update(self.engine.stats(handle))
                except OSError:
                    pass
            out[dev.path] = entry
        return out

    def _write_stats(self, client: pyxs.Client) -> None:
        if not self.stats_path:
            return
        tmp = f"{self.stats_path}.tmp"
        try:
            with open(tmp, "w") as f:
                json.dump({"domid": self.domid, "time": time.time(), "devices": self.stats(client)},
                          f, indent=1)
            os.replace(tmp, self.stats_path)
        except OSError as exc:
            log.warning("stats: %s", exc)

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set, then close every device and the engine."""
        self.engine.start()
        next_stats = 0.0
        client = self.xs_client()
        monitor = pyxs.Monitor(copy.copy(client))   # as xenbus does: shares the connection
        try:
            monitor.watch(self.root.encode(), b"mwcomms-ins")
            log.info("INS dom%d: serving %s (%.1f s after the process started, %.1f s of it "
                     "importing)", self.domid, self.root, process_age(), self.imported_at)
            while not stop.is_set():
                self._sync(client)
                # watch events come through the monitor's queue; violations through the
                # engine's fd; both are looked at at least every 0.2 s
                if select.select([self.engine.notify_fd], [], [], 0)[0]:
                    self._violations()
                if time.monotonic() >= next_stats:
                    self._write_stats(client)
                    next_stats = time.monotonic() + 1.0
                try:
                    monitor.events.get(timeout=0.2)
                    while True:
                        monitor.events.get_nowait()
                except queue.Empty:
                    pass
        finally:
            try:
                monitor.close()
            except pyxs.PyXSError:
                pass
            for dev in self.devices.values():
                dev.stop.set()
            for dev in list(self.devices.values()):
                dev.close()
            self.devices.clear()
            self.engine.close()
            client.close()
            log.info("INS dom%d: stopped", self.domid)


def _xen_domid(xs_path: str | None) -> int:
    client = xenbus.connect_xenstore(xs_path)
    try:
        return int(client.read(b"domid"))
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    imported_at = process_age()
    ap = argparse.ArgumentParser(prog="python -m mwcomms.ins.daemon", description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=("sim", "xen"), default=None)
    ap.add_argument("--sim-dir", help="sim platform directory")
    ap.add_argument("--domid", type=int, help="this INS's domain id (sim; on Xen read from "
                                              "XenStore)")
    ap.add_argument("--xenstore", help="XenStore socket or xenbus device (default: the "
                                       "local xenstored, else /dev/xen/xenbus)")
    ap.add_argument("--log", help="log file (default: stderr)")
    ap.add_argument("--max-socks", type=int, default=0, help="sockets per frontend")
    ap.add_argument("--spin-us", type=int, default=None,
                    help="microseconds the engine keeps polling after work before it sleeps "
                         "(default: $MW_SPIN_US, else 50; 0: never poll; at most 1000; not while "
                         "the machine has more runnable tasks than CPUs): a wake-up costs more "
                         "than that on a small VM")
    ap.add_argument("--max-buf-mb", type=int, default=0,
                    help="memory the INS may hold per frontend (unsent bytes of closed "
                         "sockets), MiB (default: the frontend's data area, at most 64)")
    ap.add_argument("--stats", help="write the engine's counters per device here as JSON, "
                                    "every second")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.spin_us is not None and not 0 <= args.spin_us <= SPIN_US_MAX:
        ap.error(f"--spin-us {args.spin_us}: must be 0 (never poll) to {SPIN_US_MAX}")

    level = logging.DEBUG if args.verbose else logging.INFO
    fmt = "%(asctime)s %(name)s %(levelname)s %(message)s"
    log_fd = -1
    if args.log:
        logging.basicConfig(filename=args.log, level=level, format=fmt)
        log_fd = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    else:
        logging.basicConfig(stream=sys.stderr, level=level, format=fmt)

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        if args.backend == "sim" or (args.backend is None and args.sim_dir):
            if args.domid is None or not args.sim_dir:
                ap.error("sim needs --sim-dir and --domid")
            plat = Platform("sim", sim_dir=args.sim_dir, domid=args.domid)
            domid = args.domid
        else:
            plat = Platform(args.backend)
            domid = args.domid if args.domid is not None else _xen_domid(args.xenstore)
    except OSError as exc:
        log.error("platform: %s", exc)
        return 1
    try:
        daemon = InsDaemon(plat, args.xenstore, domid, log_fd=log_fd,
                           max_socks=args.max_socks, max_buf_bytes=args.max_buf_mb << 20,
                           stats_path=args.stats, spin_us=args.spin_us)
        daemon.imported_at = imported_at
        if serve(daemon.run, stop, "INS", log):
            return 1
    except OSError as exc:
        log.error("INS: %s", exc)
        return 1
    finally:
        plat.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
