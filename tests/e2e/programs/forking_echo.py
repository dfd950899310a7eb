"""A fork-per-connection TCP server (socketserver.ForkingTCPServer) and its clients.

    forking_echo.py server              prints "PORT <port> PID <pid>", serves until killed:
                                        each connection gets a child process that reads a
                                        length-prefixed blob and answers its SHA-256 and its pid
    forking_echo.py client PORT N SIZE  N concurrent connections (threads), each held open
                                        until all are connected; prints "OK <handler pid>" per
                                        connection, or "FAIL <i> <error>"
"""
import hashlib
import os
import socket
import socketserver
import sys
import threading


def recvn(s, n):
    b = bytearray()
    while len(b) < n:
        d = s.recv(n - len(b))
        if not d:
            raise EOFError(f"EOF after {len(b)} of {n} bytes")
        b += d
    return bytes(b)


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        n = int.from_bytes(recvn(self.request, 8), "big")
        digest = hashlib.sha256(recvn(self.request, n)).digest()
        self.request.sendall(digest + os.getpid().to_bytes(4, "big"))


def server():
    socketserver.ForkingTCPServer.allow_reuse_address = True
    with socketserver.ForkingTCPServer(("127.0.0.1", 0), Handler) as srv:
        print(f"PORT {srv.server_address[1]} PID {os.getpid()}", flush=True)
        srv.serve_forever()


def client(port, n, size):
    barrier = threading.Barrier(n, timeout=30)
    out = [None] * n

    def one(i):
        try:
            blob = os.urandom(size)
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                barrier.wait()              # every connection open at once
                s.sendall(len(blob).to_bytes(8, "big") + blob)
                answer = recvn(s, 36)
            if answer[:32] != hashlib.sha256(blob).digest():
                raise ValueError("wrong digest")
            out[i] = f"OK {int.from_bytes(answer[32:], 'big')}"
        except Exception as e:
            out[i] = f"FAIL {i} {e!r}"

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("\n".join(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server()
    else:
        client(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
