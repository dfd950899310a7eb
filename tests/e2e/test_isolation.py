"""Isolation: a program run with `mwcomms run --isolate` reaches servers that listen only in
the INS's network namespace (one started natively there with `ip netns exec`, one run under
the shim); the same program without the shim, on this host or in a namespace like the one
--isolate makes, cannot; raw and packet sockets are refused and no kernel socket is made.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = str(Path(__file__).resolve().parent / "programs" / "isolation_probe.py")
PY = sys.executable
TOKEN = "only-in-the-ins-" + os.urandom(4).hex()


def plain(argv, netns=False):
    """argv without the shim, on this host or (netns) in an empty network namespace."""
    env = dict(os.environ, PYTHONSAFEPATH="1")
    env.pop("LD_PRELOAD", None)
    if netns:
        argv = ["unshare", "--net", "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def ports(backbone, programs):
    native = programs(backbone.netns_argv([PY, PROBE, "serve", TOKEN]), "native-in-ins")
    shimmed = programs(backbone.argv([PY, PROBE, "serve", TOKEN]), "shimmed")
    return {"native in the INS namespace": native.line("PORT ").split()[1],
            "under the shim": shimmed.line("PORT ").split()[1]}


def test_isolated_program_reaches_servers_only_in_the_ins(backbone, ports):
    for where, port in ports.items():
        r = backbone.run([PY, PROBE, "connect", port, TOKEN], isolate=True)
        assert r.stdout.split() == ["REACHED", "True"], (where, r.stdout, r.stderr)


def test_without_the_shim_they_cannot_be_reached(backbone, ports):
    for where, port in ports.items():
        r = plain([PY, PROBE, "connect", port, TOKEN])
        assert r.stdout.startswith("UNREACHABLE") or r.stdout.split() == ["REACHED", "False"], \
            (where, "from this host", r.stdout, r.stderr)
        r = plain([PY, PROBE, "connect", port, TOKEN], netns=True)
        assert r.stdout.split() == ["UNREACHABLE", "ENETUNREACH"], \
            (where, "from an empty namespace", r.stdout, r.stderr)


def test_isolate_stops_system_calls_past_the_shim(backbone, ports):
    """A program that bypasses the shim (raw system calls, as a static binary) has no
    network at all under --isolate."""
    for port in ports.values():
        r = backbone.run([PY, PROBE, "bypass", port], isolate=True)
        if r.stdout.startswith("SKIP"):
            pytest.skip(r.stdout)
        assert r.stdout.split() == ["UNREACHABLE", "ENETUNREACH"], (r.stdout, r.stderr)


@pytest.mark.parametrize("isolate", [False, True], ids=["run", "run-isolate"])
def test_raw_and_packet_sockets_are_refused(backbone, isolate):
    r = backbone.run([PY, PROBE, "raw"], isolate=isolate)
    assert r.stdout.splitlines() == ["REFUSED inet-raw-icmp EPERM", "REFUSED inet-raw-tcp EPERM",
                                     "REFUSED inet6-raw-icmpv6 EPERM",
                                     "REFUSED packet-raw EAFNOSUPPORT",
                                     "REFUSED packet-dgram EAFNOSUPPORT",
                                     "FDS unchanged"], (r.stdout, r.stderr)
    # each refusal is logged
    assert r.stderr.count("tcp_ip_wrapper") >= 5, r.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="needs root (raw sockets) and unshare(1)")
def test_raw_probe_sees_sockets_that_are_made():
    """The probe itself: natively (root) the same calls do make kernel sockets, and it says
    so; so "FDS unchanged" above means the shim made none."""
    r = plain([PY, PROBE, "raw"], netns=True)
    assert r.stdout.splitlines()[0] == "CREATED inet-raw-icmp", r.stdout + r.stderr
    assert r.stdout.splitlines()[-1].startswith("FDS new socket:["), r.stdout
