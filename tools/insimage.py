"""`make ins-image`: the INS as a Xen PV image (a kernel, an initramfs, an xl config file).

    python -m mwcomms.tools.insimage [--out build/ins-image] [--install-dir /var/lib/mwcomms/ins]

The kernel is Debian's (bookworm), as a stripped gzip'd ELF that libxenguest loads quickly.
The initramfs (a plain cpio: see build()) holds only what the INS needs: busybox (the init
script, `ip`, `udhcpc`), the evtchn / gntalloc / gntdev / netfront modules, Debian's Python
3.11 with the part of its stdlib the INS daemon imports (found by importing it, not by a
list), the INS's part of the installed mwcomms package (`mwcomms.ins`, `mwcomms.xen`,
`_native`) with pyxs and _cffi_backend, the libraries all of that links against, and
/etc/hosts, nsswitch.conf.
Packages come from `apt-get download` (tools/_debimage.py); nothing is installed.

In the domain, /init loads the modules, brings up `lo` (and eth0 with DHCP when the domain
has a vif), then runs `python3 -m mwcomms.ins.daemon --backend xen` and restarts it if it
exits; its log goes to the console (`xl console mwcomms-ins`). `xl shutdown` stops the
daemon cleanly (Closing, Closed) before the domain powers off.

Kernel command line knobs (xl `extra`): mwcomms.hostname=NAME (default mwcomms-ins),
mwcomms.net=dhcp|none (default dhcp when there is an eth0), mwcomms.verbose=1 (debug log).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

from mwcomms.tools import _debimage as deb
from mwcomms.tools._debimage import Cpio, Libs, SetupError

__all__ = ["PACKAGES", "build", "main"]

PACKAGES = ("linux-image-amd64", "busybox-static", "libc6", "python3.11-minimal",
            "libpython3.11-minimal", "libpython3.11-stdlib", "libffi8", "zlib1g", "libexpat1",
            "libbz2-1.0", "liblzma5")
KERNEL_MODULES = ("xen/xen-evtchn", "xen/xen-gntalloc", "xen/xen-gntdev", "net/xen-netfront")
NAME = "mwcomms-ins"
# What `python3 -m mwcomms.ins.daemon` imports (runpy for -m; the INS module pulls in the
# rest) and the codecs Python itself may need at start.
PY_ROOTS = ("runpy", "mwcomms.ins.daemon", "encodings.utf_8", "encodings.latin_1", "encodings.ascii",
            "encodings.idna")
# The parts of the installed mwcomms package that stay out: the frontend's and the tools'.
MWCOMMS_SKIP = ("lib", "tools", "engine", "include", "cli.py", "daemon.py", "_engine.py",
                "_native_build.py")
MEMORY_MB = 192    # the INS's RAM: kernel, Python, socket buffers, the mapped area
DEFAULT_CACHE = os.environ.get("MW_REALXEN_CACHE", "/var/tmp/mwcomms-realxen")

INIT = r"""#!/bin/busybox sh
# /init of the mwcomms INS domain (tools/insimage.py): modules, network, then the INS daemon.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin HOME=/ PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /run
exec </dev/console >/dev/console 2>&1
echo 2 > /proc/sys/kernel/printk
arg() { for w in $(cat /proc/cmdline); do case "$w" in "$1"=*) echo "${w#*=}"; return;; esac; done; }
up() { cut -d' ' -f1 /proc/uptime; }
echo "mwcomms-ins: /init at uptime $(up) s, kernel $(uname -r)"

for m in xen-evtchn xen-gntalloc xen-gntdev xen-netfront; do
	insmod /lib/modules/$m.ko || echo "mwcomms-ins: insmod $m failed"
done
name=$(arg mwcomms.hostname); hostname "${name:-mwcomms-ins}"
ip link set lo up
net=$(arg mwcomms.net)
if [ "$net" != none ] && [ -e /sys/class/net/eth0 ]; then
	ip link set eth0 up
	udhcpc -b -q -i eth0 -s /etc/udhcpc.script >/dev/null 2>&1 &
