"""Network programs of the end-to-end steps: run in dom0 under the shim (LD_PRELOAD), so
their sockets live in the INS domain. Plain Python with the stdlib; nothing here knows about
mwcomms. The host harness imports it too (for digest()).

    netcases.py http PORT            HTTP server on port PORT (every address): /  a greeting,
                                     /bytes/N  N bytes of the test pattern,
                                     /slow/N   the same, 64 KiB every 0.1 s
    netcases.py udp-echo PORT        UDP echo server on 127.0.0.1:PORT
    netcases.py udp-client PORT N    N datagrams of sizes 1..8000, each echo checked
    netcases.py resolve NAME         getaddrinfo(NAME): the addresses
    netcases.py stream PORT          read /slow/... until it fails; prints how it failed
    netcases.py socket               make one TCP socket and connect it to 127.0.0.1:9
    netcases.py sha256               sha256 of stdin
    netcases.py digest N             sha256 of the first N bytes of the pattern

Each prints one line starting with OK or ERROR (and exits 0 / 1), servers print "listening".
"""
import errno
import functools
import hashlib
import http.server
import socket
import sys
import time

GREETING = b"hello from a server under the shim\n"


@functools.lru_cache(None)
def block():
    """1 MiB of the test pattern."""
    return b"".join(hashlib.sha256(b"mwcomms-%d" % i).digest() for i in range(1 << 15))


def pattern(n, chunk=1 << 20):
    """n bytes: block()[:chunk] repeated (with the default chunk, block() repeated)."""
    view = memoryview(block())
    while n > 0:
        piece = min(n, chunk)
        yield view[:piece]
        n -= piece


def digest(n):
    h = hashlib.sha256()
    for piece in pattern(n):
        h.update(piece)
    return h.hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        kind, _, arg = self.path.strip("/").partition("/")
        if kind == "":
            body = [GREETING]
            size = len(GREETING)
        elif kind in ("bytes", "slow") and arg.isdigit():
            size = int(arg)
            body = pattern(size, 1 << 16 if kind == "slow" else 1 << 20)
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        for piece in body:
            self.wfile.write(piece)
            if kind == "slow":
                time.sleep(0.1)

    def log_message(self, fmt, *args):
        pass


def cmd_http(port):
    server = http.server.ThreadingHTTPServer(("0.0.0.0", int(port)), Handler)
    print("listening on 0.0.0.0:%s" % port, flush=True)
    server.serve_forever()


def cmd_udp_echo(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", int(port)))
    print("listening on 127.0.0.1:%s/udp" % port, flush=True)
    while True:
        data, peer = s.recvfrom(65536)
        s.sendto(data, peer)


def cmd_udp_client(port, count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(10)
    sizes = [1 + (i * 7919) % 8000 for i in range(int(count))]
    total = 0
    for i, size in enumerate(sizes):
        msg = (b"%06d" % i + block()[:size])[:size]
        s.sendto(msg, ("127.0.0.1", int(port)))
        try:
            data, peer = s.recvfrom(65536)
        except socket.timeout:
            print("ERROR datagram %d (%d bytes): no echo within 10 s" % (i, size))
            return 1
        if data != msg or peer != ("127.0.0.1", int(port)):
            print("ERROR datagram %d: %d bytes back from %s, sent %d" % (i, len(data), peer, size))
            return 1
        total += size
    print("OK %d datagrams, %d bytes echoed, local address %s" % (len(sizes), total, s.getsockname()))
    return 0


def cmd_resolve(name):
    try:
        infos = socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        print("ERROR getaddrinfo(%s): %s" % (name, exc))
        return 1
    print("OK %s" % " ".join(sorted({i[4][0] for i in infos})))
    return 0


def _errname(exc):
    return errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno else type(exc).__name__


def cmd_stream(port):
    """Download /slow/<1 GiB> until the connection fails; report how (errno or EOF)."""
    got = 0
    s = socket.create_connection(("127.0.0.1", int(port)), timeout=60)
    s.sendall(b"GET /slow/1073741824 HTTP/1.0\r\n\r\n")
    print("streaming", flush=True)
    try:
        while True:
            data = s.recv(1 << 16)
            if not data:
                print("ERROR EOF after %d bytes (no errno)" % got, flush=True)
                return 1
            got += len(data)
    except OSError as exc:
        print("OK failed with %s (%s) after %d bytes" % (_errname(exc), exc.strerror, got), flush=True)
        return 0


def cmd_socket():
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(("127.0.0.1", 9))
    except OSError as exc:
        print("OK %s (%s)" % (_errname(exc), exc.strerror))
        return 0
    print("ERROR a connection to 127.0.0.1:9 succeeded")
    return 1


def cmd_sha256():
    h = hashlib.sha256()
    size = 0
    while True:
        data = sys.stdin.buffer.read1(1 << 20)
        if not data:
            break
        h.update(data)
        size += len(data)
    print("OK %s %d" % (h.hexdigest(), size))
    return 0


def main(argv):
    cmds = {"http": cmd_http, "udp-echo": cmd_udp_echo, "udp-client": cmd_udp_client,
            "resolve": cmd_resolve, "stream": cmd_stream, "socket": cmd_socket,
            "sha256": cmd_sha256, "digest": lambda n: print("OK %s" % digest(int(n)))}
    if not argv or argv[0] not in cmds:
        print(__doc__)
        return 2
    return cmds[argv[0]](*argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
