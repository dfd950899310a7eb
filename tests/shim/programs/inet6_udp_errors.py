"""IPv6 UDP and TCP, and the errnos of a refused and an unreachable connect. Run under the shim;
prints one line per check."""
import socket

s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::1", 0))
c = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
c.sendto(b"v6 hello", s.getsockname()[:2])
data, addr = s.recvfrom(100)
print("UDP6", data.decode(), addr[0], addr[1] == c.getsockname()[1])

listener = socket.socket(socket.AF_INET6)
listener.bind(("::1", 0))
listener.listen()
k = socket.create_connection(listener.getsockname()[:2])
a, peer = listener.accept()
k.sendall(b"x" * 100000)
k.shutdown(socket.SHUT_WR)
got = b""
while True:
    b = a.recv(65536)
    if not b:
        break
    got += b
print("TCP6", len(got), peer[0], peer[1] == k.getsockname()[1])

try:
    socket.create_connection(("::1", 1), timeout=3)
except OSError as e:
    print("REFUSED", e.errno)
