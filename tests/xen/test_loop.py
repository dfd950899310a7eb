"""The loop helpers the two daemons share: a failing C loop is reported, a failing control loop
makes the daemon exit 1, and the main thread stays free while a control loop runs."""
import errno
import logging
import threading

import pytest

from mwcomms.xen._loop import SPIN_OFF, LoopThread, serve, spin_config


def test_loop_thread_runs_until_stopped_and_reports_failure():
    go = threading.Event()
    state = {"rc": 0}

    def run():
        go.wait(5)
        return state["rc"]

    t = LoopThread("demo", run, go.set)
    t.start()
    t.stop()                                   # the loop returned 0: no error
    go.clear()
    state["rc"] = -errno.EPROTO
    t.start()
    with pytest.raises(OSError) as e:
        t.stop()
    assert e.value.errno == errno.EPROTO and "demo loop" in str(e.value)


def test_serve_returns_0_after_stop_and_1_after_a_crash(caplog):
    stop = threading.Event()
    seen = []

    def run(ev):
        seen.append(threading.current_thread() is not threading.main_thread())
        ev.wait(5)

    threading.Timer(0.1, stop.set).start()
    assert serve(run, stop, "x", logging.getLogger("t")) == 0 and seen == [True]

    def crash(ev):
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR):
        assert serve(crash, threading.Event(), "x", logging.getLogger("t")) == 1
    assert "boom" in caplog.text


def test_spin_config_maps_a_budget_to_the_engines_value():
    """None: the engine's default (0 in its config); 0 us: never poll; negative: refused."""
    assert spin_config(None) == 0
    assert spin_config(0) == SPIN_OFF
    assert spin_config(75) == 75
    with pytest.raises(ValueError, match="spin budget -1"):
        spin_config(-1)
    with pytest.raises(ValueError, match="spin budget 1001"):
        spin_config(1001)
