"""Transfers that block, for the INS death tests.

    transfer_hold.py serve              (natively, in the INS's namespace) listen on 127.0.0.1,
                                        print "PORT <port>"; a connection that sends "D" gets
                                        SIZE bytes then nothing more (its reader blocks in
                                        recv); one that sends "U" is never read (its writer
                                        blocks in send); "E" gets "hello" (a quick check)
    transfer_hold.py download PORT      read SIZE bytes, print "BLOCKED", block in recv
    transfer_hold.py upload PORT        write until the path is full, print "BLOCKED", block
                                        in send
    transfer_hold.py accept             listen on 127.0.0.1, print "BLOCKED", block in accept
    transfer_hold.py hello PORT         connect, print "OK <reply>" or "FAIL <errno name>"

download, upload and accept then print how the blocked call ended: "ERROR <errno name> <unix time>",
"EOF <unix time>" (recv returned 0) or "RETURNED <n> <unix time>".
"""
import errno
import socket
import sys
import threading
import time

SIZE = 1 << 20


def serve():
    held = []
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    print(f"PORT {ls.getsockname()[1]}", flush=True)

    def one(c):
        what = c.recv(1)
        if what == b"D":
            c.sendall(b"d" * SIZE)
        elif what == b"E":
            c.sendall(b"hello")
            c.close()
            return
        held.append(c)                  # hold it open, never read

    while True:
        c, _ = ls.accept()
        threading.Thread(target=one, args=(c,), daemon=True).start()


def ended(how):
    print(f"{how} {time.time():.3f}", flush=True)


def download(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"D")
    got = 0
    while got < SIZE:
        got += len(s.recv(SIZE - got))
    s.settimeout(None)
    print("BLOCKED", flush=True)
    try:
        d = s.recv(65536)
        ended("EOF" if not d else f"RETURNED {len(d)}")
    except OSError as e:
        ended(f"ERROR {errno.errorcode.get(e.errno, e.errno)}")


def upload(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"U")
    s.setblocking(False)
    chunk = b"u" * 65536
    while True:
        try:
            s.send(chunk)
        except BlockingIOError:
            break
    s.setblocking(True)
    print("BLOCKED", flush=True)
    try:
        while True:
            s.send(chunk)
    except OSError as e:
        ended(f"ERROR {errno.errorcode.get(e.errno, e.errno)}")


def accept():
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(4)
    print("BLOCKED", flush=True)
    try:
        c, _ = ls.accept()
        ended(f"RETURNED {c.fileno()}")
    except OSError as e:
        ended(f"ERROR {errno.errorcode.get(e.errno, e.errno)}")


def hello(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"E")
            print(f"OK {s.recv(100).decode()}")
    except OSError as e:
        print(f"FAIL {errno.errorcode.get(e.errno, e.errno)}")


if __name__ == "__main__":
    modes = {"serve": serve, "accept": accept,
             "download": lambda: download(int(sys.argv[2])),
             "upload": lambda: upload(int(sys.argv[2])),
             "hello": lambda: hello(int(sys.argv[2]))}
    modes[sys.argv[1]]()
