"""The XenbusState handshake of mwcomms devices, driven over XenStore with pyxs.

Node layout (docs/protocol.md, "Negotiation"):

    /local/domain/<front>/device/mwcomms/<n>/         the frontend's (mwcommsd's) keys
    /local/domain/<ins>/backend/mwcomms/<front>/<n>/  the backend's (the INS's) keys

`attach` is the toolstack step (dom0, `mwctl attach`): it creates both directories with their
owners and permissions. `FrontendDriver` and `BackendDriver` then run the rules of
_xenbus_state.py: they watch both `state` nodes, ask the table what to do, call back into the
component (set up, connect, tear down) and write the next state. Writes that belong together
go in one transaction, retried on EAGAIN.
"""
from __future__ import annotations

import argparse
import copy
import errno
import logging
import os
import queue
import stat
import sys
import threading
import time
from typing import Callable, Mapping

import pyxs

from ._xenbus_state import Act, XenbusState, backend_step, frontend_step, stale_start

__all__ = [
    "XenbusState", "front_path", "back_path", "introduce", "attach", "detach", "connect_xenstore",
    "write_txn", "read_dir", "read_opt", "FrontendDriver", "BackendDriver", "HandshakeError",
]

log = logging.getLogger("mwcomms.xenbus")

DEVICE_KIND = "mwcomms"
TXN_RETRIES = 32


class HandshakeError(OSError):
    """The handshake could not proceed (timeout, XenStore refused a write, bad peer keys)."""


def front_path(front: int, devid: int = 0) -> str:
    return f"/local/domain/{front}/device/{DEVICE_KIND}/{devid}"


def back_path(ins: int, front: int, devid: int = 0) -> str:
    return f"/local/domain/{ins}/backend/{DEVICE_KIND}/{front}/{devid}"


XENBUS_DEVICE = "/dev/xen/xenbus"
XENSTORED_SOCKET = "/run/xenstored/socket"


def connect_xenstore(socket_path: str | None = None, xenbus_path: str | None = None) -> pyxs.Client:
    """Open and connect a pyxs client: a Unix socket (dom0, or the sim xenstored), else the
    xenbus device of a domU. A `socket_path` that is a character device is taken as a xenbus
    device; with neither, the local xenstored's socket when there is one, else /dev/xen/xenbus
    (a domU: the INS image, a protected domU)."""
    if socket_path and not xenbus_path and _is_chardev(socket_path):
        socket_path, xenbus_path = None, socket_path
    if not socket_path and not xenbus_path and not os.path.exists(XENSTORED_SOCKET) \
            and os.path.exists(XENBUS_DEVICE):
        xenbus_path = XENBUS_DEVICE
    if socket_path:
        client = pyxs.Client(unix_socket_path=socket_path)
    elif xenbus_path:
        client = pyxs.Client(xen_bus_path=xenbus_path)
    else:
        client = pyxs.Client()
    client.connect()
    return client


