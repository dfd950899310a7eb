"""Probes of what a program can reach.

    isolation_probe.py serve TOKEN          listen on 127.0.0.1 (ephemeral port), print
                                            "PORT <port>", greet every connection with TOKEN
    isolation_probe.py connect PORT TOKEN   connect to 127.0.0.1:PORT: "REACHED <greeting is
                                            TOKEN>" or "UNREACHABLE <errno name>"
    isolation_probe.py bypass PORT          the same connect with raw system calls (as a static
                                            binary would, past any preload): "REACHED" or
                                            "UNREACHABLE <errno name>"
    isolation_probe.py raw                  try raw and packet sockets: one line per kind,
                                            "REFUSED <kind> <errno name>" or "CREATED <kind>",
                                            then "FDS unchanged" when the process holds no
                                            new kernel socket (or "FDS new <sockets>")
"""
import ctypes
import errno
import os
import socket
import struct
import sys

KINDS = [
    ("inet-raw-icmp", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    ("inet-raw-tcp", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP),
    ("inet6-raw-icmpv6", socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6),
    ("packet-raw", socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)),   # ETH_P_ALL
    ("packet-dgram", socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800)),
]
SYS_SOCKET, SYS_CONNECT = 41, 42      # x86_64


def serve(token):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    print(f"PORT {s.getsockname()[1]}", flush=True)
    while True:
        c, _ = s.accept()
        c.sendall(token.encode())
        c.close()


def connect(port, token):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            got = b""
            while len(got) < len(token):
                d = s.recv(100)
                if not d:
                    break
                got += d
        print(f"REACHED {got == token.encode()}")
    except OSError as e:
        print(f"UNREACHABLE {errno.errorcode.get(e.errno, e.errno)}")


def bypass(port):
    if os.uname().machine != "x86_64":
        print("SKIP system call numbers are x86_64's")
        return
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(SYS_SOCKET, socket.AF_INET, socket.SOCK_STREAM, 0)
    if fd < 0:
        print(f"UNREACHABLE {errno.errorcode[ctypes.get_errno()]}")
        return
    sin = struct.pack("!HH4s8x", socket.AF_INET, port, socket.inet_aton("127.0.0.1"))
    sin = struct.pack("=H", socket.AF_INET) + sin[2:]        # sin_family in host order
    buf = ctypes.create_string_buffer(sin, len(sin))
    rc = libc.syscall(SYS_CONNECT, fd, buf, len(sin))
    print("REACHED" if rc == 0 else f"UNREACHABLE {errno.errorcode[ctypes.get_errno()]}")
    os.close(fd)


def sockets():
    """The kernel sockets other than AF_UNIX (the shim's own connection to mwcommsd is one)
    this process holds, by their "socket:[inode]" names."""
    with open("/proc/self/net/unix") as f:
        unix = {f"socket:[{ln.split()[6]}]" for ln in f.readlines()[1:] if len(ln.split()) > 6}
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue                    # the directory listing's own fd, closed by now
        if target.startswith("socket:") and target not in unix:
            out.add(target)
    return out


def raw():
    before = sockets()
    for name, fam, typ, proto in KINDS:
        try:
            s = socket.socket(fam, typ, proto)
        except OSError as e:
            print(f"REFUSED {name} {errno.errorcode.get(e.errno, e.errno)}")
        else:
            print(f"CREATED {name}")
            s.detach()                  # keep it open: the check below must see it
    new = sorted(sockets() - before)
    print("FDS unchanged" if not new else f"FDS new {' '.join(new)}")


if __name__ == "__main__":
    {"serve": lambda: serve(sys.argv[2]),
     "connect": lambda: connect(int(sys.argv[2]), sys.argv[3]),
     "bypass": lambda: bypass(int(sys.argv[2])),
     "raw": raw}[sys.argv[1]]()
