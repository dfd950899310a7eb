"""mwcommsd follows the device to a new INS domain (what `xl destroy` + `xl create` + `mwctl
attach` do on Xen, where the new INS has a new domain id), on the sim backend: mwcommsd runs
without --ins-domid, the INS of domain 2 dies and its home goes away, the toolstack attaches
the device to domain 3, and mwcommsd connects to the INS there without being restarted."""
import importlib.util
import json
import os
import signal

import pytest

from mwcomms.xen import xenbus, xenstored

_spec = importlib.util.spec_from_file_location(
    "mwcommsd_world", os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_mwcommsd.py"))
base = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(base)

FRONT, OLD, NEW = 1, 2, 3


@pytest.fixture
def world(tmp_path):
    with xenstored.running() as xs:
        tool = xenbus.connect_xenstore(xs.socket_path)
        for dom in (FRONT, OLD):
            xenbus.introduce(tool, dom)
        w = base.World(xs, tool, tmp_path)
        try:
            yield w
        finally:
            w.close()


def _start_ins(w, domid):
    return w._spawn(["mwcomms.ins.daemon", "--backend", "sim", "--sim-dir", w.simdir,
                     "--domid", str(domid), "--xenstore", w.xs.domain_socket(domid)],
                    str(w.tmp / f"ins{domid}.log"))


def _connected(w, bp):
    return w.state(w.fp) == 4 and w.state(bp) == 4


def test_mwcommsd_follows_the_device_to_a_new_ins(world):
    if not base._have_ins():
        pytest.skip("the INS daemon (mwcomms.ins.daemon) is not installed")
    w = world
    stats = w.tmp / "stats.json"
    w.mwd = w._spawn(["mwcomms.daemon", "--backend", "sim", "--sim-dir", w.simdir,
                      "--domid", str(FRONT), "--xenstore", w.xs.domain_socket(FRONT),
                      "--socket", w.control, "--stats", str(stats)],
                     str(w.tmp / "mwcommsd.log"))
    base._wait(lambda: os.path.exists(w.control), what="control socket")
    w.ins = _start_ins(w, OLD)
    base._wait(lambda: _connected(w, w.bp), 30, "Connected to dom2:\n" + w.logs())
    base._wait(w._ins_up, 10, "engine attached to dom2")

    # the INS domain is destroyed: its daemon dies and its home is removed (xl does that)
    w.ins.send_signal(signal.SIGKILL)
    w.ins.wait()
    xenbus.write_txn(w.tool, {}, remove=(f"/local/domain/{OLD}",))
    base._wait(lambda: not w._ins_up(), 20, "mwcommsd notices that the INS is gone")

    # the toolstack: a new INS domain, the device detached from the old and attached to it
    xenbus.introduce(w.tool, NEW)
    xenbus.detach(w.tool, FRONT, OLD)
    fp, bp = xenbus.attach(w.tool, FRONT, NEW)
    new = _start_ins(w, NEW)
    try:
        base._wait(lambda: _connected(w, bp), 30, "Connected to dom3:\n" + w.logs())
        base._wait(w._ins_up, 10, "engine attached to dom3")
        assert xenbus.read_opt(w.tool, f"{fp}/backend-id") == b"3"
        base._wait(lambda: stats.exists() and json.loads(stats.read_text()).get("ins_domid") == NEW,
                   10, "stats name the new INS")
        assert w.mwd.poll() is None, "mwcommsd exited"
    finally:
        assert w.stop(new) == 0
    assert w.stop(w.mwd) == 0