fi
args="--backend xen"
[ "$(arg mwcomms.verbose)" = 1 ] && args="$args -v"
echo "mwcomms-ins: starting the INS daemon at uptime $(up) s"
while [ ! -e /run/stopping ]; do
	python3 -m mwcomms.ins.daemon $args &
	echo $! > /run/ins.pid
	wait $!
	rc=$?
	rm -f /run/ins.pid
	[ -e /run/stopping ] && break
	echo "mwcomms-ins: the INS daemon exited rc=$rc; restarting in 1 s"
	sleep 1
done
sleep 3600   # /sbin/poweroff finishes the job
"""

# Run by the kernel for `xl shutdown` / `xl reboot` (orderly_poweroff): the daemon closes its
# connections (Closing, Closed) first.
POWEROFF = r"""#!/bin/busybox sh
touch /run/stopping
pid=$(cat /run/ins.pid 2>/dev/null)
if [ -n "$pid" ]; then
	kill -TERM "$pid"
	i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
fi
sync
case "$0" in *reboot) exec /bin/busybox reboot -f;; *) exec /bin/busybox poweroff -f;; esac
"""

UDHCPC = r"""#!/bin/busybox sh
# udhcpc's hook: address, default route, resolvers of eth0
case "$1" in
deconfig) ip addr flush dev "$interface"; ip link set "$interface" up;;
bound|renew)
	ip addr flush dev "$interface"
	ip addr add "$ip/${mask:-24}" dev "$interface"
	[ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
	: > /etc/resolv.conf.new
	[ -n "$domain" ] && echo "search $domain" >> /etc/resolv.conf.new
	for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf.new; done
	mv /etc/resolv.conf.new /etc/resolv.conf;;
esac
"""

XL_CFG = """# The mwcomms INS (isolated network stack) as a PV domain: xl create {cfg}
# Built by `make ins-image` (tools/insimage.py); see docs/xen.md.
name = "{name}"
type = "pv"
kernel = "{dir}/vmlinux.gz"
ramdisk = "{dir}/{initrd}"
extra = "console=hvc0 rdinit=/init loglevel=4"
memory = {memory}
vcpus = 1
# The INS's own network: it configures eth0 with DHCP (mwcomms.net=none in extra to skip).
#vif = [ "bridge=xenbr0" ]
on_poweroff = "destroy"
on_reboot = "restart"
on_crash = "destroy"
"""


def _stdlib_files(root: str, site: str) -> list[str]:
    """The stdlib files (relative to its directory) that Debian's Python, run here through
    the unpacked tree's own loader, loads to import PY_ROOTS from `site`. Running the image's
    interpreter also proves that the installed extensions load in it."""
    libs = Libs(root)
    stdlib = os.path.join(root, "usr", "lib", "python3.11")
    probe = (
        "import os, sys\n"
        "sys.path.insert(0, %r)\n"
        "import site\n"
        "for m in %r: __import__(m)\n"
        "import logging, json, argparse\n"
        "logging.basicConfig(stream=sys.stderr, format='%%(asctime)s %%(message)s')\n"
        "json.dumps({'a': [1]}); argparse.ArgumentParser().parse_args([])\n"
        "for m in list(sys.modules.values()):\n"
        "    f = getattr(m, '__file__', None)\n"
        "    if f and os.path.realpath(f).startswith(%r + os.sep):\n"
        "        print(os.path.relpath(os.path.realpath(f), %r))\n" % (site, PY_ROOTS, stdlib, stdlib))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONHOME": os.path.join(root, "usr"),
           "PYTHONDONTWRITEBYTECODE": "1", "LC_ALL": "C.UTF-8"}
    cmd = [libs.ldso, "--library-path", libs.path, os.path.join(root, "usr", "bin", "python3.11"),
           "-S", "-c", probe]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd="/", env=env)
    if proc.returncode != 0:
        raise SetupError("Debian's Python cannot import the INS from %s: %s" % (
            site, proc.stderr.strip()[-600:]))
    return sorted(set(proc.stdout.split()))


def _add_python(img: Cpio, libs: Libs, root: str, site: str, log) -> None:
    py = os.path.join(root, "usr", "bin", "python3.11")
    img.file("usr/bin/python3.11", py, 0o755)
    img.symlink("usr/bin/python3", "python3.11")
    stdlib = os.path.join(root, "usr", "lib", "python3.11")
    img.file("usr/lib/python3.11/os.py", os.path.join(stdlib, "os.py"))   # sys.prefix landmark
    exts = [py]
    missing = []
    for rel in _stdlib_files(root, site):
        src = os.path.join(stdlib, rel)
        if not os.path.exists(src):
            missing.append(rel)
            continue
        img.file("usr/lib/python3.11/" + rel, src)
        if rel.endswith(".so"):
            exts.append(src)
            continue
        head, base = os.path.split(rel)
        pyc = os.path.join(head, "__pycache__", base[:-3] + ".cpython-311.pyc")
        if os.path.exists(os.path.join(stdlib, pyc)):
            img.file("usr/lib/python3.11/" + pyc, os.path.join(stdlib, pyc))
    if missing:
        raise SetupError("not in the unpacked stdlib: %s" % " ".join(missing))
    # The INS's part of the installed package, pyxs, and cffi's runtime.
    dist = "usr/lib/python3/dist-packages"
    img.tree(dist + "/mwcomms", os.path.join(site, "mwcomms"),
             skip=lambda r: r.split("/")[0] in MWCOMMS_SKIP)
    img.tree(dist + "/pyxs", os.path.join(site, "pyxs"))
    for name in sorted(os.listdir(site)):
        if name.startswith("_cffi_backend") and name.endswith(".so"):
            img.file("%s/%s" % (dist, name), os.path.join(site, name))
            exts.append(os.path.join(site, name))
    for dirpath, _, names in os.walk(os.path.join(site, "mwcomms")):
        exts += [os.path.join(dirpath, n) for n in names if n.endswith(".so") and
                 os.path.relpath(dirpath, os.path.join(site, "mwcomms")).split("/")[0] not in MWCOMMS_SKIP]
    libs.add(img, exts)


def build(root: str, site: str, out_dir: str, *, install_dir: str | None = None,
          memory_mb: int = MEMORY_MB, gzip: bool = False, log=print) -> dict:
    """Write vmlinux.gz, ins-initrd.cpio (.gz with gzip=True) and mwcomms-ins.cfg into
    `out_dir`. Uncompressed by default: libxenguest gunzips a gzip'd ramdisk in dom0 before
    the kernel sees it, which costs seconds under emulation and gains nothing at boot.

    @param root         an unpacked Debian tree holding PACKAGES (deb.fetch)
    @param site         the site-packages directory holding the installed mwcomms and pyxs
    @param install_dir  where the files will be in dom0 (the config's paths; default out_dir)
    @return {"kernel": path, "initrd": path, "config": path, "bytes": total size, ...}
    @raise SetupError when something the image needs is not there
    """
    if not os.path.isdir(os.path.join(site, "mwcomms")):
        raise SetupError("mwcomms is not installed in %s: run `make` first" % site)
    if not any(n.startswith("_cffi_backend.cpython-311") for n in os.listdir(site)):
        raise SetupError("%s is not a Python 3.11 installation: the image runs Debian "
                         "bookworm's Python 3.11, whose extensions must be built for it "
                         "(make with PYTHON=python3.11)" % site)
    kver = deb.kernel_version(root)
    os.makedirs(out_dir, exist_ok=True)
    img = Cpio()
    img.data("init", INIT, 0o755)
    for d in ("bin", "sbin", "proc", "sys", "dev", "run", "root", "etc", "usr/bin"):
        img.dir(d)
    img.dir("tmp", 0o1777)
    img.chardev("dev/console", 5, 1)      # the kernel opens it before running /init
    img.file("bin/busybox", os.path.join(root, "bin", "busybox"), 0o755)
    img.data("sbin/poweroff", POWEROFF, 0o755)
    img.symlink("sbin/reboot", "poweroff")
    img.data("etc/udhcpc.script", UDHCPC, 0o755)
    img.data("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
    img.data("etc/group", "root:x:0:\n")
    img.data("etc/nsswitch.conf", "hosts: files dns\nnetworks: files\n")
    img.data("etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\tmwcomms-ins\n"
                          "::1\tlocalhost ip6-localhost ip6-loopback\n")
    img.data("etc/resolv.conf", "")
    mods = os.path.join(root, "lib", "modules", kver, "kernel", "drivers")
    for m in KERNEL_MODULES:
        src = os.path.join(mods, m + ".ko")
        if not os.path.exists(src):
            raise SetupError("kernel module %s.ko not in %s" % (m, mods))
        img.file("lib/modules/%s.ko" % os.path.basename(m), src)
    libs = Libs(root)
    _add_python(img, libs, root, site, log)
    libs.add_loader(img)
    for old in ("ins-initrd.cpio", "ins-initrd.cpio.gz"):
        if os.path.exists(os.path.join(out_dir, old)):
            os.unlink(os.path.join(out_dir, old))
    initrd = os.path.join(out_dir, "ins-initrd.cpio" + (".gz" if gzip else ""))
    raw = img.write(initrd + ".tmp", compress=gzip, level=9)
    os.replace(initrd + ".tmp", initrd)
    kernel = os.path.join(out_dir, "vmlinux.gz")
    shutil.copyfile(os.path.join(root, "boot", "vmlinux.gz"), kernel)
    cfg = os.path.join(out_dir, NAME + ".cfg")
    where = install_dir or os.path.abspath(out_dir)
    with open(cfg, "w") as f:
        f.write(XL_CFG.format(cfg=os.path.join(where, NAME + ".cfg"), name=NAME, dir=where,
                              initrd=os.path.basename(initrd),
                              memory=memory_mb))
    sizes = {"kernel": os.path.getsize(kernel), "initrd": os.path.getsize(initrd)}
    return {"kernel": kernel, "initrd": initrd, "config": cfg, "files": len(img.entries),
            "initrd_unpacked": raw, "bytes": sizes["kernel"] + sizes["initrd"], **{
                k + "_bytes": v for k, v in sizes.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mwcomms.tools.insimage",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="build/ins-image", help="output directory (%(default)s)")
    ap.add_argument("--install-dir", help="where the files will live in dom0, for the xl "
                                          "config's paths (default: the output directory)")
    ap.add_argument("--memory", type=int, default=MEMORY_MB, help="the domain's memory, MB "
                                                                  "(%(default)s)")
    ap.add_argument("--gzip", action="store_true", help="gzip the initramfs (smaller; slower "
                                                        "xl create: libxenguest gunzips it)")
    ap.add_argument("--cache", default=DEFAULT_CACHE, help="download cache (%(default)s)")
    args = ap.parse_args(argv)
    t0 = time.monotonic()

    def log(msg):
        print("[ins-image +%5.1fs] %s" % (time.monotonic() - t0, msg), file=sys.stderr, flush=True)

    import mwcomms
    site = os.path.dirname(os.path.dirname(os.path.abspath(mwcomms.__file__)))
    try:
        root = deb.fetch(args.cache, PACKAGES, log, python=deb.host_python311())
        out = build(root, site, args.out, install_dir=args.install_dir, memory_mb=args.memory,
                    gzip=args.gzip, log=log)
    except SetupError as exc:
        print("ins-image: %s" % exc, file=sys.stderr)
        return 1
    print("INS image in %s: %.1f MB (kernel %.1f MB, initramfs %.1f MB%s, %d entries)\n"
          "  start it in dom0: xl create %s" % (
              args.out, out["bytes"] / 1e6, out["kernel_bytes"] / 1e6, out["initrd_bytes"] / 1e6,
              " gzip'd, %.1f MB unpacked" % (out["initrd_unpacked"] / 1e6) if args.gzip else "",
              out["files"], out["config"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
