"""The XenbusState handshake over a live XenStore (the project's sim xenstored).

The frontend runs as domain 1 and the INS as domain 2, each through its own unprivileged
XenStore connection, as they do in production; the toolstack step runs as dom0.
"""
import errno
import os
import subprocess
import sys
import threading
import time

import pyxs
import pytest

from mwcomms.xen import xenbus, xenstored
from mwcomms.xen.xenbus import BackendDriver, FrontendDriver, XenbusState as S

FRONT, INS = 1, 2


CLIENTS = []


def connect(path):
    c = xenbus.connect_xenstore(path)
    CLIENTS.append(c)
    return c


@pytest.fixture
def xs():
    with xenstored.running() as daemon:
        tool = connect(daemon.socket_path)
        for dom in (FRONT, INS):
            xenbus.introduce(tool, dom)
        yield daemon, tool
        while CLIENTS:
            CLIENTS.pop().close()


class Component:
    """Stands in for mwcommsd / the INS: records what the handshake asked of it."""

    def __init__(self):
        self.calls = []
        self.fail_connect = False

    def front(self):
        def setup(backend_keys):
            self.calls.append(("setup", backend_keys.get("versions")))
            return {"version": "1", "event-channel": "42"}
        return dict(setup=setup, teardown=lambda: self.calls.append(("front-teardown",)),
                    connected=lambda: self.calls.append(("connected",)))

    def back(self):
        def connect(front_keys):
            if self.fail_connect:
                raise OSError(errno.EPROTO, "hostile frontend keys")
            self.calls.append(("connect", front_keys.get("event-channel")))
        return dict(advertise=lambda: {"versions": "1", "features": "ipv6 udp dns"},
                    connect=connect, teardown=lambda: self.calls.append(("back-teardown",)))


def run(driver):
    stop = threading.Event()
    t = threading.Thread(target=driver.run, args=(stop,), daemon=True)
    t.start()
    return stop, t


def drivers(daemon, comp, path_f, path_b):
    fc = connect(daemon.domain_socket(FRONT))
    bc = connect(daemon.domain_socket(INS))
    return (FrontendDriver(fc, path_f, retry_delay=0.05, **comp.front()),
            BackendDriver(bc, path_b, retry_delay=0.05, **comp.back()))


@pytest.mark.parametrize("first", ["front", "back"])
def test_both_orders_connect_and_keys_are_exchanged(xs, first):
    daemon, tool = xs
    fp, bp = xenbus.attach(tool, FRONT, INS)
    comp = Component()
    fd, bd = drivers(daemon, comp, fp, bp)
    a, b = (fd, bd) if first == "front" else (bd, fd)
    sa, ta = run(a)
    time.sleep(0.2)
    assert fd.state in (S.INITIALISING, S.UNKNOWN) or first == "back"
    sb, tb = run(b)
    assert fd.wait_for(S.CONNECTED, 10) and bd.wait_for(S.CONNECTED, 10)
    assert ("setup", "1") in comp.calls and ("connect", "42") in comp.calls
    assert comp.calls.index(("connect", "42")) < comp.calls.index(("connected",))
    assert tool.read(f"{bp}/features".encode()) == b"ipv6 udp dns"
    for s in (sa, sb):
        s.set()
    ta.join(10), tb.join(10)
    assert fd.state == S.CLOSED


def test_neither_side_can_write_the_others_keys(xs):
    daemon, tool = xs
    fp, bp = xenbus.attach(tool, FRONT, INS)
    fc = connect(daemon.domain_socket(FRONT))
    bc = connect(daemon.domain_socket(INS))
    with pytest.raises(pyxs.PyXSError) as e:
        fc.write(f"{bp}/state".encode(), b"4")
    assert e.value.args[0] == errno.EACCES
    with pytest.raises(pyxs.PyXSError) as e:
        bc.write(f"{fp}/event-channel".encode(), b"1")
    assert e.value.args[0] == errno.EACCES
    # Each side reads the other's keys, and writes its own.
    assert bc.read(f"{fp}/state".encode()) == b"1"
    assert fc.read(f"{bp}/state".encode()) == b"1"
    fc.write(f"{fp}/version".encode(), b"1")
    bc.write(f"{bp}/versions".encode(), b"1")


