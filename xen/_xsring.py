"""A guest's side of a XenStore ring page, offered to one local client at a time as a Unix
socket: lets a pyxs client (the conformance suite) speak as an unprivileged domain.

The page is struct xenstore_domain_interface (xs_wire.h): a 1024-byte request ring, a
1024-byte response ring, then req_cons, req_prod, rsp_cons, rsp_prod. We produce requests
and consume responses, as a guest's xenbus driver does; xenstored does the rest. Indices
are read and written as whole aligned words (xenstored reading a torn index drops the
domain), and always after the data they cover.

Waking xenstored is the caller's `notify()`; being woken is either a readable `wake_fd`, or,
without one, polling while replies are due (each notify() of a "poke" kind makes xenstored
run its loop once, and it serves one message per domain per loop).

When a client leaves, a RESET_WATCHES through the ring gives the next client a clean
connection (no watches, no transactions), and what was still in flight for the old one is
dropped.
"""
from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import threading
from typing import Callable

__all__ = ["RingRelay"]

RING = 1024
_REQ, _RSP, _IDX = 0, 1024, 2048
_HEADER = struct.Struct("=IIII")
_WATCH_EVENT, _RESET_WATCHES = 15, 21
_RESET_REQ_ID = 0xFFFFFFF0


class RingRelay:
    """@param page       a writable buffer over the ring page (mmap)
    @param sock_path  where to listen
    @param notify     wakes xenstored (called after producing or consuming)
    @param wake_fd    readable when xenstored notifies us (drained here), or None to poll
    """

    def __init__(self, page, sock_path: str, notify: Callable[[], None],
                 wake_fd: int | None = None):
        self.view = memoryview(page).cast("B")          # mmap or ctypes array alike
        self.indices = self.view[_IDX:_IDX + 16].cast("I")
        self.notify = notify
        self.wake_fd = wake_fd
        self.sock_path = sock_path
        self.lsock = socket.socket(socket.AF_UNIX)
        self.lsock.bind(sock_path)
        self.lsock.listen(4)
        self._stop_r, self._stop_w = os.pipe()
        self._due = 0                   # requests pushed whose replies have not come back
        self._rsp = b""                 # responses pulled, not yet cut into messages
        self.thread = threading.Thread(target=self._run, daemon=True, name="xsring")
        self.thread.start()

    # -- the ring ------------------------------------------------------------------------
    def _push(self, data: bytes) -> bytes:
        """Put what fits of `data` into the request ring; return the rest."""
        cons, prod = self.indices[0], self.indices[1]
        n = min(len(data), RING - ((prod - cons) & 0xFFFFFFFF))
        if n <= 0:
            return data
        off = prod % RING
        first = min(n, RING - off)
        self.view[_REQ + off:_REQ + off + first] = data[:first]
        self.view[_REQ:_REQ + n - first] = data[first:n]
        self.indices[1] = (prod + n) & 0xFFFFFFFF       # data first, then the index
        self.notify()
        return data[n:]

    def _pull(self) -> bytes:
        cons, prod = self.indices[2], self.indices[3]
        n = (prod - cons) & 0xFFFFFFFF
        if not n or n > RING:
            return b""
        off = cons % RING
        first = min(n, RING - off)
        out = bytes(self.view[_RSP + off:_RSP + off + first]) + bytes(
            self.view[_RSP:_RSP + n - first])
        self.indices[2] = (cons + n) & 0xFFFFFFFF       # copied out, then released
        self.notify()
        return out

    def _count_requests(self, data: bytes, state: list) -> None:
        """Count whole requests going in (state: [partial bytes])."""
        buf = state[0] + data
        while len(buf) >= _HEADER.size:
            length = _HEADER.unpack_from(buf)[3]
            if len(buf) < _HEADER.size + length:
                break
            buf = buf[_HEADER.size + length:]
            self._due += 1
        state[0] = buf

    def _responses(self, data: bytes) -> list[tuple[int, int]]:
        """(type, req_id) of each whole response in what came out so far."""
        self._rsp += data
        out = []
        while len(self._rsp) >= _HEADER.size:
            mtype, req_id, _, length = _HEADER.unpack_from(self._rsp)
            if len(self._rsp) < _HEADER.size + length:
                break
            self._rsp = self._rsp[_HEADER.size + length:]
            out.append((mtype, req_id))
            if mtype != _WATCH_EVENT:
                self._due = max(0, self._due - 1)
        return out

    def _wait(self, *fds) -> list:
        """Sleep until a client, a stop or xenstored needs us; when polling with replies
        due, don't sleep but give xenstored another turn."""
        polling = self.wake_fd is None
        timeout = 0 if polling and self._due else 0.05
        watch = [self._stop_r, *fds] + ([] if polling else [self.wake_fd])
        r, _, _ = select.select(watch, [], [], timeout)
        if not polling and self.wake_fd in r:
            with contextlib.suppress(BlockingIOError):
                os.read(self.wake_fd, 4096)
        if polling and self._due:
            self.notify()
        return r

    # -- clients -------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                r, _, _ = select.select([self.lsock, self._stop_r], [], [])
                if self._stop_r in r:
                    return
                client, _ = self.lsock.accept()
                with client:
                    if not self._serve(client):
                        return
                if not self._reset():
                    return
        except OSError:
            return          # notify() failed: xenstored is gone, and so is our purpose

    def _serve(self, client: socket.socket) -> bool:
        pending, partial = b"", [b""]
        while True:
            r = self._wait(client)
            if self._stop_r in r:
                return False
            if client in r:
                try:
                    data = client.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    return True
                self._count_requests(data, partial)
                pending += data
            if pending:
                pending = self._push(pending)
            out = self._pull()
            if out:
                self._responses(out)
                try:
                    client.sendall(out)
                except OSError:
                    return True

    def _reset(self) -> bool:
        """RESET_WATCHES for the next client; drop everything up to its reply."""
        msg = _HEADER.pack(_RESET_WATCHES, _RESET_REQ_ID, 0, 1) + b"\0"
        self._due += 1
        while True:
            if msg:
                msg = self._push(msg)
            if self._stop_r in self._wait():
                return False
            for mtype, req_id in self._responses(self._pull()):
                if (mtype, req_id) == (_RESET_WATCHES, _RESET_REQ_ID):
                    self._due, self._rsp = 0, b""
                    return True

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self.thread.join(5)
        self.lsock.close()
        self.indices.release()
        self.view.release()
        os.close(self._stop_r)
        os.close(self._stop_w)
