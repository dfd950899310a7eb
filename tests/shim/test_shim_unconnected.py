"""Sockets native Linux fails at once, natively and through the backbone (`mwcomms run`), in
C: a TCP socket that never connected (recv/read ENOTCONN, send/write EPIPE with SIGPIPE unless
MSG_NOSIGNAL, poll wakes), the same socket inherited across exec, a listening socket (not
readable while no connection is pending; data calls fail as native) that then accepts a
connection whose bytes arrive untouched; a connected UDP socket to a closed port (ICMP port
unreachable): ECONNREFUSED once, on the next recv, or from SO_ERROR, or from a MSG_PEEK.

The two runs must print the same lines. Natively the program runs in a network namespace of
its own with only loopback up, as the INS's is.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROGRAM = Path(__file__).resolve().parent / "programs" / "unconnected.c"
MWCOMMS = os.path.join(os.path.dirname(sys.executable), "mwcomms")

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare") or
                                not shutil.which("gcc"),
                                reason="needs root, unshare(1) and gcc: the native run and the "
                                       "INS each get a network namespace of their own")


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    exe = tmp_path_factory.mktemp("unconnected") / "unconnected"
    r = subprocess.run(["gcc", "-Wall", "-Wextra", "-Werror", "-O1", "-o", str(exe),
                        str(PROGRAM)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return str(exe)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    if not os.path.exists(MWCOMMS):
        pytest.skip("the mwcomms CLI is not installed")
    run_dir = str(tmp_path_factory.mktemp("backbone"))
    up = subprocess.run([MWCOMMS, "--dir", run_dir, "up"], capture_output=True, text=True,
                        stdin=subprocess.DEVNULL, timeout=120)
    if up.returncode != 0:
        subprocess.run([MWCOMMS, "--dir", run_dir, "down"], capture_output=True, timeout=60)
        pytest.fail(f"mwcomms up failed ({up.returncode}): {up.stdout}{up.stderr}")
    yield run_dir
    subprocess.run([MWCOMMS, "--dir", run_dir, "down"], capture_output=True, timeout=60)


def test_unconnected_and_refused_same_as_native(program, backbone):
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    native = subprocess.run(["unshare", "--net", "--", "sh", "-c",
                             'ip link set lo up && exec "$0"', program],
                            capture_output=True, text=True, timeout=60, env=env)
    assert native.returncode == 0, native.stderr
    fwd = subprocess.run([MWCOMMS, "--dir", backbone, "run", "--", program], capture_output=True,
                         text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
    assert fwd.returncode == 0, fwd.stderr
    want, got = native.stdout.splitlines(), fwd.stdout.splitlines()
    # what the program must have seen natively, or the comparison proves little
    assert "unconnected recv: -1 ENOTCONN" in want and "udp recv: -1 ECONNREFUSED" in want
    assert "client got: hi (2 bytes)" in want
    assert got == want, f"forwarded stderr:\n{fwd.stderr[-3000:]}"
