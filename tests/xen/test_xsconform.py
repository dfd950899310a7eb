"""The XenStore conformance suite against the sim xenstored: one pytest case per suite case,
the command line a real-Xen run uses, and proof that the suite notices a wrong daemon."""
import errno
import os
import re
import subprocess
import sys
import threading
import time

import pytest

from mwcomms.tools import xsconform
from mwcomms.xen import xenstored


@pytest.fixture(scope="module")
def sim():
    with xenstored.running() as xs:
        target = xsconform.sim_target(xs.socket_path)
        yield target
        target.cleanup()


@pytest.mark.parametrize("name", list(xsconform.CASES))
def test_case(sim, name):
    result = xsconform.run_case(sim, name)
    if result.status == "SKIP":
        pytest.skip(result.reason)
    assert result.status == "PASS", result.reason


def test_at_least_30_cases_in_every_area():
    names = list(xsconform.CASES)
    assert len(names) >= 30
    for prefix in ("rw-", "mkdir-", "rm-", "dir-", "perms-", "dom-", "watch-", "tx-", "wire-"):
        assert any(n.startswith(prefix) for n in names), prefix


def test_command_line_sim_whole_suite_under_5s():
    env = dict(os.environ, PYTHONSAFEPATH="1")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mwcomms.tools.xsconform", "--sim"],
                          capture_output=True, text=True, env=env, timeout=60)
    elapsed = time.monotonic() - t0
    lines = proc.stdout.splitlines()
    result = [l for l in lines if l.startswith("XSCONF RESULT:")]
    assert result, proc.stdout + proc.stderr
    m = re.match(r"XSCONF RESULT: (\d+) passed, (\d+) failed, (\d+) skipped", result[0])
    passed, failed, skipped = map(int, m.groups())
    assert (passed, failed, skipped) == (len(xsconform.CASES), 0, 0), proc.stdout
    assert proc.returncode == 0
    per_case = [l for l in lines if re.match(r"XSCONF (PASS|FAIL|SKIP) ", l)]
    assert len(per_case) == len(xsconform.CASES)
    assert elapsed < 5.0, f"suite took {elapsed:.1f}s"
    print(f"xsconform --sim: {elapsed:.2f}s including interpreter start")


def test_command_line_on_running_daemon_and_missing_socket(tmp_path):
    env = dict(os.environ, PYTHONSAFEPATH="1")
    with xenstored.running(mode="process") as xs:
        proc = subprocess.run([sys.executable, "-m", "mwcomms.tools.xsconform",
                               "--socket", xs.socket_path, "rw-roundtrip", "dom-chown-eperm"],
                              capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[:2] == ["XSCONF PASS rw-roundtrip",
                                            "XSCONF PASS dom-chown-eperm"]
    proc = subprocess.run([sys.executable, "-m", "mwcomms.tools.xsconform",
                           "--socket", str(tmp_path / "nothing")],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1
    assert "XSCONF RESULT: 0 passed, 1 failed, 0 skipped" in proc.stdout


def test_without_domain_connection_domain_cases_skip(tmp_path):
    """What a real-Xen run without a domU relay prints: SKIP with the reason, exit 0."""
    with xenstored.running() as xs:
        target = xsconform.Target(priv=xsconform._client_factory(xs.socket_path),
                                  socket_path=xs.socket_path)
        out = []
        results = xsconform.run(target, ["dom-chown-eperm", "watch-introduce-release",
                                         "rw-roundtrip"], out=out.append)
    assert [r.status for r in results] == ["SKIP", "SKIP", "PASS"]
    assert out[0].startswith("XSCONF SKIP dom-chown-eperm: no unprivileged domain")
    assert out[-1] == "XSCONF RESULT: 1 passed, 0 failed, 2 skipped"


def test_suite_catches_a_wrong_daemon():
    """A daemon that leaks ENOENT where the C one says EACCES, or has no quotas, fails."""
    with xenstored.running() as xs:
        store = xs._daemon.store
        target = xsconform.sim_target(xs.socket_path)
        store._errno_from_parents = lambda conn, path, err, perm: err
        store.quotas.nodes = store.quotas.watches = 0
        bad = {r.name: r for r in xsconform.run(target, [
            "dom-enoent-vs-eacces", "dom-read-denied-eacces", "dom-node-quota-enospc",
            "dom-watch-quota-e2big", "rw-roundtrip"], out=lambda s: None)}
    assert bad["dom-enoent-vs-eacces"].status == "FAIL"
    assert "expected EACCES, got ENOENT" in bad["dom-enoent-vs-eacces"].reason
    assert bad["dom-node-quota-enospc"].status == "FAIL"
    assert bad["dom-watch-quota-e2big"].status == "FAIL"
    assert bad["rw-roundtrip"].status == "PASS"


def test_hung_case_is_reported_not_waited_for(monkeypatch):
    monkeypatch.setattr(xsconform, "CASE_TIMEOUT", 0.5)
    release, finished = threading.Event(), threading.Event()

    def hangs(c):
        c.cleanups.append(finished.set)
        release.wait(10)
    monkeypatch.setitem(xsconform.CASES, "test-hangs", hangs)
    with xenstored.running() as xs:
        target = xsconform.Target(priv=xsconform._client_factory(xs.socket_path))
        t0 = time.monotonic()
        r = xsconform.run_case(target, "test-hangs")
        elapsed = time.monotonic() - t0
        release.set()
        assert finished.wait(5)
        for t in threading.enumerate():     # let the case tidy up before the daemon goes
            if t.name == "xsconform-test-hangs":
                t.join(5)
    assert r.status == "FAIL" and "hung" in r.reason
    assert elapsed < 2
