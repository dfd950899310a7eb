"""The INS daemon as a process: a sim XenStore, the toolstack's attach(front=1, ins=2), the
daemon started with `python -m mwcomms.ins.daemon`, and a FrontendDriver + FrontLink in this
process that reaches Connected, talks to the engine through the area, and sees the INS leave
cleanly on SIGTERM."""
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from mwcomms._native import ffi

from mwcomms.tools import codec
from mwcomms.xen import area, connection, ring, xenbus, xenstored
from mwcomms.xen.platform import Platform
from mwcomms.xen.xenbus import FrontendDriver, XenbusState as S

FRONT, INS = 1, 2
LAYOUT = area.AreaLayout(cmd_ring_pages=1, evq_pages=1, sock_slots=32, data_pages=64)


def _start_daemon(xs, simdir, logfile):
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "mwcomms.ins.daemon", "--backend", "sim", "--sim-dir", simdir,
         "--domid", str(INS), "--xenstore", xs.domain_socket(INS), "--log", logfile,
         "--stats", logfile + ".stats"],
        env=env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


class _Front:
    """The frontend's view of the connected area: just enough to send requests."""

    def __init__(self, link):
        self.link = link
        # A view that is not an export of the grant's buffer, so that the frontend's teardown
        # may release the grant while this object lives (it is not used after that).
        size = LAYOUT.area_pages * area.PAGE
        view = ffi.buffer(ffi.cast("char *", link.area.address), size)
        self.area = ring.Area(view, ring.Geometry(1, 1, 32, 64))
        self.cmd = ring.CommandFront(self.area)

    def call(self, req, timeout=10):
        self.cmd.put(req.encode())
        if self.cmd.push():
            self.link.evtchn.notify(self.link.port)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            r = self.cmd.take()
            if r is not None:
                return codec.decode_response(r[0], codec.Limits(32, 64))
            if not self.cmd.final_check():
                if select.select([self.link.evtchn.fileno()], [], [], 0.2)[0]:
                    self.link.evtchn.pending()
        raise AssertionError("no response")


@pytest.fixture
def setup(tmp_path):
    with xenstored.running() as xs:
        tool = xenbus.connect_xenstore(xs.socket_path)
        for dom in (FRONT, INS):
            xenbus.introduce(tool, dom)
        fp, bp = xenbus.attach(tool, FRONT, INS)
        simdir = str(tmp_path / "sim")
        logfile = str(tmp_path / "ins.log")
        proc = _start_daemon(xs, simdir, logfile)
        fplat = Platform("sim", sim_dir=simdir, domid=FRONT)
        client = xenbus.connect_xenstore(xs.domain_socket(FRONT))
        try:
            yield xs, tool, fp, bp, fplat, client, proc, logfile
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            client.close()
            fplat.close()
            tool.close()


def _run(driver):
    stop = threading.Event()
    t = threading.Thread(target=driver.run, args=(stop,), daemon=True)
    t.start()
    return stop, t


def test_daemon_connects_serves_and_leaves_on_sigterm(setup):
    xs, tool, fp, bp, fplat, client, proc, logfile = setup
    link = connection.FrontLink(fplat, INS, LAYOUT)
    fd = FrontendDriver(client, fp, setup=link.setup, teardown=link.teardown, retry_delay=0.05)
    stop, t = _run(fd)
    try:
        assert fd.wait_for(S.CONNECTED, 20), open(logfile).read()
        front = _Front(link)
        rsp = front.call(codec.Ping(0, 42))
        assert rsp.ret == 0 and rsp.body.arg == 42
        # a real socket through the daemon's engine
        lst = socket.socket()
        lst.bind(("127.0.0.1", 0))
        lst.listen(1)
        front.area.reset_socket(0)
        rings = codec.Rings(0, 4096, 12, 12)
        assert front.call(codec.Socket(0, 0, codec.AF_INET, codec.SOCK_STREAM, 0, rings)).ret == 0
        rsp = front.call(codec.Connect(0, 0, codec.SockAddr.from_tuple(lst.getsockname())))
        assert rsp.ret == 0
        peer, _ = lst.accept()
        # the daemon's counters (for mwctl): this device, its socket and requests
        end = time.monotonic() + 10
        while True:
            try:
                dev = json.load(open(logfile + ".stats"))["devices"][bp]
                if dev.get("requests", {}).get("CONNECT") == 1:
                    break
            except (OSError, ValueError, KeyError):
                pass
            assert time.monotonic() < end, "no stats"
            time.sleep(0.1)
        assert dev["state"] == "CONNECTED" and dev["sockets"] == 1 and dev["front_id"] == FRONT
        assert dev["requests"] == {"PING": 1, "SOCKET": 1, "CONNECT": 1} and not dev["broken"]

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stdout.read().decode()
        assert xenbus.read_opt(tool, f"{bp}/state") == str(int(S.CLOSED)).encode()
        peer.settimeout(5)
        assert peer.recv(1) == b""                      # its sockets were closed
        end = time.monotonic() + 10                     # the frontend follows it down
        while fd.my_state() == S.CONNECTED and time.monotonic() < end:
            time.sleep(0.05)
        assert fd.my_state() != S.CONNECTED
        peer.close()
        lst.close()
    finally:
        stop.set()
        t.join(15)


def test_daemon_disconnects_a_hostile_frontend_and_offers_again(setup):
    xs, tool, fp, bp, fplat, client, proc, logfile = setup
    link = connection.FrontLink(fplat, INS, LAYOUT)
    fd = FrontendDriver(client, fp, setup=link.setup, teardown=link.teardown, retry_delay=0.05)
    stop, t = _run(fd)
    try:
        assert fd.wait_for(S.CONNECTED, 20), open(logfile).read()
        front = _Front(link)
        raw = bytearray(codec.Ping(0, 1).encode())
        raw[6] = 1                                      # request flags not zero
        front.cmd.put(bytes(raw))
        front.cmd.push()
        link.evtchn.notify(link.port)
        # the INS closes the connection (its error key says why until it advertises again),
        # the frontend follows it down and connects afresh: a new engine handle
        end = time.monotonic() + 20
        while "engine handle 2" not in open(logfile).read():
            assert time.monotonic() < end, open(logfile).read()
            time.sleep(0.05)
        text = open(logfile).read()
        assert "protocol violation: request id" in text and "request flags not zero" in text
        assert "frontend dom1 detached" in text
        assert fd.wait_for(S.CONNECTED, 20), text
        rsp = _Front(link).call(codec.Ping(0, 7))
        assert rsp.ret == 0 and rsp.body.arg == 7
    finally:
        stop.set()
        t.join(15)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
