"""A UDP echo server and client (plain socket calls: recvfrom/sendto, connect/send/recv).

    udp_echo.py server              prints "PORT <port>"; echoes every datagram to its sender
    udp_echo.py client PORT         sends datagrams of several sizes (0 to 65507 bytes) with
                                    sendto and on a connected socket; prints one line per
                                    datagram: "ECHO <size> <same bytes> <from the server>"
                                    then "DONE"
"""
import os
import socket
import sys


def server():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    print(f"PORT {s.getsockname()[1]}", flush=True)
    while True:
        data, addr = s.recvfrom(65535)
        s.sendto(data, addr)


def client(port):
    srv = ("127.0.0.1", port)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(10)
    for size in (0, 1, 1400, 1500, 9000, 65507):
        blob = os.urandom(size)
        s.sendto(blob, srv)
        data, addr = s.recvfrom(65535)
        print(f"ECHO {size} {data == blob} {addr == srv}", flush=True)
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.settimeout(10)
    c.connect(srv)
    for size in (10, 4000):
        blob = os.urandom(size)
        c.send(blob)
        data = c.recv(65535)
        print(f"ECHO {size} {data == blob} {c.getpeername() == srv}", flush=True)
    print("DONE", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server()
    else:
        client(int(sys.argv[2]))
