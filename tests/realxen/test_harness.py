"""The real-Xen harness's own parts that need no QEMU: the cpio writer, the console parser,
the step list. Fast; they run everywhere."""
import importlib.util
import os
import shutil
import stat
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


harness = _load("realxen_harness_unit", os.path.join(HERE, "harness.py"))
steps = _load("realxen_steps_unit", os.path.join(HERE, "guest", "steps.py"))


def _read_newc(path):
    """Parse a newc archive independently of the writer: name -> (mode, body, rdev)."""
    with open(path, "rb") as f:
        data = f.read()
    out, pos = {}, 0
    while True:
        assert data[pos:pos + 6] == b"070701", "bad magic at %d" % pos
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rmaj, rmin, namesize = fields[1], fields[6], fields[9], fields[10], fields[11]
        name = data[pos + 110: pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos:pos + size]
        pos += size
        pos += -pos % 4
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, body, (rmaj, rmin))


def test_cpio_entries_round_trip(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "prog").write_bytes(b"\x7fELF" + bytes(range(256)) * 3)
    (src / "prog").chmod(0o755)
    img = harness.Cpio()
    img.file("usr/bin/prog", str(src / "prog"))
    img.data("etc/odd", b"abc")                 # a length that needs padding
    img.symlink("usr/bin/alias", "prog")
    img.chardev("dev/console", 5, 1)
    img.dir("tmp", 0o1777)
    out = tmp_path / "x.cpio"
    img.write(str(out))
    got = _read_newc(str(out))
    assert got["usr/bin/prog"][1] == (src / "prog").read_bytes()
    assert stat.S_IMODE(got["usr/bin/prog"][0]) == 0o755 and stat.S_ISREG(got["usr/bin/prog"][0])
    assert got["etc/odd"][1] == b"abc"
    assert stat.S_ISLNK(got["usr/bin/alias"][0]) and got["usr/bin/alias"][1] == b"prog"
    assert stat.S_ISCHR(got["dev/console"][0]) and got["dev/console"][2] == (5, 1)
    assert stat.S_ISDIR(got["tmp"][0]) and stat.S_IMODE(got["tmp"][0]) == 0o1777
    for parent in ("usr", "usr/bin", "etc", "dev"):   # created implicitly, before their children
        assert stat.S_ISDIR(got[parent][0])
    names = list(got)
    assert names.index("usr") < names.index("usr/bin") < names.index("usr/bin/prog")


@pytest.mark.skipif(not shutil.which("cpio"), reason="cpio(1) not installed")
def test_cpio_is_read_by_gnu_cpio(tmp_path):
    img = harness.Cpio()
    img.data("a/b/c.txt", "hello\n")
    img.symlink("a/link", "b/c.txt")
    out = tmp_path / "x.cpio.gz"
    img.write(str(out), compress=True)
    dest = tmp_path / "dest"
    dest.mkdir()
    subprocess.run("gzip -dc %s | cpio -id --quiet" % out, shell=True, cwd=dest, check=True)
    assert (dest / "a" / "b" / "c.txt").read_text() == "hello\n"
    assert os.readlink(dest / "a" / "link") == "b/c.txt"


def _feed(lines, **cfg):
    result, marks = harness.Result(), {}
    cfg = harness.Config(log=lambda s: None, **cfg)
    clock = harness._Clock(lambda s: None)
    stops = [harness._follow(cfg, clock, result, marks, line, 1.0) for line in lines]
    return result, marks, stops


def test_console_results_and_context():
    result, marks, stops = _feed([
        "(XEN) Xen version 4.17.7 (Debian 4.17.7)",
        "XENT-BOOT dom0-userspace dom0 uptime 3.4 s",
        "XENT-LOG dom0| PLAT PASS: open platform",
        "XENT-LOG dom0| XENT FAIL fake: program output is never a result",
        "XENT PASS plat-self: 26 checks (0.7 s)",
        "[  25.3] hrtimer: interrupt took 24044424 ns XENT FAIL ring-stress: back rc=1",
        "XENT SKIP xsconform/dom-x: no domain",
        "XENT PASS name with spaces: is malformed",
    ])
    assert result.status == {"plat-self": "PASS", "ring-stress": "FAIL", "xsconform/dom-x": "SKIP"}
    assert result.reason["plat-self"] == "26 checks (0.7 s)"
    assert result.reason["ring-stress"] == "back rc=1"
    assert result.context["plat-self"][-1] == "dom0| XENT FAIL fake: program output is never a result"
    assert "fake" not in result.status
    assert "xen" in marks and "dom0-userspace" in marks
    assert stops == [None] * 8


def test_console_fatal_lines_stop_but_logged_ones_do_not():
    _, _, stops = _feed(["XENT-LOG domU-console| Kernel panic - not syncing",
                         "(XEN) Hardware Dom0 crashed: 'noreboot' set - not rebooting."])
    assert stops[0] is None
    assert "Dom0 crashed" in stops[1]


def test_step_names_are_unique_and_match_the_table():
    assert len(steps.NAMES) == len(set(steps.NAMES))
    run = [name for name, _ in steps.STEPS]
    # the first two are reported by dom0-init.sh and by the runner's start
    assert steps.NAMES[:2] == ["dom0-xenstored", "dom0-python"]
    assert steps.NAMES[2:] == run
    assert harness.STEP_NAMES == steps.NAMES
    for name in steps.NAMES:
        assert harness.XENT_LINE.search("XENT PASS %s: ok" % name).group(2) == name


def test_package_list_names_the_essentials():
    pkgs = harness.read_package_list()
    for p in ("xen-hypervisor-4.17-amd64", "xen-utils-4.17", "xenstore-utils", "linux-image-amd64",
              "busybox-static", "python3.11-minimal", "libpython3.11-stdlib"):
        assert p in pkgs
    assert len(pkgs) == len(set(pkgs))
