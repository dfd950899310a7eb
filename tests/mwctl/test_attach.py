"""`mwctl attach|detach`, the toolstack step, against the project's xenstored (sim), run as the
installed console script: the nodes of both ends with their owners and permissions, checked
from each domain's own unprivileged connection (the frontend cannot write the backend's keys
and the other way round), then removed; exit codes for the failures an operator meets."""
import errno
import json
import os
import subprocess
import sys

import pyxs
import pytest

from mwcomms.xen import xenbus, xenstored

FRONT, INS = 5, 6
MWCTL = os.path.join(os.path.dirname(sys.executable), "mwctl")


@pytest.fixture
def xs(tmp_path):
    if not os.path.exists(MWCTL):
        pytest.skip("the mwctl console script is not installed")
    with xenstored.running(str(tmp_path / "xs")) as daemon:
        tool = xenbus.connect_xenstore(daemon.socket_path)
        for dom in (FRONT, INS):
            xenbus.introduce(tool, dom)
        yield daemon, tool
        tool.close()


def mwctl(daemon, *argv, run_dir="/nonexistent"):
    return subprocess.run([MWCTL, "--dir", run_dir, "--xenstore", daemon.socket_path, *argv],
                          capture_output=True, text=True, timeout=30)


def test_attach_creates_both_ends_with_owners_and_perms(xs):
    daemon, tool = xs
    r = mwctl(daemon, "attach", "--frontend", str(FRONT), "--ins", str(INS))
    assert r.returncode == 0, r.stderr
    fp, bp = xenbus.front_path(FRONT), xenbus.back_path(INS, FRONT)
    assert tool.read(f"{fp}/backend".encode()).decode() == bp
    assert tool.read(f"{fp}/backend-id".encode()).decode() == str(INS)
    assert tool.read(f"{bp}/frontend".encode()).decode() == fp
    assert tool.read(f"{bp}/frontend-id".encode()).decode() == str(FRONT)
    for p in (fp, f"{fp}/state"):
        assert tool.get_perms(p.encode()) == [f"n{FRONT}".encode(), f"r{INS}".encode()]
    for p in (bp, f"{bp}/state"):
        assert tool.get_perms(p.encode()) == [f"n{INS}".encode(), f"r{FRONT}".encode()]

    front = xenbus.connect_xenstore(daemon.domain_socket(FRONT))
    ins = xenbus.connect_xenstore(daemon.domain_socket(INS))
    try:
        # each end writes its own keys and reads the other's ...
        front.write(f"{fp}/state".encode(), b"1")
        ins.write(f"{bp}/state".encode(), b"2")
        assert front.read(f"{bp}/state".encode()) == b"2"
        assert ins.read(f"{fp}/state".encode()) == b"1"
        # ... and cannot write the other's
        for client, path in ((front, f"{bp}/state"), (ins, f"{fp}/state"),
                             (front, f"{bp}/event-channel"), (ins, f"{fp}/event-channel")):
            with pytest.raises(pyxs.PyXSError) as exc:
                client.write(path.encode(), b"9")
            assert exc.value.args[0] == errno.EACCES, path
    finally:
        front.close()
        ins.close()

    # a second attach refuses, --force replaces
    r = mwctl(daemon, "attach", "--frontend", str(FRONT), "--ins", str(INS))
    assert r.returncode == 1 and "already attached" in r.stderr
    r = mwctl(daemon, "attach", "--frontend", str(FRONT), "--ins", str(INS), "--force")
    assert r.returncode == 0, r.stderr
    assert tool.read(f"{bp}/state".encode()) == b"1"

    r = mwctl(daemon, "detach", "--frontend", str(FRONT), "--ins", str(INS))
    assert r.returncode == 0, r.stderr
    assert not tool.exists(fp.encode()) and not tool.exists(bp.encode())
    r = mwctl(daemon, "detach", "--frontend", str(FRONT), "--ins", str(INS))
    assert r.returncode == 0 and "nothing to do" in r.stdout


