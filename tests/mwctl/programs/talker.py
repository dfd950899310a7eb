"""A program for mwctl's tests, run under the shim: a TCP listener, a connection to it, n_out
bytes client -> server and n_in bytes back, a UDP socket that sends itself a datagram, a
connect to a closed port (ECONNREFUSED). It prints one JSON line of what it did, then keeps
every socket open until a line arrives on stdin.

    python talker.py PORT UDP_PORT CLOSED_PORT N_OUT N_IN TOKEN
"""
import json
import os
import socket
import sys

port, udp_port, closed_port, n_out, n_in = (int(a) for a in sys.argv[1:6])
token = sys.argv[6].encode()

srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(4)
cli = socket.create_connection(("127.0.0.1", port), timeout=10)
acc, _ = srv.accept()
out = (token * (n_out // len(token) + 1))[:n_out]
cli.sendall(out)
got = b""
while len(got) < n_out:
    got += acc.recv(65536)
assert got == out
acc.sendall(b"r" * n_in)
back = 0
while back < n_in:
    back += len(cli.recv(65536))

udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", udp_port))
udp.sendto(b"u" * 100, ("127.0.0.1", udp_port))
dgram, src = udp.recvfrom(1000)

refused = socket.socket()
try:
    refused.connect(("127.0.0.1", closed_port))
    refused_errno = 0
except OSError as exc:
    refused_errno = exc.errno
refused.close()

acc.sendall(b"z" * 777)          # the client never reads these: its Recv-Q

print(json.dumps({"pid": os.getpid(), "client": cli.getsockname(), "server": srv.getsockname(),
                  "udp": udp.getsockname(), "dgram": len(dgram), "refused": refused_errno}),
      flush=True)
sys.stdin.readline()