def _is_chardev(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def _b(s: str | bytes) -> bytes:
    return s if isinstance(s, bytes) else s.encode("ascii")


def _oserror(exc: pyxs.PyXSError, what: str) -> OSError:
    """Turn a pyxs error (args[0] is an errno) into an OSError that says what failed."""
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else errno.EIO
    return HandshakeError(code, f"{what}: {errno.errorcode.get(code, code)}")


def write_txn(client: pyxs.Client, items: Mapping[str, str], remove: tuple[str, ...] = (),
              perms: Mapping[str, list[str]] | None = None, require: str | None = None) -> bool:
    """Write `items` (path -> value), remove `remove` and set `perms` in one transaction,
    retried while XenStore answers EAGAIN (another writer committed first).

    @param require  write only if this node exists (checked inside the transaction)
    @return False when `require` was missing and nothing was written, else True
    """
    for _ in range(TXN_RETRIES):
        client.transaction()
        try:
            if require is not None and not client.exists(_b(require)):
                client.rollback()
                return False
            for path in remove:
                if client.exists(_b(path)):
                    client.delete(_b(path))
            for path, value in items.items():
                if value == "":
                    client.mkdir(_b(path))   # pyxs writes no empty values: a directory
                else:
                    client.write(_b(path), _b(str(value)))
            for path, plist in (perms or {}).items():
                client.set_perms(_b(path), [_b(p) for p in plist])
        except pyxs.PyXSError as exc:
            client.rollback()
            raise _oserror(exc, f"transaction on {next(iter(items), '?')}") from None
        except BaseException:
            client.rollback()
            raise
        if client.commit():
            return True
    raise HandshakeError(errno.EAGAIN, f"transaction kept conflicting after {TXN_RETRIES} tries")


def read_opt(client: pyxs.Client, path: str) -> bytes | None:
    """Read a node that may be absent (pyxs raises ENOENT for a missing node)."""
    try:
        return client.read(_b(path))
    except pyxs.PyXSError as exc:
        if exc.args and exc.args[0] == errno.ENOENT:
            return None
        raise


def read_dir(client: pyxs.Client, path: str) -> dict[str, str]:
    """Read every key directly under `path` (one level), as text. Missing -> {}."""
    out: dict[str, str] = {}
    try:
        names = client.list(_b(path))
    except pyxs.PyXSError as exc:
        if exc.args and exc.args[0] == errno.ENOENT:
            return out
        raise _oserror(exc, f"list {path}") from None
    for name in names:
        value = read_opt(client, f"{path}/{name.decode()}")
        if value is not None:
            out[name.decode()] = value.decode("ascii", "replace")
    return out


def introduce(client: pyxs.Client, domid: int) -> str:
    """Toolstack step of the sim backend, done by xl on real Xen when it builds a domain:
    introduce domain `domid` to XenStore and give it its home, /local/domain/<domid>, owned by
    it. (The ring page and event channel of INTRODUCE mean nothing to the sim xenstored.)
    @return the home's path"""
    home = f"/local/domain/{domid}"
    client.introduce_domain(domid, 0xfefff - domid, 1)
    write_txn(client, {home: "", f"{home}/domid": str(domid)},
              perms={home: [f"n{domid}"], f"{home}/domid": [f"n{domid}"]})
    return home


def attach(client: pyxs.Client, front: int, ins: int, devid: int = 0) -> tuple[str, str]:
    """Toolstack step: create the frontend and backend directories of device `devid`.

    The frontend's directory is owned by the frontend domain and readable by the INS; the
    backend's the other way round. So neither side can write the other's keys.
    """
    fp, bp = front_path(front, devid), back_path(ins, front, devid)
    items = {
        fp: "", f"{fp}/backend": bp, f"{fp}/backend-id": str(ins),
        f"{fp}/state": str(int(XenbusState.INITIALISING)),
        bp: "", f"{bp}/frontend": fp, f"{bp}/frontend-id": str(front),
        f"{bp}/state": str(int(XenbusState.INITIALISING)),
    }
    fperm, bperm = [f"n{front}", f"r{ins}"], [f"n{ins}", f"r{front}"]
    perms = {fp: fperm, f"{fp}/backend": fperm, f"{fp}/backend-id": fperm, f"{fp}/state": fperm,
             bp: bperm, f"{bp}/frontend": bperm, f"{bp}/frontend-id": bperm, f"{bp}/state": bperm}
    write_txn(client, items, perms=perms)
    return fp, bp


def detach(client: pyxs.Client, front: int, ins: int, devid: int = 0) -> None:
    """Toolstack step: remove both directories of device `devid` (the drivers see Unknown)."""
    fp, bp = front_path(front, devid), back_path(ins, front, devid)
    write_txn(client, {}, remove=(fp, bp))


class _Driver:
    """One side of the handshake of one device. Subclasses give the table and the actions."""

    role = "?"
    peer_key = "?"

    def __init__(self, client: pyxs.Client, path: str, *, retry_delay: float = 1.0):
        """`client` belongs to this driver and the thread that runs it from now on."""
        self.client = client
        self.path = path
        self.retry_delay = retry_delay
        self.peer_path = self._read_peer_path()
        self.want = True
        self.state = XenbusState.UNKNOWN   # this side's state as the driver last read or wrote it
        self._events: queue.Queue | None = None
        self._monitor = None
        self._last_error = ""

    # -- XenStore access -----------------------------------------------------------------
    def _read_peer_path(self) -> str:
        raw = read_opt(self.client, f"{self.path}/{self.peer_key}")
        if raw is None:
            raise HandshakeError(errno.ENOENT, f"{self.path}/{self.peer_key} missing: not attached")
        return raw.decode("ascii", "replace")

    def my_state(self) -> XenbusState:
        self.state = XenbusState.parse(read_opt(self.client, f"{self.path}/state"))
        return self.state

    def peer_state(self) -> XenbusState:
        try:
            return XenbusState.parse(read_opt(self.client, f"{self.peer_path}/state"))
        except pyxs.PyXSError:
            return XenbusState.UNKNOWN   # unreadable reads as a peer that is not there

    def peer_keys(self) -> dict[str, str]:
        return read_dir(self.client, self.peer_path)

    def write_state(self, state: XenbusState, extra: Mapping[str, str] | None = None) -> bool:
        """Publish `state` (and `extra` keys) in one transaction, unless the toolstack has
        removed the device meanwhile. @return whether it was written."""
        items = {f"{self.path}/{k}": v for k, v in (extra or {}).items()}
        items[f"{self.path}/state"] = str(int(state))
        # A successful action clears the error of an earlier failed attempt.
        remove = (f"{self.path}/error",) if extra is not None else ()
        if not write_txn(self.client, items, remove=remove, require=self.path):
            return False
        self.state = state
        log.info("%s %s: state %s", self.role, self.path, state.name)
        return True

    def device_exists(self) -> bool:
        return bool(self.client.exists(_b(self.path)))

    # -- watching ------------------------------------------------------------------------
    def _start_watch(self) -> None:
        # A Monitor shares the client's connection; pyxs refuses Monitor() on a xenbus device,
        # whose watch events we read the same way, so build it directly.
        self._monitor = pyxs.Monitor(copy.copy(self.client))
        self._events = self._monitor.events
        token = _b(f"mwcomms-{self.role}-{id(self)}")
        self._monitor.watch(_b(f"{self.path}/state"), token)
        self._monitor.watch(_b(f"{self.peer_path}/state"), token)

    def _stop_watch(self) -> None:
        if self._monitor is not None:
            try:
                self._monitor.close()
            except pyxs.PyXSError:
                pass
            self._monitor = None

    def _wait_event(self, timeout: float) -> None:
        """Sleep until a watch fires or `timeout` passes; merge bursts of events."""
        try:
            self._events.get(timeout=timeout)
            while True:
                self._events.get_nowait()
        except queue.Empty:
            pass

    # -- the loop ------------------------------------------------------------------------
    def table(self, me: XenbusState, peer: XenbusState):
        raise NotImplementedError

    def owns_resources(self) -> bool:
        """True while the component holds what SETUP / CONNECT gave it."""
        raise NotImplementedError

    def act(self, act: Act) -> dict[str, str] | None:
        raise NotImplementedError

    def step_once(self) -> bool:
        """Evaluate the table once and carry out its answer. @return True when something
        was done (the caller evaluates again at once), False when waiting for the peer."""
        if not self.device_exists():
            # Detached by the toolstack: let go of everything and write nothing (a write
            # would create the node again).
            if self.owns_resources():
                self.act(Act.TEARDOWN)
                return True
            return False
        me, peer = self.my_state(), self.peer_state()
        step = self.table(me, peer)
        if step.act is Act.NOTHING and step.state is None:
            return False
        log.debug("%s %s: me=%s peer=%s -> %s %s", self.role, self.path, me.name, peer.name,
                  step.act.value, step.state.name if step.state is not None else "-")
        extra = None
        if step.act is not Act.NOTHING:
            try:
                extra = self.act(step.act) or {}   # success clears an earlier error
            except Exception as exc:  # the component failed: say so in XenStore, back off
                self._fail(step.act, exc)
                return False
        if step.state is not None:
            self.write_state(step.state, extra)
        return True

    def _fail(self, act: Act, exc: Exception) -> None:
        msg = f"{act.value} failed: {exc}"
        log.warning("%s %s: %s", self.role, self.path, msg)
        self._last_error = msg
        try:
            write_txn(self.client, {f"{self.path}/error": msg[:1000]})
        except OSError:
            pass
        time.sleep(self.retry_delay)

    def run(self, stop: threading.Event, *, poll_timeout: float = 0.5) -> None:
        """Drive the handshake until `stop` is set, then leave cleanly (Closing -> Closed)."""
        self._start_watch()
        try:
            if stale_start(self.my_state()):
                log.info("%s %s: stale state from a previous run, closing first", self.role, self.path)
                self.want = False
                self._leave(deadline=time.monotonic() + 10)
                self.want = True
            while not stop.is_set():
                if not self.step_once():
                    self._wait_event(poll_timeout)
            self.want = False
            self._leave(deadline=time.monotonic() + 10)
        finally:
            self._stop_watch()

    def _leave(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if not self.step_once():
                if not self.device_exists() or self.my_state() in (
                        XenbusState.CLOSED, XenbusState.UNKNOWN, XenbusState.INITIALISING):
                    return
                self._wait_event(0.2)
        # The peer never answered: close anyway, the peer's own rules catch up later.
        self.act(Act.TEARDOWN)
        self.write_state(XenbusState.CLOSED)

    def wait_for(self, state: XenbusState, timeout: float) -> bool:
        """Wait (from another thread: tests, tools) until this side's driver has seen or
        written `state`. It reads the driver's record, not XenStore: a pyxs client must stay
        with one thread (pyxs numbers requests with a global counter that is not atomic, so
        two threads on one connection can get each other's replies)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.state == state:
                return True
            time.sleep(0.01)
        return False


class FrontendDriver(_Driver):
    """The frontend (mwcommsd) side. `setup(backend_keys) -> keys to publish` shares the area
    and allocates the event channel; `teardown()` undoes it; `connected()` starts the engine."""

    role = "frontend"
    peer_key = "backend"

    def __init__(self, client, path, *, setup: Callable[[dict], Mapping[str, str]],
                 teardown: Callable[[], None], connected: Callable[[], None] = lambda: None,
                 **kw):
        super().__init__(client, path, **kw)
        self._setup, self._teardown, self._connected = setup, teardown, connected
        self._is_set_up = False

    def table(self, me, peer):
        return frontend_step(me, peer, want=self.want)

    def owns_resources(self):
        return self._is_set_up

    def act(self, act):
        if act is Act.SETUP:
            if self._is_set_up:
                self._teardown()
                self._is_set_up = False
            keys = dict(self._setup(self.peer_keys()))
            self._is_set_up = True
            return keys
        if act is Act.TEARDOWN:
            if self._is_set_up:
                self._is_set_up = False
                self._teardown()
            return None
        raise ValueError(act)

    def write_state(self, state, extra=None):
        written = super().write_state(state, extra)
        if written and state is XenbusState.CONNECTED:
            self._connected()
        return written


class BackendDriver(_Driver):
    """The backend (INS) side. `advertise() -> keys` (versions, features, limits);
    `connect(frontend_keys)` maps the area and binds the event channel, raising on a bad or
    hostile frontend; `teardown()` disconnects."""

    role = "backend"
    peer_key = "frontend"

    def __init__(self, client, path, *, advertise: Callable[[], Mapping[str, str]],
                 connect: Callable[[dict], None], teardown: Callable[[], None], **kw):
        super().__init__(client, path, **kw)
        self._advertise, self._connect, self._teardown = advertise, connect, teardown
        self._is_connected = False

    def table(self, me, peer):
        return backend_step(me, peer, want=self.want)

    def owns_resources(self):
        return self._is_connected

    def act(self, act):
        if act is Act.ADVERTISE:
            return dict(self._advertise())
        if act is Act.CONNECT:
            self._connect(self.peer_keys())
            self._is_connected = True
            return None
        if act is Act.TEARDOWN:
            if self._is_connected:
                self._is_connected = False
                self._teardown()
            return None
        raise ValueError(act)


# ---------------------------------------------------------------------------------------
# Self-test: both sides in one process against a live xenstored (sim or real), with
# components that only record what they were asked to do. Prints XENBUS PASS/FAIL lines.

class _Recorder:
    def __init__(self):
        self.calls: list[str] = []

    def front_ops(self):
        return dict(setup=lambda keys: (self.calls.append("setup"), {"event-channel": "7"})[1],
                    teardown=lambda: self.calls.append("front-teardown"))

    def back_ops(self):
        def connect(keys):
            if keys.get("event-channel") != "7":
                raise HandshakeError(errno.EPROTO, f"frontend keys {keys}")
            self.calls.append("connect")
        return dict(advertise=lambda: {"versions": "1"}, connect=connect,
                    teardown=lambda: self.calls.append("back-teardown"))


def _start(driver) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    t = threading.Thread(target=driver.run, args=(stop,), daemon=True)
    t.start()
    return t, stop


def selftest(socket_path: str | None, front: int = 0, ins: int = 0, devid: int = 7,
             timeout: float = 20.0) -> int:
    """Run the handshake scenarios of the foundation issue; @return the number of failures."""
    failures = 0

    def check(ok: bool, name: str, why: str = "") -> None:
        nonlocal failures
        print(f"XENBUS {'PASS' if ok else 'FAIL'} {name}{'' if ok else ': ' + why}", flush=True)
        failures += not ok

    S = XenbusState
    clients: list[pyxs.Client] = []

    def client() -> pyxs.Client:
        clients.append(connect_xenstore(socket_path))
        return clients[-1]

    tool = client()
    try:
        for order in ("front-first", "back-first"):
            detach(tool, front, ins, devid)
            fp, bp = attach(tool, front, ins, devid)
            rec = _Recorder()
            fc, bc = client(), client()
            fd = FrontendDriver(fc, fp, **rec.front_ops(), retry_delay=0.1)
            bd = BackendDriver(bc, bp, **rec.back_ops(), retry_delay=0.1)
            first, second = (fd, bd) if order == "front-first" else (bd, fd)
            t1, s1 = _start(first)
            time.sleep(0.3)
            t2, s2 = _start(second)
            ok = fd.wait_for(S.CONNECTED, timeout) and bd.wait_for(S.CONNECTED, timeout)
            check(ok, f"connect-{order}", f"front={fd.state.name} back={bd.state.name}")

            # Restart of the backend: it goes Closing/Closed, the frontend follows and both
            # connect again once a new backend runs.
            s2_stop = s2 if second is bd else s1
            t_b = t2 if second is bd else t1
            s2_stop.set()
            t_b.join(timeout)
            check(bd.state == S.CLOSED, f"backend-leave-{order}", bd.state.name)
            ok = fd.wait_for(S.CLOSED, timeout)
            check(ok, f"frontend-follows-backend-down-{order}", fd.state.name)
            bd2 = BackendDriver(client(), bp, **rec.back_ops(), retry_delay=0.1)
            tb2, sb2 = _start(bd2)
            ok = fd.wait_for(S.CONNECTED, timeout) and bd2.wait_for(S.CONNECTED, timeout)
            check(ok, f"reconnect-after-backend-restart-{order}",
                  f"front={fd.state.name} back={bd2.state.name}")

            # Restart of the frontend.
            s_f = s1 if first is fd else s2
            t_f = t1 if first is fd else t2
            s_f.set()
            t_f.join(timeout)
            check(fd.state == S.CLOSED, f"frontend-leave-{order}", fd.state.name)
            ok = bd2.wait_for(S.INITWAIT, timeout)
            check(ok, f"backend-follows-frontend-down-{order}", bd2.state.name)
            fd2 = FrontendDriver(client(), fp, **rec.front_ops(), retry_delay=0.1)
            tf2, sf2 = _start(fd2)
            ok = fd2.wait_for(S.CONNECTED, timeout) and bd2.wait_for(S.CONNECTED, timeout)
            check(ok, f"reconnect-after-frontend-restart-{order}",
                  f"front={fd2.state.name} back={bd2.state.name}")
            sf2.set(); sb2.set()
            tf2.join(timeout); tb2.join(timeout)
            check(rec.calls.count("connect") == 3, f"component-calls-{order}", str(rec.calls))
        detach(tool, front, ins, devid)
    finally:
        for c in clients:
            c.close()
    print(f"XENBUS RESULT: {'PASS' if not failures else 'FAIL'} ({failures} failures)", flush=True)
    return failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mwcomms.xen.xenbus",
                                 description="XenbusState handshake of mwcomms devices")
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("selftest", help="run the handshake scenarios against a xenstored")
    st.add_argument("--socket", default=None, help="xenstored Unix socket (default: pyxs default)")
    st.add_argument("--front", type=int, default=0)
    st.add_argument("--ins", type=int, default=0)
    st.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    return 1 if selftest(args.socket, args.front, args.ins) else 0


if __name__ == "__main__":
    sys.exit(main())
