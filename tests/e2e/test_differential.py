"""Differential tests: each scenario of scenarios.py runs natively and through the backbone
(`mwcomms run`), and the two transcripts must be the same, line by line: return values, errno
names, bytes, order.

Natively, the scenario runs in a network namespace of its own with only loopback up, as the
INS's is, so that both see the same network (and nothing can leave this machine).
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SCENARIOS = os.path.join(HERE, "scenarios.py")
NAMES = ["tcp_basic", "tcp_ipv6", "errors", "nonblocking_connect", "accept4_flags", "msg_flags",
         "udp", "big_transfer", "dup_close", "fork_child", "exec_child", "resolve",
         "unconnected", "udp_refused", "mmsg", "ioctls", "resolve_flags", "fd_calls",
         "accept_timeout", "eintr", "sockopts", "rw_calls", "odd_calls",
         "readiness", "server_idioms",
         "write_after_peer_close"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                reason="needs root and unshare(1): the native runs and the INS "
                                       "each get a network namespace of their own")


def _env():
    env = dict(os.environ, PYTHONSAFEPATH="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("LD_PRELOAD", None)
    return env


def transcript(out: str) -> list:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def run_native(name):
    script = ("ip link set lo up && exec \"$0\" \"$@\"")
    return subprocess.run(["unshare", "--net", "--", "sh", "-c", script, sys.executable, SCENARIOS,
                           name], capture_output=True, text=True, timeout=60, env=_env())


def run_forwarded(backbone, name):
    """The scenario under `mwcomms run`, through the backbone of tests/e2e/conftest.py."""
    return subprocess.run(backbone.argv([sys.executable, SCENARIOS, name]), capture_output=True,
                          text=True, timeout=60, env=_env())


@pytest.mark.parametrize("name", NAMES)
def test_same_as_native(backbone, name):
    native = run_native(name)
    assert native.returncode == 0, f"native run failed:\n{native.stdout}\n{native.stderr}"
    fwd = run_forwarded(backbone, name)
    want, got = transcript(native.stdout), transcript(fwd.stdout)
    assert want, "the native run observed nothing"
    for i, (w, g) in enumerate(zip(want, got)):
        assert g == w, (f"step {i} differs: native {w} vs forwarded {g}\n"
                        f"forwarded stderr:\n{fwd.stderr[-3000:]}")
    assert len(got) == len(want), (f"native observed {len(want)} steps, forwarded {len(got)}; "
                                   f"forwarded stderr:\n{fwd.stderr[-3000:]}")
    assert fwd.returncode == 0, fwd.stderr[-3000:]
