"""mwcomms.xen.platform on the sim backend, between processes that are different domains.

Each test forks peers (multiprocessing, fork start method); every peer opens its own Platform
after the fork, as a separate domain would. Peers report back through a Pipe.
"""
import errno
import multiprocessing
import os
import pickle
import select
import selectors
import signal
import subprocess
import sys
import time

import pytest

from mwcomms.xen import platform
from mwcomms.xen.platform import PAGE_SIZE, Platform

ctx = multiprocessing.get_context("fork")


@pytest.fixture
def sim(tmp_path):
    """The sim directory, and a Platform factory for the test process's domains there."""
    opened = []

    def open_dom(domid):
        p = Platform(backend="sim", sim_dir=str(tmp_path / "sim"), domid=domid)
        opened.append(p)
        return p

    open_dom.dir = str(tmp_path / "sim")
    yield open_dom
    for p in opened:
        p.close()


def run_peer(target, *args):
    """Start `target(conn, *args)` in a forked process; return (process, our end of a pipe)."""
    here, there = ctx.Pipe()
    proc = ctx.Process(target=target, args=(there, *args), daemon=True)
    proc.start()
    there.close()
    return proc, here


def finish(proc, conn, timeout=30):
    """The peer's last message, after it exited with status 0."""
    result = conn.recv() if conn.poll(timeout) else "peer sent nothing"
    proc.join(timeout)
    assert proc.exitcode == 0, (proc.exitcode, result)
    return result


def poll_fd(fd, timeout_s):
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(int(timeout_s * 1000)))


def pattern(page):
    return bytes((page * 31 + i) % 251 for i in range(256))


def take_first_event(ec, port):
    """A fresh binding starts pending (as on Xen): take that event."""
    assert ec.wait(5) and ec.pending() == port


# ------------------------------------------------------------------------------------------

def test_import_does_no_io(tmp_path):
    target = tmp_path / "must-not-exist"
    env = {**os.environ, "MW_BACKEND": "sim", "MW_SIM_DIR": str(target), "MW_SIM_DOMID": "1"}
    r = subprocess.run([sys.executable, "-c", "import mwcomms.xen.platform"], env=env,
                       capture_output=True, text=True, cwd=tmp_path)   # not the source tree
    assert r.returncode == 0, r.stderr
    assert not target.exists()


def test_platform_basics(sim):
    p = sim(4)
    assert p.backend == "sim" and p.domid == 4
    assert "sim" in repr(p) and "domid=4" in repr(p)
    with Platform(backend="sim", sim_dir=sim.dir, domid=5) as q:
        assert q.domid == 5
    with pytest.raises(ValueError):
        q.evtchn()
    assert "closed" in repr(q)


def test_environment_configures_the_platform(sim, monkeypatch):
    monkeypatch.setenv("MW_BACKEND", "sim")
    monkeypatch.setenv("MW_SIM_DIR", sim.dir)
    monkeypatch.setenv("MW_SIM_DOMID", "9")
    with Platform() as p:
        assert (p.backend, p.domid) == ("sim", 9)


@pytest.mark.parametrize("kwargs, err", [
    (dict(backend="vmware", sim_dir="/tmp/x", domid=1), errno.EINVAL),
    (dict(backend="sim", sim_dir=None, domid=1), errno.EINVAL),
    (dict(backend="sim", sim_dir="/tmp/x", domid=0x7ff0), errno.EINVAL),
    (dict(backend="sim", sim_dir="/nonexistent-parent/x", domid=1), errno.ENOENT),
])
def test_open_errors_are_oserror(kwargs, err, monkeypatch):
    monkeypatch.delenv("MW_SIM_DIR", raising=False)
    with pytest.raises(OSError) as e:
        Platform(**kwargs)
    assert e.value.errno == err


@pytest.mark.skipif(os.path.exists("/dev/xen/evtchn"), reason="this host has /dev/xen")
def test_xen_backend_absent_here():
    with pytest.raises(OSError) as e:
        Platform(backend="xen")
    assert e.value.errno == errno.ENODEV


def test_argument_errors(sim):
    p = sim(1)
    for npages in (0, -1, platform.lib.MW_GNT_MAX_PAGES + 1):
        with pytest.raises(OSError) as e:
            p.share(2, npages)
        assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        p.share(platform.DOMID_SELF, 1)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        p.map(2, [])
    assert e.value.errno == errno.EINVAL
    with p.evtchn() as ec:
        for call in (lambda: ec.notify(0), lambda: ec.notify(99), lambda: ec.unbind(99),
                     lambda: ec.bind_interdomain(2, 1)):
            with pytest.raises(OSError) as e:
                call()
            assert e.value.errno == errno.EINVAL


