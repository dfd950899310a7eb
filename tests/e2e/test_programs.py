"""Real programs, unmodified, under `mwcomms run`: both ends of every connection live in the
INS (servers and clients each run through the backbone).

- a fork-per-connection server (socketserver.ForkingTCPServer) and several clients, each
  connection served by a child process of its own;
- an asyncio server and an asyncio client: streams (several concurrent connections) and a
  datagram endpoint;
- a UDP echo server and client;
- a threaded client with 64 connections open at the same time (tests/shim/programs/
  concurrent_echo.py, which counts the peak of connections open at once).
"""
import sys
from pathlib import Path

PROGRAMS = Path(__file__).resolve().parent / "programs"
SHIM_PROGRAMS = Path(__file__).resolve().parent.parent / "shim" / "programs"
PY = sys.executable


def test_forking_tcp_server_with_several_clients(backbone, programs):
    srv = programs(backbone.argv([PY, str(PROGRAMS / "forking_echo.py"), "server"]), "forking")
    _, port, _, server_pid = srv.line("PORT ").split()
    clients = [programs(backbone.argv([PY, str(PROGRAMS / "forking_echo.py"), "client", port,
                                       "4", "200000"]), f"client{i}") for i in range(3)]
    handlers = []
    for c in clients:
        c.proc.wait(60)
        lines = c.text().splitlines()
        assert [ln.split()[0] for ln in lines if ln[:2] in ("OK", "FA")] == ["OK"] * 4, c.text()
        handlers += [int(ln.split()[1]) for ln in lines if ln.startswith("OK")]
    # every connection had a process of its own, none of them the listening server
    assert len(set(handlers)) == 12 and int(server_pid) not in handlers, handlers


def test_asyncio_server_and_client(backbone, programs):
    srv = programs(backbone.argv([PY, str(PROGRAMS / "asyncio_echo.py"), "server"]), "asyncio")
    _, tcp, udp = srv.line("PORTS ").split()
    r = backbone.run([PY, str(PROGRAMS / "asyncio_echo.py"), "client", tcp, udp, "16", "300000"],
                     timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert r.stdout.splitlines()[:2] == ["STREAMS ok=16/16", "DGRAMS ok=16/16"], \
        r.stdout + r.stderr[-3000:]


def test_udp_echo(backbone, programs):
    srv = programs(backbone.argv([PY, str(PROGRAMS / "udp_echo.py"), "server"]), "udp")
    port = srv.line("PORT ").split()[1]
    r = backbone.run([PY, str(PROGRAMS / "udp_echo.py"), "client", port])
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert r.stdout.splitlines() == [f"ECHO {n} True True" for n in
                                     (0, 1, 1400, 1500, 9000, 65507, 10, 4000)] + ["DONE"], \
        r.stdout + r.stderr[-3000:]


def test_threaded_client_with_64_concurrent_connections(backbone):
    r = backbone.run([PY, str(SHIM_PROGRAMS / "concurrent_echo.py"), "64", "100000", "block"],
                     timeout=120)
    # peak: connections open at the same time, counted on both sides
    assert "RESULT ok=64 accepted=64 of=64 peak_clients=64 peak_server=64" in r.stdout, \
        r.stdout + r.stderr[-3000:]
