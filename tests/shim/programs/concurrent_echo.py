"""N threaded clients each send SIZE random bytes to a server that answers their SHA-256.

    concurrent_echo.py N SIZE MODE      MODE: words joined by '-':
      block     blocking accept in one thread, one thread per connection
      nbaccept  non-blocking listener: select, then accept until EAGAIN
      nbconn    accepted sockets made non-blocking
      nodelay   TCP_NODELAY on accepted sockets; names: getsockname/getpeername on them
      slow      each connection's thread waits 1 s before reading (connections pile up)

Every client connects, then waits until all N are connected before it sends; every server
thread reads its request, then waits until all N have been accepted before it answers: so N
connections are open at the same time on both sides; peak_clients and peak_server count the
most that were open at once.

Prints "RESULT ok=<n> accepted=<n> of=<N> peak_clients=<n> peak_server=<n>" and the first
errors. Run under the shim.
"""
import hashlib
import os
import select
import socket
import sys
import threading
import time

N, SIZE, MODE = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split("-")
errors, accepted, ok = [], [0], [0]
lock = threading.Lock()
# connections open now and at most, [clients, server side]
open_now, peak = [0, 0], [0, 0]
barrier = [threading.Barrier(N, timeout=60), threading.Barrier(N, timeout=60)]


def opened(side, delta):
    with lock:
        open_now[side] += delta
        peak[side] = max(peak[side], open_now[side])


def recvn(s, n):
    b = b""
    while len(b) < n:
        try:
            d = s.recv(n - len(b))
        except BlockingIOError:
            select.select([s], [], [], 5)
            continue
        if not d:
            raise EOFError(f"early EOF at {len(b)} of {n}")
        b += d
    return b


def serve(c):
    opened(1, 1)
    try:
        if "slow" in MODE:
            time.sleep(1)
        if "nodelay" in MODE:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if "names" in MODE:
            c.getsockname()
            c.getpeername()
        n = int.from_bytes(recvn(c, 8), "big")
        digest = hashlib.sha256(recvn(c, n)).digest()
        barrier[1].wait()               # all N accepted before any answers
        c.setblocking(True)
        c.sendall(digest)
    except Exception as e:
        errors.append(f"server: {e!r}")
    finally:
        opened(1, -1)
        c.close()


def acceptor(listener):
    if "nbaccept" in MODE:
        listener.setblocking(False)
    while True:
        if "nbaccept" in MODE:
            select.select([listener], [], [])
        try:
            c, _ = listener.accept()
        except BlockingIOError:
            continue
        accepted[0] += 1
        if "nbconn" in MODE:
            c.setblocking(False)
        threading.Thread(target=serve, args=(c,), daemon=True).start()


def client(port, i):
    try:
        blob = os.urandom(SIZE)
        with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
            opened(0, 1)
            try:
                barrier[0].wait()       # all N connected before any sends
                s.sendall(SIZE.to_bytes(8, "big") + blob)
                if recvn(s, 32) == hashlib.sha256(blob).digest():
                    with lock:
                        ok[0] += 1
            finally:
                opened(0, -1)
    except Exception as e:
        errors.append(f"client {i}: {e!r}")


def main():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    threading.Thread(target=acceptor, args=(listener,), daemon=True).start()
    threads = [threading.Thread(target=client, args=(port, i)) for i in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"RESULT ok={ok[0]} accepted={accepted[0]} of={N} peak_clients={peak[0]} "
          f"peak_server={peak[1]}")
    for e in errors[:5]:
        print(e)


main()
