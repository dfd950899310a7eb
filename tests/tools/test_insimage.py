"""`make ins-image` (tools/insimage.py) without Xen: the image is built from Debian packages
(apt-get download, cached like the real-Xen tests' downloads), is under 40 MB, holds the INS
and not the frontend, and its own Python, run in a chroot of the unpacked initramfs, starts
the INS daemon. Booting it is tests/realxen's job (steps ins-*)."""
import os
import shutil
import subprocess

import pytest

from mwcomms.tools import _debimage as deb
from mwcomms.tools import insimage


def _read_newc(data):
    """name -> (mode, body) of a newc archive."""
    out, pos = {}, 0
    while True:
        assert data[pos:pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[pos + 110: pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos:pos + size]
        pos += size + (-size % 4)
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, body)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    for tool in ("apt-get", "apt-cache", "dpkg-deb", "strip"):
        if not shutil.which(tool):
            pytest.skip("%s missing: the INS image is built from Debian packages" % tool)
    out = tmp_path_factory.mktemp("ins-image")
    log = []
    try:
        # Exactly the packages `make ins-image` fetches: a superset (say the real-Xen tests'
        # list) would hide a library the image needs and its list lacks.
        root = deb.fetch(insimage.DEFAULT_CACHE, list(insimage.PACKAGES), log.append,
                         python=deb.host_python311())
    except deb.SetupError as exc:
        pytest.skip("cannot fetch the Debian packages here: %s" % exc)
    import mwcomms
    site = os.path.dirname(os.path.dirname(os.path.abspath(mwcomms.__file__)))
    result = insimage.build(root, site, str(out), install_dir="/var/lib/mwcomms/ins",
                            log=log.append)
    with open(result["initrd"], "rb") as f:
        entries = _read_newc(f.read())
    return result, entries, out


def test_image_size_and_files(image):
    result, entries, out = image
    assert result["bytes"] < 40e6, result
    assert sorted(os.listdir(out)) == ["ins-initrd.cpio", "mwcomms-ins.cfg", "vmlinux.gz"]
    dist = "usr/lib/python3/dist-packages/"
    for need in ("init", "bin/busybox", "usr/bin/python3.11", "lib/modules/xen-gntdev.ko",
                 "lib/modules/xen-netfront.ko", dist + "mwcomms/ins/daemon.py",
                 dist + "mwcomms/_native.abi3.so", dist + "pyxs/client.py", "etc/hosts"):
        assert need in entries, need
    for absent in ("mwcomms/lib/tcp_ip_wrapper.so", "mwcomms/cli.py", "mwcomms/daemon.py",
                   "mwcomms/tools/mwctl.py"):
        assert dist + absent not in entries, absent
    assert not any(n.startswith("usr/lib/python3.11/tkinter") for n in entries)
    cfg = (out / "mwcomms-ins.cfg").read_text()
    assert 'kernel = "/var/lib/mwcomms/ins/vmlinux.gz"' in cfg
    assert 'ramdisk = "/var/lib/mwcomms/ins/ins-initrd.cpio"' in cfg


def test_image_python_runs_the_ins(image, tmp_path):
    """The image's own interpreter and libraries, chrooted: the INS daemon starts and, with
    no /dev/xen here, fails with the platform's errno (not an ImportError)."""
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    result, _, _ = image
    root = tmp_path / "root"
    root.mkdir()
    chroot = shutil.which("chroot")
    if not shutil.which("cpio") or not chroot:
        pytest.skip("cpio or chroot is not installed")
    with open(result["initrd"], "rb") as src:
        subprocess.run(["cpio", "-idm", "--quiet"], stdin=src, cwd=root, check=True)
    env = {"PATH": "/bin:/usr/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    run = subprocess.run([chroot, str(root), "/usr/bin/python3", "-m", "mwcomms.ins.daemon",
                          "--backend", "xen"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=60)
    assert run.returncode == 1, run.stdout
    assert "platform: [Errno 19]" in run.stdout, run.stdout
    assert "Error" not in run.stdout.replace("[Errno 19]", "").replace("ERROR platform", ""), run.stdout


def test_a_library_missing_from_the_tree_is_missing_not_taken_from_the_host(tmp_path):
    """ld.so falls back to the host's libraries for what the unpacked tree lacks: such a
    library must be reported missing (a SetupError when required), never copied in."""
    host = "/lib/x86_64-linux-gnu"
    if shutil.which("gcc") is None or not os.path.exists(f"{host}/ld-linux-x86-64.so.2"):
        pytest.skip("needs gcc and an x86-64 glibc host")
    root = tmp_path / "root"
    (root / "lib/x86_64-linux-gnu").mkdir(parents=True)
    (root / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    for name in ("ld-linux-x86-64.so.2", "libc.so.6"):
        shutil.copy(f"{host}/{name}", root / "lib/x86_64-linux-gnu" / name)
    src = tmp_path / "m.c"
    src.write_text("#include <math.h>\nint main(int c, char **v) { return (int)cos(c); }\n")
    exe = tmp_path / "m"
    subprocess.run(["gcc", "-o", str(exe), str(src), "-lm"], check=True)
    libs = deb.Libs(str(root))
    found, missing = libs.needed(str(exe))
    assert missing == ["libm.so.6"]
    assert found and all(p.startswith(str(root)) for p in found)
    with pytest.raises(deb.SetupError, match="libm.so.6"):
        libs.add(deb.Cpio(), [str(exe)])
