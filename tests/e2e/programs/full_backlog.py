"""Connecting to a listener whose accept queue is full: the SYN is dropped, so a connect
waits. Run natively and through the backbone, against a server in the INS's namespace.

    full_backlog.py serve          listen(0) on 127.0.0.1, print "PORT <port>", never accept
    full_backlog.py serve-slow     the same, but accept each connection 0.8 s after it queued
    full_backlog.py probe PORT     SO_SNDTIMEO, EALREADY, non-blocking (against serve)
    full_backlog.py probe-signals PORT
                                   a blocking connect() interrupted by a signal whose handler
                                   has SA_RESTART goes on (and succeeds once the server
                                   accepts), without SA_RESTART it fails with EINTR (against
                                   serve-slow)
Each probe prints one line per observation.
"""
import ctypes
import signal
import errno
import select
import socket
import struct
import sys
import time


def serve(slow):
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(0)
    print(f"PORT {ls.getsockname()[1]}", flush=True)
    held = []
    while slow:
        select.select([ls], [], [])
        time.sleep(0.8)
        held.append(ls.accept()[0])
    time.sleep(3600)


def probe_signals(port):
    libc = ctypes.CDLL(None, use_errno=True)
    fired = []
    signal.signal(signal.SIGINT, signal.SIG_DFL)     # Python's own handler has no SA_RESTART
    signal.signal(signal.SIGALRM, lambda *a: fired.append(1))
    first = socket.socket()
    first.connect(("127.0.0.1", port))              # fills the queue until the server accepts
    time.sleep(0.1)
    sin = socket.inet_aton("127.0.0.1")
    addr = struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + sin + bytes(8)
    for what, restart in (("sa_restart", True), ("no_sa_restart", False)):
        s = socket.socket()
        signal.siginterrupt(signal.SIGALRM, not restart)
        del fired[:]
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        t = time.monotonic()
        rc = libc.connect(s.fileno(), addr, len(addr))
        took = time.monotonic() - t
        err = errno.errorcode.get(ctypes.get_errno(), "?") if rc < 0 else "ok"
        print(f"connect-{what}", err, "handler-ran", bool(fired), "went-on-past-signal",
              took > 0.5, flush=True)
        s.close()
    first.close()


def probe(port):
    def outcome(fn):
        t = time.monotonic()
        try:
            fn()
            r = "ok"
        except OSError as e:
            r = errno.errorcode.get(e.errno, str(e.errno))
        return r, time.monotonic() - t

    first = socket.socket()
    print("first-connect", outcome(lambda: first.connect(("127.0.0.1", port)))[0])
    time.sleep(0.2)
    second = socket.socket()
    second.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 0, 500000))
    r, took = outcome(lambda: second.connect(("127.0.0.1", port)))
    print("blocking-connect-sndtimeo", r, "waited-the-timeout", 0.4 <= took < 2.5)
    r, _ = outcome(lambda: second.connect(("127.0.0.1", port)))
    print("connect-again-while-pending", r)
    third = socket.socket()
    third.setblocking(False)
    print("nonblocking-connect", outcome(lambda: third.connect(("127.0.0.1", port)))[0])
    print("writable-within-0.3s", bool(select.select([], [third], [], 0.3)[1]))
    for s in (first, second, third):
        s.close()


if __name__ == "__main__":
    if sys.argv[1].startswith("serve"):
        serve(sys.argv[1] == "serve-slow")
    elif sys.argv[1] == "probe":
        probe(int(sys.argv[2]))
    else:
        probe_signals(int(sys.argv[2]))