def test_attach_errors(xs, tmp_path):
    daemon, tool = xs
    r = mwctl(daemon, "attach", "--frontend", "77", "--ins", str(INS))
    assert r.returncode == 5 and "domain 77 does not exist" in r.stderr
    r = subprocess.run([MWCTL, "--dir", "/nonexistent", "--xenstore", str(tmp_path / "nope"),
                        "attach", "--frontend", "1", "--ins", "2"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 3 and "cannot reach XenStore" in r.stderr
    r = subprocess.run([MWCTL, "attach", "--frontend", "1"], capture_output=True, text=True)
    assert r.returncode == 2


def test_attach_then_xenstore_shows_decoded_states(xs):
    daemon, tool = xs
    assert mwctl(daemon, "attach", "--frontend", str(FRONT), "--ins", str(INS)).returncode == 0
    r = mwctl(daemon, "xenstore")
    assert r.returncode == 0, r.stderr
    assert f"/local/domain/{FRONT}/device/mwcomms" in r.stdout
    assert 'state = "1 (Initialising)"' in r.stdout
    r = mwctl(daemon, "xenstore", "--json")
    doc = json.loads(r.stdout)
    dev = doc[f"/local/domain/{FRONT}/device/mwcomms"]["children"]["0"]
    assert dev["children"]["state"]["state"] == "INITIALISING"
    assert dev["children"]["backend-id"]["value"] == str(INS)
    r = mwctl(daemon, "xenstore", "/local/domain/99")
    assert r.returncode == 5
    # from inside a domain (its own unprivileged connection, as on a domU): it cannot list
    # /local/domain, it finds its own device by its home and reads the backend's keys
    r = subprocess.run([MWCTL, "--dir", "/nonexistent", "--xenstore", daemon.domain_socket(FRONT),
                        "xenstore", "--json"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert list(json.loads(r.stdout)) == [f"/local/domain/{FRONT}/device/mwcomms"]
    r = subprocess.run([MWCTL, "--dir", "/nonexistent", "--xenstore", daemon.domain_socket(FRONT),
                        "--control", "/nonexistent/c.sock", "status", "--json"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    dev, = json.loads(r.stdout)["xenstore"]
    assert (dev["frontend"], dev["ins"], dev["front_state"], dev["back_state"]) == \
        (FRONT, INS, "INITIALISING", "INITIALISING")


def test_status_survives_what_a_domain_writes_in_its_own_keys(xs):
    """The frontend owns its directory: garbage there is shown, never trusted. A `backend` key
    pointing elsewhere (here: keys dom0 can read that say Connected) is flagged, and status
    reads the backend where the toolstack made it."""
    daemon, tool = xs
    assert mwctl(daemon, "attach", "--frontend", str(FRONT), "--ins", str(INS)).returncode == 0
    fp, bp = xenbus.front_path(FRONT), xenbus.back_path(INS, FRONT)
    tool.write(b"/decoy/state", b"4")
    front = xenbus.connect_xenstore(daemon.domain_socket(FRONT))
    try:
        front.write(f"{fp}/state".encode(), b"99")
        front.write(f"{fp}/backend".encode(), b"/decoy")
    finally:
        front.close()
    r = mwctl(daemon, "--control", "/nonexistent/c.sock", "status", "--json")
    assert r.returncode == 0, r.stderr
    dev, = json.loads(r.stdout)["xenstore"]
    assert (dev["front_path"], dev["back_path"]) == (fp, bp)
    assert dev["front_state"] == "UNKNOWN" and dev["back_state"] == "INITIALISING"
    assert dev["suspicious"] == [f"the frontend's backend key is '/decoy', not {bp}"]
    assert "/decoy" not in json.dumps(dev["back_keys"])
    r = mwctl(daemon, "--control", "/nonexistent/c.sock", "status")
    assert r.returncode == 0 and "frontend dom5 Unknown, INS dom6 Initialising" in r.stdout
    assert "suspicious: the frontend's backend key is '/decoy'" in r.stdout

    # a backend-id that is not a number: shown, no backend read at all
    front = xenbus.connect_xenstore(daemon.domain_socket(FRONT))
    try:
        front.write(f"{fp}/backend-id".encode(), b"6/../../0")
    finally:
        front.close()
    doc = json.loads(mwctl(daemon, "--control", "/x/c.sock", "status", "--json").stdout)
    mine = [d for d in doc["xenstore"] if d["ins"] == "6/../../0"]
    assert len(mine) == 1 and mine[0]["back_keys"] == {} and mine[0]["back_path"] is None
    # the INS's own directory still shows as its device, from its side
    assert any(d["ins"] == INS and d["back_path"] == bp for d in doc["xenstore"])
