"""Connecting to a listener whose accept queue is full: the SYN is dropped, so a connect
waits. Run natively and through the backbone, against a server in the INS's namespace.

    full_backlog.py serve          listen(0) on 127.0.0.1, print "PORT <port>", never accept
    full_backlog.py probe PORT     print one line per observation (below)
"""
import errno
import select
import socket
import struct
import sys
import time


def serve():
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(0)
    print(f"PORT {ls.getsockname()[1]}", flush=True)
    time.sleep(3600)


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
    serve() if sys.argv[1] == "serve" else probe(int(sys.argv[2]))