# --- end to end between two processes ------------------------------------------------------

def _mapper(conn, sim_dir, refs, port):
    """Domain 2: map domain 1's pages, check and answer, bind, kick, wait for the ack."""
    with Platform(backend="sim", sim_dir=sim_dir, domid=2) as p:
        with p.map(1, refs) as g, p.evtchn() as ec:
            buf = g.buffer
            for i in range(len(refs)):
                assert bytes(buf[i * PAGE_SIZE:i * PAGE_SIZE + 256]) == pattern(i)
                buf[i * PAGE_SIZE + 1024:i * PAGE_SIZE + 1030] = b"reply%d" % i
            local = ec.bind_interdomain(1, port)
            take_first_event(ec, local)
            ec.notify(local)
            assert poll_fd(ec.fd, 10), "no kick back from domain 1"
            assert ec.pending() == local and ec.pending() is None
            ack = bytes(buf[2048:2051])
            ec.notify(local)
            conn.send(("ok", local, ack))


def test_two_domains_share_map_and_kick_both_ways(sim):
    p = sim(1)
    npages = 4
    with p.share(2, npages) as g, p.evtchn() as ec:
        assert len(g.refs) == npages and len(set(g.refs)) == npages
        assert bytes(g.buffer) == bytes(npages * PAGE_SIZE)
        for i in range(npages):
            g.buffer[i * PAGE_SIZE:i * PAGE_SIZE + 256] = pattern(i)
        port = ec.alloc_unbound(2)
        proc, conn = run_peer(_mapper, sim.dir, g.refs, port)

        assert poll_fd(ec.fd, 10), "domain 2 never kicked"
        assert ec.pending() == port
        for i in range(npages):
            assert bytes(g.buffer[i * PAGE_SIZE + 1024:i * PAGE_SIZE + 1030]) == b"reply%d" % i
        g.buffer[2048:2051] = b"ack"
        ec.notify(port)
        assert ec.wait(10) and ec.pending() == port     # domain 2's last kick
        status, peer_port, ack = finish(proc, conn)
        assert (status, ack) == ("ok", b"ack") and peer_port > 0


def _try_map(conn, sim_dir, domid, granter, refs):
    with Platform(backend="sim", sim_dir=sim_dir, domid=domid) as p:
        try:
            with p.map(granter, refs) as g:
                conn.send(("mapped", bytes(g.buffer[:5])))
        except OSError as e:
            conn.send(("error", e.errno))


def test_a_domain_that_was_not_granted_cannot_map(sim):
    p = sim(1)
    with p.share(2, 2) as g:
        g.buffer[:5] = b"hello"
        proc, conn = run_peer(_try_map, sim.dir, 3, 1, g.refs)
        assert finish(proc, conn) == ("error", errno.EPERM)
        proc, conn = run_peer(_try_map, sim.dir, 2, 1, g.refs)
        assert finish(proc, conn) == ("mapped", b"hello")


def test_bad_refs(sim):
    p1, p2 = sim(1), sim(2)
    g = p1.share(2, 2)
    refs = g.refs
    for bad in ([4000], [refs[0], 4000], [4000, refs[0]]):
        with pytest.raises(FileNotFoundError) as e:
            p2.map(1, bad)
        assert e.value.errno == errno.ENOENT
    with pytest.raises(OSError) as e:
        p2.map(7, refs)                     # right numbers, wrong granter
    assert e.value.errno == errno.ENOENT
    kept = p2.map(1, refs)
    g.buffer[:4] = b"live"
    g.release()
    with pytest.raises(OSError) as e:
        p2.map(1, refs)                     # released: gone for new mappings
    assert e.value.errno == errno.ENOENT
    assert bytes(kept.buffer[:4]) == b"live"    # an existing mapping stays, as on Xen
    kept.release()


def _bind_then(conn, sim_dir, port, how):
    p = Platform(backend="sim", sim_dir=sim_dir, domid=2)
    ec = p.evtchn()
    local = ec.bind_interdomain(1, port)
    conn.send(local)
    if how == "close":
        ec.close()
        p.close()
    elif how == "crash":
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("how", ["close", "crash"])
def test_notify_after_the_peer_is_gone(sim, how):
    with sim(1).evtchn() as ec:
        port = ec.alloc_unbound(2)
        with pytest.raises(OSError) as e:
            ec.notify(port)
        assert e.value.errno == errno.ENOTCONN      # nobody bound yet
        proc, conn = run_peer(_bind_then, sim.dir, port, how)
        assert conn.poll(10) and conn.recv() > 0
        proc.join(10)
        assert proc.exitcode == (0 if how == "close" else -signal.SIGKILL)
        t = time.monotonic()
        with pytest.raises(OSError) as e:
            ec.notify(port)
        assert e.value.errno == errno.ENOTCONN
        assert time.monotonic() - t < 1.0


