"""tcp_ip_wrapper.so, the LD_PRELOAD shim (shim/).

Without mwcommsd: the exported symbols, AF_UNIX passthrough, refused raw/packet/other sockets,
fail-closed socket() and name resolution. With FakeMwcommsd (conftest.py: the local protocol
executed on this host's loopback, for the test only): TCP, UDP, resolution, sockets inherited
across exec, threads + fork, and real programs (curl, wget, Python's http.server) all under the
shim. The C programs (tests/c/shim_*.c) run under ASan + UBSan.
"""
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

# What shim/tcp_ip_wrapper.map must export: issue 3's list, plus the aliases glibc programs
# really call (fcntl64 for fcntl, the _FORTIFY_SOURCE __*_chk forms of read/recv/recvfrom).
INTERPOSED = {
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4", "getsockname",
    "getpeername", "getsockopt", "setsockopt", "shutdown", "close", "close_range", "dup",
    "dup2", "dup3", "fcntl", "fcntl64", "ioctl", "read", "write", "readv", "writev", "send",
    "recv", "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg", "__read_chk",
    "__recv_chk", "__recvfrom_chk", "getaddrinfo", "freeaddrinfo", "getnameinfo",
    "gethostbyname", "gethostbyname_r", "gethostbyname2", "gethostbyname2_r", "gethostbyaddr",
    "gethostbyaddr_r",
}
ABSENT = "/nonexistent/mwcomms/control.sock"


def _cases(out):
    return [line.split()[1] for line in out.splitlines() if line.startswith("OK ")]


def _expect_ok(r, cases):
    assert r.returncode == 0, f"rc {r.returncode}\n{r.stdout}\n{r.stderr[-4000:]}"
    assert "DONE" in r.stdout, r.stdout
    assert set(cases) <= set(_cases(r.stdout)), r.stdout


def test_exports_exactly_the_interposed_symbols(shim):
    if shutil.which("nm") is None:
        pytest.skip("nm (binutils) is not installed")
    out = subprocess.run(["nm", "-D", "--defined-only", shim], capture_output=True, text=True,
                         check=True).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert exported == INTERPOSED


def test_no_eager_binding(shim):
    """Lazy symbol binding: no DT_FLAGS BIND_NOW / NOW in the shim."""
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) is not installed")
    dyn = subprocess.run(["readelf", "-d", shim], capture_output=True, text=True,
                         check=True).stdout
    assert "BIND_NOW" not in dyn and "(FLAGS_1)            Flags: NOW" not in dyn


def test_unix_passthrough(shim, cbuild, run):
    """AF_UNIX works untouched with no mwcommsd at all, and nothing is logged."""
    r = run(shim, [cbuild("shim_basic"), "unix"], ABSENT)
    _expect_ok(r, ["socketpair_dup", "unix_seqpacket_listen", "unix_dgram"])
    assert "tcp_ip_wrapper:" not in r.stderr


def test_refused_sockets(shim, cbuild, run):
    r = run(shim, [cbuild("shim_basic"), "refuse"], ABSENT)
    _expect_ok(r, ["raw_inet", "raw_inet6", "packet", "ping", "sctp", "vsock",
                   "socketpair_inet"])
    lines = [x for x in r.stderr.splitlines() if x.startswith("tcp_ip_wrapper:")]
    assert sum("raw sockets are refused" in x for x in lines) == 3
    assert sum("AF_PACKET sockets are refused" in x for x in lines) == 2
    assert any("AF_VSOCK" in x for x in lines)


def test_fails_closed_without_mwcommsd(shim, cbuild, run):
    r = run(shim, [cbuild("shim_basic"), "absent"], ABSENT)
    _expect_ok(r, ["socket_fails_closed", "getaddrinfo_fails_closed",
                   "gethostbyname_fails_closed"])
    assert f"mwcommsd is not running (cannot connect to {ABSENT}" in r.stderr


