"""The simulation's xenstored: the XenStore wire protocol on Unix sockets, one process.

Connections on `<dir>/socket` are domain 0 (privileged), as on the C daemon's Unix socket.
INTRODUCE (from domain 0) of domain N opens `<dir>/domain/N.sock`, where every connection acts
as domain N (unprivileged, relative paths under /local/domain/N); RELEASE closes it. Like the
real daemon, INTRODUCE does not create /local/domain/N: the toolstack does. pyxs's
`Client(unix_socket_path=...)` works unchanged on either socket.

The rules (paths, permissions, watches, transactions, quotas) are in _xsstore.py, the framing
in _xswire.py; this module moves bytes, and gives the command line and a Python API:

    python -m mwcomms.xen.xenstored --dir DIR [--foreground] [--pid-file F] [--log F]

    with xenstored.running() as xs:                 # a thread; mode="process" for a child
        client = pyxs.Client(unix_socket_path=xs.socket_path)
        ... client.introduce_domain(5, 0, 1) ...    # then xs.domain_socket(5)

A client that breaks the framing (a length beyond 4096) is disconnected; unknown types get
ENOSYS; a client that stops reading is disconnected once MAX_OUTPUT bytes wait for it.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Iterator

from ._xsstore import Connection, Quotas, Store
from ._xswire import FrameError, Message, Op, Reader, encode, error_payload

__all__ = ["Xenstored", "Quotas", "start", "running", "introduce_domain", "release_domain",
           "main"]

log = logging.getLogger("mwcomms.xenstored")

MAX_OUTPUT = 16 << 20       # bytes queued for one client before it is dropped
_SUN_PATH_MAX = 107


def _listen(path: str) -> socket.socket:
    """A listening Unix socket at `path`, published only once it listens (bound under a
    temporary name, then renamed): whoever sees the path can connect."""
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise OSError(errno.ENAMETOOLONG, f"socket path too long for AF_UNIX: {path}")
    tmp = f"{path}.{os.getpid()}.tmp"
    if len(os.fsencode(tmp)) > _SUN_PATH_MAX:
        tmp = path
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(tmp)
        sock.listen(64)
        if tmp != path:
            os.replace(tmp, path)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class _Client:
    """One accepted connection: its socket, framing state and unsent bytes."""

    def __init__(self, sock: socket.socket, conn: Connection):
        self.sock = sock
        self.conn = conn
        self.reader = Reader()
        self.outbuf = bytearray()
        self.events = selectors.EVENT_READ


class Daemon:
    """The event loop. Construct (binds the main socket), then run() until stop()."""

    def __init__(self, directory: str, quotas: Quotas | None = None):
        self.dir = os.path.abspath(directory)
        self.socket_path = os.path.join(self.dir, "socket")
        self.domain_dir = os.path.join(self.dir, "domain")
        os.makedirs(self.domain_dir, exist_ok=True)
        self.store = Store(quotas, on_introduce=self._introduced, on_release=self._released)
        self.sel = selectors.DefaultSelector()
        self.listeners: dict[int, socket.socket] = {}     # domid -> listening socket
        self.clients: dict[int, _Client] = {}             # fd -> client
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._stopping = False
        self.max_output = MAX_OUTPUT
        self._add_listener(0, self.socket_path)

    # -- sockets -------------------------------------------------------------------------
    def domain_socket(self, domid: int) -> str:
        return os.path.join(self.domain_dir, f"{domid}.sock")

    def _add_listener(self, domid: int, path: str) -> None:
        sock = _listen(path)
        self.listeners[domid] = sock
        self.sel.register(sock, selectors.EVENT_READ, ("listen", domid))

    def _introduced(self, domid: int) -> None:
        log.info("domain %d introduced: %s", domid, self.domain_socket(domid))
        self._add_listener(domid, self.domain_socket(domid))

    def _released(self, domid: int) -> None:
        log.info("domain %d released", domid)
        sock = self.listeners.pop(domid, None)
        if sock is not None:
            self.sel.unregister(sock)
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.domain_socket(domid))
        for client in [c for c in self.clients.values() if c.conn.domid == domid]:
            self._drop(client, "domain released")

    def _accept(self, domid: int) -> None:
        try:
            sock, _ = self.listeners[domid].accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:          # EMFILE and friends: keep serving the others
            log.warning("accept on domain %d socket: %s", domid, exc)
            return
        sock.setblocking(False)
        client = _Client(sock, self.store.connect(domid))
        self.clients[sock.fileno()] = client
        self.sel.register(sock, selectors.EVENT_READ, ("client", client))
        log.debug("connection fd %d as domain %d", sock.fileno(), domid)

    def _drop(self, client: _Client, why: str) -> None:
        fd = client.sock.fileno()
        if self.clients.pop(fd, None) is None:
            return
        log.info("dropping connection fd %d (domain %d): %s", fd, client.conn.domid, why)
        self.sel.unregister(client.sock)
        client.sock.close()
        self.store.disconnect(client.conn)

    # -- data ----------------------------------------------------------------------------
    def _readable(self, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._drop(client, str(exc))
            return
        if not data:
            self._drop(client, "closed by peer")
            return
        try:
            for msg in client.reader.feed(data):
                self._request(client, msg)
                if client.conn.closed:
                    break
        except FrameError as exc:
            self._drop(client, f"protocol error: {exc}")
        self._flush_all()

    def _request(self, client: _Client, msg: Message) -> None:
        try:
            self.store.request(client.conn, msg.type, msg.req_id, msg.tx_id, msg.payload)
        except Exception:       # a bug in the store must not take the daemon down
            log.exception("request type %d from domain %d", msg.type, client.conn.domid)
            client.conn.out.append((Op.ERROR, msg.req_id, msg.tx_id, error_payload(errno.EIO)))

    def _flush_all(self) -> None:
        """Move every queued reply and event into its socket."""
        for client in list(self.clients.values()):
            if client.conn.out:
                for item in client.conn.out:
                    client.outbuf += encode(Message(*item))
                client.conn.out.clear()
            if client.outbuf:
                self._writable(client)

    def _writable(self, client: _Client) -> None:
        if client.outbuf:
            try:
                sent = client.sock.send(client.outbuf)
                del client.outbuf[:sent]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                self._drop(client, str(exc))
                return
        if len(client.outbuf) > self.max_output:
            self._drop(client, f"{len(client.outbuf)} bytes unread")
            return
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.outbuf else 0)
        if want != client.events:
            client.events = want
            self.sel.modify(client.sock, want, ("client", client))

    # -- loop ----------------------------------------------------------------------------
    def run(self) -> None:
        try:
            while not self._stopping:
                for key, mask in self.sel.select():
                    kind, obj = key.data
                    if kind == "wake":
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 512)
                    elif kind == "listen":
                        self._accept(obj)
                    elif obj.sock.fileno() in self.clients:
                        if mask & selectors.EVENT_READ:
                            self._readable(obj)
                        if mask & selectors.EVENT_WRITE and obj.sock.fileno() in self.clients:
                            self._writable(obj)
        finally:
            self._close()

    def stop(self) -> None:
        """Ask run() to return (from any thread or a signal handler)."""
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _close(self) -> None:
        for client in list(self.clients.values()):
            self._drop(client, "daemon stopping")
        for domid, sock in list(self.listeners.items()):
            sock.close()
            path = self.socket_path if domid == 0 else self.domain_socket(domid)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self.listeners.clear()
        self.sel.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


# ---------------------------------------------------------------------------------------
# Python API

class Xenstored:
    """A running sim xenstored: `dir`, `socket_path` (domain 0), `domain_socket(domid)`."""

    def __init__(self, directory: str, *, thread: threading.Thread | None = None,
                 daemon: Daemon | None = None, process: subprocess.Popen | None = None,
                 own_dir: bool = False):
        self.dir = directory
        self.socket_path = os.path.join(directory, "socket")
        self._thread, self._daemon, self._process = thread, daemon, process
        self._own_dir = own_dir

    def domain_socket(self, domid: int) -> str:
        """The socket of domain `domid` (present while it is introduced)."""
        return os.path.join(self.dir, "domain", f"{domid}.sock")

    @property
    def pid(self) -> int:
        return self._process.pid if self._process else os.getpid()

    def stop(self) -> None:
        if self._daemon is not None:
            self._daemon.stop()
            self._thread.join(5)
            self._daemon = None
        if self._process is not None:
            if self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(5)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
            self._process = None
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self._own_dir = False

    def __enter__(self) -> "Xenstored":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _quota_args(quotas: Quotas | None) -> list[str]:
    if quotas is None:
        return []
    return ["--entry-nb", str(quotas.nodes), "--watch-nb", str(quotas.watches),
            "--transaction", str(quotas.transactions), "--entry-size", str(quotas.node_size),
            "--perm-nb", str(quotas.perms)]


def start(directory: str | None = None, *, mode: str = "thread", quotas: Quotas | None = None,
          log_file: str | None = None, timeout: float = 5.0) -> Xenstored:
    """Start a sim xenstored and return once its socket accepts connections.

    @param directory where `socket` and `domain/` go (default: a new short directory in
                     /tmp, removed on stop; AF_UNIX paths must stay under 108 bytes)
    @param mode      "thread" (in this process) or "process" (a child running the CLI)
    @return a Xenstored; stop() it, or use it as a context manager
    @raise OSError when the daemon cannot start (ENAMETOOLONG for a too-long directory)
    """
    own = directory is None
    if own:
        directory = tempfile.mkdtemp(prefix="xs", dir="/tmp")
    directory = os.path.abspath(directory)
    try:
        if mode == "thread":
            daemon = Daemon(directory, quotas)
            thread = threading.Thread(target=daemon.run, name="xenstored", daemon=True)
            thread.start()
            return Xenstored(directory, thread=thread, daemon=daemon, own_dir=own)
        if mode != "process":
            raise ValueError(f"mode must be 'thread' or 'process', not {mode!r}")
        sock = os.path.join(directory, "socket")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(sock)
        cmd = [sys.executable, "-m", "mwcomms.xen.xenstored", "--dir", directory, "--foreground"]
        cmd += _quota_args(quotas) + (["--log", log_file] if log_file else [])
        env = dict(os.environ, PYTHONSAFEPATH="1")
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not os.path.exists(sock):
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace").strip()
                raise OSError(errno.EIO, f"xenstored exited with {proc.returncode}: {err}")
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise OSError(errno.ETIMEDOUT, f"xenstored did not start within {timeout}s")
            time.sleep(0.005)
        proc.stderr.close()
        return Xenstored(directory, process=proc, own_dir=own)
    except BaseException:
        if own:
            shutil.rmtree(directory, ignore_errors=True)
        raise


@contextlib.contextmanager
def running(directory: str | None = None, **kwargs) -> Iterator[Xenstored]:
    """`with running() as xs:` a sim xenstored for the block; see start()."""
    xs = start(directory, **kwargs)
    try:
        yield xs
    finally:
        xs.stop()


def introduce_domain(client, domid: int) -> None:
    """Introduce domain `domid` from a domain-0 pyxs client, as the toolstack does (the sim
    ignores the ring page; the event channel must be non-zero). Its socket appears at once."""
    client.introduce_domain(domid, 0, 1)


def release_domain(client, domid: int) -> None:
    """RELEASE domain `domid`: its connections close, the nodes it owns go, @releaseDomain
    fires. (pyxs's own release_domain refuses to run outside a real dom0.)"""
    client.execute_command(Op.RELEASE, f"{domid}\0".encode())


# ---------------------------------------------------------------------------------------
# Command line

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mwcomms.xen.xenstored",
                                 description="XenStore daemon of the mwcomms simulation")
    ap.add_argument("--dir", required=True, help="directory for socket and domain/*.sock")
    ap.add_argument("--foreground", "-N", action="store_true", help="do not detach")
    ap.add_argument("--pid-file", "-F", help="write the daemon's pid here")
    ap.add_argument("--log", "-T", help="log file (default: stderr in the foreground)")
    ap.add_argument("--verbose", "-V", action="store_true", help="log every connection")
    q = Quotas()
    ap.add_argument("--entry-nb", "-E", type=int, default=q.nodes, help="nodes per domain")
    ap.add_argument("--watch-nb", "-W", type=int, default=q.watches, help="watches per domain")
    ap.add_argument("--transaction", "-t", type=int, default=q.transactions,
                    help="open transactions per connection")
    ap.add_argument("--entry-size", "-S", type=int, default=q.node_size,
                    help="bytes per node record")
    ap.add_argument("--perm-nb", "-A", type=int, default=q.perms, help="permissions per node")
    args = ap.parse_args(argv)
    quotas = Quotas(nodes=args.entry_nb, watches=args.watch_nb, transactions=args.transaction,
                    node_size=args.entry_size, perms=args.perm_nb)

    ready_r = ready_w = -1
    if not args.foreground:
        ready_r, ready_w = os.pipe()
        if os.fork():
            os.close(ready_w)
            ok = os.read(ready_r, 1)
            return 0 if ok == b"1" else 1
        os.close(ready_r)
        os.setsid()
        if os.fork():
            os._exit(0)

    handler: logging.Handler
    if args.log:
        handler = logging.FileHandler(args.log)
    elif args.foreground:
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s xenstored[%(process)d] %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)

    try:
        daemon = Daemon(args.dir, quotas)
    except OSError as exc:
        print(f"xenstored: cannot listen in {args.dir}: {exc}", file=sys.stderr)
        if ready_w >= 0:
            os.write(ready_w, b"0")
            os._exit(1)
        return 1
    if args.pid_file:
        with open(args.pid_file, "w") as f:
            f.write(f"{os.getpid()}\n")
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: daemon.stop())
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    log.info("listening on %s", daemon.socket_path)
    if ready_w >= 0:
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.write(ready_w, b"1")
        os.close(ready_w)
    try:
        daemon.run()
    finally:
        if args.pid_file:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(args.pid_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