def _kicker(conn, sim_dir, port, kicks):
    with Platform(backend="sim", sim_dir=sim_dir, domid=2) as p, p.evtchn() as ec:
        local = ec.bind_interdomain(1, port)
        for _ in range(kicks):
            ec.notify(local)
        conn.send(local)
        conn.recv()                 # keep the port bound until the other side has looked


def test_notifications_coalesce(sim):
    with sim(1).evtchn() as ec:
        port = ec.alloc_unbound(2)
        proc, conn = run_peer(_kicker, sim.dir, port, 50)
        assert conn.poll(10) and conn.recv() > 0    # all 50 kicks are in
        assert ec.wait(5)
        assert ec.pending() == port
        assert ec.pending() is None
        assert not ec.wait(0.05)
        conn.send("done")
        proc.join(10)
        assert proc.exitcode == 0


def test_ports_work_with_selectors(sim):
    p = sim(1)
    with p.evtchn() as a, p.evtchn() as b:
        pa = a.alloc_unbound(platform.DOMID_SELF)
        pb = b.bind_interdomain(platform.DOMID_SELF, pa)
        take_first_event(b, pb)
        with selectors.DefaultSelector() as sel:
            sel.register(a, selectors.EVENT_READ)
            sel.register(b, selectors.EVENT_READ)
            assert sel.select(0) == []
            b.notify(pb)
            ready = sel.select(5)
            assert [key.fileobj for key, _ in ready] == [a]
            assert a.pending() == pa


def test_closing_the_platform_releases_everything(sim):
    p = sim(1)
    g = p.share(2, 3)
    ec = p.evtchn()
    ec.alloc_unbound(2)
    assert len(os.listdir(sim.dir)) > 2
    view = g.buffer
    p.close()
    assert sorted(os.listdir(sim.dir)) == ["gnt.1.next", "lock"]
    with pytest.raises(ValueError):
        g.buffer
    with pytest.raises(ValueError):
        view[0]                     # the view handed out is released with the pages
    with pytest.raises(ValueError):
        ec.notify(1)


def test_release_refuses_while_a_buffer_is_exported(sim):
    g = sim(1).share(2, 1)
    held = pickle.PickleBuffer(g.buffer)    # holds a Py_buffer exported by .buffer
    with pytest.raises(BufferError):
        g.release()
    assert g.buffer[0] == 0             # still mapped: nothing dangles
    del held
    g.release()
    with pytest.raises(ValueError):
        g.buffer


def _child_drops_inherited(conn, grant, ec):
    grant.release()                 # the parent's: must not end the parent's share
    ec.close()
    conn.send("dropped")


def test_handles_inherited_through_fork_are_left_alone(sim):
    p1, p2 = sim(1), sim(2)
    g = p1.share(2, 1)
    ec = p1.evtchn()
    port = ec.alloc_unbound(2)
    proc, conn = run_peer(_child_drops_inherited, g, ec)
    assert finish(proc, conn) == "dropped"
    with p2.map(1, g.refs):         # the share is still there
        pass
    with p2.evtchn() as other:      # and so is the port
        local = other.bind_interdomain(1, port)
        take_first_event(other, local)


# --- latency -------------------------------------------------------------------------------

def _ponger(conn, sim_dir, port, rounds):
    with Platform(backend="sim", sim_dir=sim_dir, domid=2) as p, p.evtchn() as ec:
        local = ec.bind_interdomain(1, port)
        take_first_event(ec, local)
        ec.notify(local)
        for _ in range(rounds):
            if not ec.wait(5) or ec.pending() != local:
                conn.send("lost")
                return
            ec.notify(local)
        conn.send("ok")


def test_doorbell_rtt_through_python(sim, capsys):
    rounds = 2000
    with sim(1).evtchn() as ec:
        port = ec.alloc_unbound(2)
        proc, conn = run_peer(_ponger, sim.dir, port, rounds)
        assert ec.wait(10) and ec.pending() == port
        t0 = time.perf_counter()
        for _ in range(rounds):
            ec.notify(port)
            assert ec.wait(5) and ec.pending() == port
        dt = time.perf_counter() - t0
        assert finish(proc, conn) == "ok"
    rtt_us = dt / rounds * 1e6
    with capsys.disabled():
        print(f"\nPLAT-RATE doorbell_rtt_us_python={rtt_us:.2f} rounds={rounds}")
    assert rtt_us < 5000