def test_python_fails_closed_without_mwcommsd(shim, run):
    code = ("import socket\n"
            "for f in (lambda: socket.create_connection(('127.0.0.1', 9), timeout=2),\n"
            "          lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)):\n"
            "    try:\n"
            "        f()\n"
            "    except OSError as e:\n"
            "        print('errno', e.errno)\n")
    r = run(shim, [sys.executable, "-c", code], ABSENT)
    # getaddrinfo: EAI_AGAIN (-3), as a resolver without network; socket(): ENETDOWN
    assert r.stdout.split() == ["errno", "-3", "errno", "100"], r.stdout + r.stderr
    assert "mwcommsd is not running" in r.stderr


def test_socket_fails_when_mwcommsd_has_no_ins(shim, run, fake_factory):
    d = fake_factory(no_ins=True)
    code = ("import socket\n"
            "try:\n"
            "    socket.socket()\n"
            "except OSError as e:\n"
            "    print('errno', e.errno)\n")
    r = run(shim, [sys.executable, "-c", code], d.path)
    assert r.stdout.strip() == "errno 100", r.stdout + r.stderr
    assert "has no INS connected" in r.stderr
    assert d.ops() == ["SOCKET"]


@pytest.mark.parametrize("mode,cases", [
    ("tcp", ["nonblocking_connect", "accept4_flags_names", "bytes_dup_close", "half_close",
             "blocking_connect_1MiB_from_forked_child", "connect_refused",
             "reset_read_econnreset", "accept_timeout_eintr"]),
    ("udp", ["sendto_recvfrom_peek_trunc", "sendmsg_recvmsg_iovecs", "connected_read_write",
             "sendmmsg_recvmmsg", "emsgsize"]),
    ("resolve", ["getaddrinfo", "getnameinfo", "gethostbyname"]),
])
def test_inet_through_fake_mwcommsd(shim, cbuild, run, fake, mode, cases):
    r = run(shim, [cbuild("shim_inet"), mode], fake.path)
    _expect_ok(r, cases)
    ops = fake.ops()
    if mode == "tcp":
        assert {"SOCKET", "BIND", "LISTEN", "CONNECT", "ACCEPT", "STATUS"} <= set(ops)
    if mode == "resolve":
        assert "GETADDRINFO" in ops and "GETNAMEINFO" in ops


def test_sockets_inherited_across_exec(shim, cbuild, run, fake):
    r = run(shim, [cbuild("shim_inet"), "exec"], fake.path)
    _expect_ok(r, ["inherited_across_exec", "unix_inherited_across_exec"])
    # two UDP sockets, recognised; two AF_UNIX ends, not mwcommsd's: asked once each
    assert fake.ops().count("IDENTIFY") == 4, fake.ops()


def test_threads_and_fork(shim, cbuild, run, fake):
    r = run(shim, [cbuild("shim_fork")], fake.path, timeout=120)
    _expect_ok(r, ["fork_threads"])