def test_backend_restart_reconnects(xs):
    daemon, tool = xs
    fp, bp = xenbus.attach(tool, FRONT, INS)
    comp = Component()
    fd, bd = drivers(daemon, comp, fp, bp)
    sf, tf = run(fd)
    sb, tb = run(bd)
    assert fd.wait_for(S.CONNECTED, 10)
    sb.set(); tb.join(10)
    seen = fd.wait_for(S.CLOSED, 10)
    assert seen, fd.state
    assert ("front-teardown",) in comp.calls
    bd2 = BackendDriver(connect(daemon.domain_socket(INS)), bp,
                        retry_delay=0.05, **comp.back())
    sb2, tb2 = run(bd2)
    assert fd.wait_for(S.CONNECTED, 10) and bd2.wait_for(S.CONNECTED, 10)
    assert sum(c[0] == "setup" for c in comp.calls) == 2
    sf.set(); sb2.set(); tf.join(10); tb2.join(10)


CRASHING_FRONTEND = """
import sys, threading
from mwcomms.xen import xenbus
c = xenbus.connect_xenstore(sys.argv[1])
d = xenbus.FrontendDriver(c, sys.argv[2], setup=lambda k: {"event-channel": "42"},
                          teardown=lambda: None, retry_delay=0.05)
d.run(threading.Event())
"""


def test_killed_frontend_leaves_stale_state_and_a_new_one_connects(xs):
    daemon, tool = xs
    fp, bp = xenbus.attach(tool, FRONT, INS)
    comp = Component()
    bd = BackendDriver(connect(daemon.domain_socket(INS)), bp, retry_delay=0.05, **comp.back())
    sb, tb = run(bd)
    env = dict(os.environ, PYTHONSAFEPATH="1")
    proc = subprocess.Popen([sys.executable, "-c", CRASHING_FRONTEND,
                             daemon.domain_socket(FRONT), fp], env=env)
    try:
        # Both sides connected: the backend's record, then the frontend's own state node.
        assert bd.wait_for(S.CONNECTED, 10)
        deadline = time.monotonic() + 10
        while xenbus.read_opt(tool, f"{fp}/state") != b"4" and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        proc.kill()        # dies without a word: its Connected stays in XenStore
        proc.wait()
    assert tool.read(f"{fp}/state".encode()) == b"4"
    fd2 = FrontendDriver(connect(daemon.domain_socket(FRONT)), fp, retry_delay=0.05, **comp.front())
    sf2, tf2 = run(fd2)
    # The new frontend closes the stale connection first (its Connected is stale, so wait for
    # the backend's teardown before looking at states): then both connect again.
    deadline = time.monotonic() + 10
    backend_calls = lambda: [c[0] for c in comp.calls if c[0] in ("connect", "back-teardown")]
    while backend_calls().count("connect") < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert backend_calls() == ["connect", "back-teardown", "connect"]
    assert fd2.wait_for(S.CONNECTED, 10) and bd.wait_for(S.CONNECTED, 10)
    sf2.set(); sb.set(); tf2.join(10); tb.join(10)


def test_failed_connect_is_reported_and_retried(xs):
    daemon, tool = xs
    fp, bp = xenbus.attach(tool, FRONT, INS)
    comp = Component()
    comp.fail_connect = True
    fd, bd = drivers(daemon, comp, fp, bp)
    sf, tf = run(fd)
    sb, tb = run(bd)
    deadline = time.monotonic() + 10
    while xenbus.read_opt(tool, f"{bp}/error") is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert b"hostile frontend keys" in tool.read(f"{bp}/error".encode(), b"")
    assert bd.state != S.CONNECTED and fd.state != S.CONNECTED
    comp.fail_connect = False  # the cause goes away: the next retry connects
    assert fd.wait_for(S.CONNECTED, 10) and bd.wait_for(S.CONNECTED, 10)
    assert xenbus.read_opt(tool, f"{bp}/error") is None
    sf.set(); sb.set(); tf.join(10); tb.join(10)


def test_detach_makes_both_sides_close(xs):
    daemon, tool = xs
    fp, bp = xenbus.attach(tool, FRONT, INS)
    comp = Component()
    fd, bd = drivers(daemon, comp, fp, bp)
    sf, tf = run(fd)
    sb, tb = run(bd)
    assert fd.wait_for(S.CONNECTED, 10)
    xenbus.detach(tool, FRONT, INS)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (
            ("front-teardown",) in comp.calls and ("back-teardown",) in comp.calls):
        time.sleep(0.02)
    assert ("front-teardown",) in comp.calls and ("back-teardown",) in comp.calls
    sf.set(); sb.set(); tf.join(10); tb.join(10)


def test_selftest_cli_against_sim(xs):
    daemon, _ = xs
    assert xenbus.selftest(daemon.socket_path, timeout=10) == 0
