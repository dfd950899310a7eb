"""A program for mwctl's tests, run under the shim: N round trips of a small message over one
TCP connection to its own listener (many ring messages in a short time).

    python chatter.py PORT N
"""
import socket
import sys
import time

port, n = int(sys.argv[1]), int(sys.argv[2])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(1)
cli = socket.create_connection(("127.0.0.1", port), timeout=30)
acc, _ = srv.accept()
start = time.monotonic()
for i in range(n):
    cli.sendall(b"ping%06d" % i)
    assert acc.recv(100) == b"ping%06d" % i
    acc.sendall(b"pong")
    assert cli.recv(100) == b"pong"
print(f"{n} round trips in {time.monotonic() - start:.3f} s", flush=True)