def test_real_programs_through_fake_mwcommsd(shim, run, fake, tmp_path):
    """Python's http.server, curl and wget, all three under the shim."""
    tools = [t for t in ("curl", "wget") if shutil.which(t)]
    if not tools:
        pytest.skip("neither curl nor wget is installed")
    (tmp_path / "www").mkdir()
    body = os.urandom(200_000)
    (tmp_path / "www" / "blob").write_bytes(body)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    env = dict(os.environ, LD_PRELOAD=shim, MWCOMMS_SOCKET=fake.path)
    srv = subprocess.Popen([sys.executable, "-m", "http.server", "-b", "127.0.0.1", str(port),
                            "-d", str(tmp_path / "www")], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while "LISTEN" not in fake.ops():
            assert time.monotonic() < deadline, "http.server never listened"
            time.sleep(0.05)
        for tool in tools:
            out = tmp_path / f"got-{tool}"
            argv = ([tool, "-sS", "-o", str(out), f"http://localhost:{port}/blob"]
                    if tool == "curl" else
                    [tool, "-q", "-O", str(out), f"http://localhost:{port}/blob"])
            r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, (tool, r.stderr)
            assert out.read_bytes() == body, tool
    finally:
        srv.terminate()
        srv.communicate(timeout=10)
    ops = fake.ops()
    assert ops.count("ACCEPT") >= len(tools) and "GETADDRINFO" in ops


ASYNC_PROGRAM = r'''
import asyncio, hashlib, os, socket, sys, threading

async def handle(reader, writer):
    data = await reader.readexactly(8)
    n = int.from_bytes(data, "big")
    h = hashlib.sha256()
    left = n
    while left:
        chunk = await reader.read(min(left, 65536))
        assert chunk
        h.update(chunk)
        left -= len(chunk)
    writer.write(h.digest())
    await writer.drain()
    writer.close()

def client(port, n, results, i):
    blob = os.urandom(n)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(n.to_bytes(8, "big") + blob)
        got = b""
        while len(got) < 32:
            d = s.recv(32 - len(got))
            assert d, "early EOF"
            got += d
        assert s.recv(1) == b""
    results[i] = got == hashlib.sha256(blob).digest()

async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    results = [None] * 64
    threads = [threading.Thread(target=client, args=(port, 50_000 + i * 1000, results, i))
               for i in range(64)]
    loop = asyncio.get_running_loop()
    def run_all():
        for t in threads: t.start()
        for t in threads: t.join()
    await loop.run_in_executor(None, run_all)
    # an asyncio client too, with a non-blocking connect through the loop
    r, w = await asyncio.open_connection("localhost", port)
    w.write((3).to_bytes(8, "big") + b"abc")
    digest = await r.readexactly(32)
    print("ASYNC-CLIENT", digest == hashlib.sha256(b"abc").digest())
    srv.close()
    await srv.wait_closed()
    print("RESULTS", sum(1 for x in results if x is True), len(results))

asyncio.run(main())
'''


def test_asyncio_server_and_64_threaded_clients(shim, run, fake):
    """Python's asyncio server and a threaded client with 64 concurrent connections."""
    r = run(shim, [sys.executable, "-c", ASYNC_PROGRAM], fake.path, timeout=120)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "RESULTS 64 64" in r.stdout, r.stdout + r.stderr[-2000:]
    assert "ASYNC-CLIENT True" in r.stdout, r.stdout


@pytest.mark.parametrize("mode", ["block-slow", "nbaccept-nbconn-nodelay-names"])
def test_concurrent_connections_through_fake_mwcommsd(shim, run, fake, mode):
    """tests/shim/programs/concurrent_echo.py: 32 clients, connections piling up (slow)."""
    prog = os.path.join(os.path.dirname(os.path.abspath(__file__)), "programs",
                        "concurrent_echo.py")
    r = run(shim, [sys.executable, prog, "32", "50000", mode], fake.path, timeout=120)
    assert "RESULT ok=32 accepted=32 of=32" in r.stdout, r.stdout + r.stderr[-2000:]


def test_errnos_same_as_native(shim, cbuild, run, fake):
    """shim_inet errnos: the same calls natively and under the shim give the same lines."""
    exe = cbuild("shim_inet")
    env = dict(os.environ)
    env.update(SAN_ENV_NATIVE)
    native = subprocess.run([str(exe), "errnos"], capture_output=True, text=True, timeout=60,
                            env=env)
    assert native.returncode == 0 and "DONE" in native.stdout, native.stdout + native.stderr
    r = run(shim, [exe, "errnos"], fake.path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines() == native.stdout.splitlines()


SAN_ENV_NATIVE = {"ASAN_OPTIONS": "detect_leaks=1", "UBSAN_OPTIONS": "halt_on_error=1"}


def test_subprocess_children_leave_the_parent_alone(shim, run, fake):
    prog = os.path.join(os.path.dirname(os.path.abspath(__file__)), "programs",
                        "subprocess_fds.py")
    r = run(shim, [sys.executable, prog], fake.path)
    assert r.returncode == 0, r.stderr[-2000:]
    first, last = r.stdout.split()[1:3]
    assert first == last, r.stdout          # no control connection leaked per child
    assert "NAME ok" in r.stdout
