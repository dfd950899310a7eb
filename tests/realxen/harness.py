"""Boot real Xen 4.17 with a Debian dom0 and a PV domU under QEMU, run the test payload, report.

Everything comes from Debian bookworm packages (packages.txt) fetched with `apt-get download`
and unpacked with dpkg-deb (mwcomms.tools._debimage); nothing is installed on the host but QEMU
and gcc. Stages:

  1. host tools   qemu-system-x86_64 and gcc (tools/install-deps.sh installs them as root)
  2. download     apt-get download of packages.txt into the cache, keyed by the resolved list
  3. extract      dpkg-deb into the cache (kernel: only the image and the Xen modules), the
                  Python stdlib precompiled once, the domU kernel turned into a gzip'd ELF
  4. build        the C test programs (static), then the initramfs images written directly as
                  newc cpio: the domU (busybox, xenstore client, the programs), the INS image
                  (tools/insimage.py, as `make ins-image`), and dom0 (Xen tools, Python 3.11,
                  the installed mwcomms package from the venv, curl, the INS image, the payload)
  5. boot         QEMU TCG, Xen on com1 = QEMU stdout; one boot at a time (a lock file)
  6. report       the XENT lines of the payload (see steps.py for the protocol)

The serial console is watched as it grows; the run ends when dom0 prints "XENT-BOOT done" and
powers off, or at the first of: a fatal console message, no dom0 userspace within the boot
timeout, the global timeout.

Used by test_realxen.py (run()) and from the command line (run.sh, or `python3 harness.py -h`).
Exit status of the CLI: 0 every step passed or skipped, 1 a step failed or gave no result,
2 setup error, 3 Xen or dom0 did not boot, 4 QEMU cannot run here (the pytest test skips).
"""
import argparse
import contextlib
import fcntl
import glob
import gzip
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field

# Fetching, unpacking and image writing are the package's (shared with `make ins-image`).
from mwcomms.tools import _debimage as deb
from mwcomms.tools import insimage
from mwcomms.tools._debimage import MULTIARCH, Cpio, SetupError

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
GUEST = os.path.join(HERE, "guest")
XENVER = "4.17"

EXIT_OK, EXIT_FAIL, EXIT_SETUP, EXIT_NOBOOT, EXIT_NOQEMU = 0, 1, 2, 3, 4

# Console messages after which the guest will not recover.
FATAL = re.compile(r"Panic on CPU|Dom0 crashed|Kernel panic|KVM internal error")
# QEMU refusing to start for a reason of this machine, not of the images.
QEMU_ENV_ERROR = re.compile(r"(?i)no accelerator found|invalid accelerator|failed to initialize"
                            r"|could not access KVM|Cannot allocate memory")
# A result line; searched, not anchored, in case other console output lands before it.
XENT_LINE = re.compile(r"(?<![A-Za-z-])XENT (PASS|FAIL|SKIP) ([A-Za-z0-9_./+-]+)(?::\s?(.*))?$")


class NoQemu(Exception):
    """QEMU cannot run on this machine: the tests skip, with this reason."""


def _load_steps():
    """The payload module (steps.py): the step names are shared by the guest and the host."""
    spec = importlib.util.spec_from_file_location("realxen_steps", os.path.join(GUEST, "steps.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STEP_NAMES = list(_load_steps().NAMES)


@dataclass
class Config:
    cache: str = os.environ.get("MW_REALXEN_CACHE", "/var/tmp/mwcomms-realxen")
    build: str = os.path.join(TOP, "build", "realxen")   # images and logs of this work tree
    venv: str = os.path.join(TOP, ".venv")
    accel: str = os.environ.get("MW_REALXEN_ACCEL", "tcg")
    # The guest CPU. Not "max": under TCG "max" is an AMD CPU with SVM, and with SVM visible
    # the processes of the PV domU see their memory change under them (random segfaults,
    # ld.so assertions, a byte gone from a string) within ~150 fork+exec; "max,-smap,-svm"
    # and "Haswell-noTSX" ran 300-400 of them clean in each domain. Haswell-noTSX has no SMAP
    # either, which TCG + Xen PV needs (dom0 dies in create_bounce_frame).
    cpu: str = os.environ.get("MW_REALXEN_CPU", "Haswell-noTSX")
    xen_extra: str = os.environ.get("MW_REALXEN_XEN_EXTRA", "")   # more Xen command line
    memory_mb: int = 1024
    smp: int = 2
    boot_timeout: float = 150.0      # QEMU start -> dom0 userspace
    timeout: float = 600.0           # QEMU start -> payload done (~100 s on a quiet machine)
    steps: str = ""                  # comma separated subset of STEP_NAMES ("" = all)
    ring_messages: int = 20000       # ring stress message count (TCG is ~100x slower than host)
    verbose: bool = False            # echo every console line, not only the XENT ones
    echo_logs: bool = True           # echo XENT-LOG lines too (context of the results)
    log: object = None               # callable(str): progress lines (default: stderr)


@dataclass
class Result:
    status: dict = field(default_factory=dict)    # step or sub-step name -> "PASS"/"FAIL"/"SKIP"
    reason: dict = field(default_factory=dict)    # name -> detail text after the colon
    lines: list = field(default_factory=list)     # every XENT line, in console order
    booted: bool = False                          # dom0 userspace was reached
    finished: bool = False                        # the payload printed "XENT-BOOT done"
    exit_code: int = EXIT_SETUP
    summary: str = ""
    context: dict = field(default_factory=dict)   # name -> the XENT-LOG lines just before it
    timings: dict = field(default_factory=dict)   # stage -> seconds
    serial_log: str = ""

    def missing(self, names):
        return [n for n in names if n not in self.status]


class _Clock:
    def __init__(self, log):
        self.t0 = time.monotonic()
        self._log = log

    def since(self, t=None):
        return time.monotonic() - (self.t0 if t is None else t)

    def log(self, msg):
        self._log("[realxen +%5.1fs] %s" % (self.since(), msg))


# ------------------------------------------------------------------ 1. host tools

def ensure_host_tools(clock):
    """QEMU and gcc on the host, installed through tools/install-deps.sh when missing."""
    if not (shutil.which("qemu-system-x86_64") and shutil.which("gcc")):
        clock.log("qemu-system-x86_64 or gcc missing: running tools/install-deps.sh")
        subprocess.run([os.path.join(TOP, "tools", "install-deps.sh")], check=False)
    if not shutil.which("qemu-system-x86_64"):
        raise NoQemu("qemu-system-x86_64 is not installed and could not be installed "
                     "(tools/install-deps.sh needs root and apt-get)")
    for tool in ("gcc", "dpkg-deb", "apt-get", "apt-cache", "strip"):
        if not shutil.which(tool):
            raise SetupError("host tool %s is missing" % tool)


# ------------------------------------------------------------------ 2. download

def read_package_list():
    with open(os.path.join(HERE, "packages.txt")) as f:
        return [w for line in f for w in line.split("#", 1)[0].split()]


def prepare_root(cfg, clock):
    """Download and unpack packages.txt (cached), and Xen as a plain ELF for QEMU's multiboot
    loader. @return the unpacked tree"""
    root = deb.fetch(cfg.cache, read_package_list(), clock.log,
                     python=deb.host_python311(os.path.join(cfg.venv, "bin", "python")))
    xen_elf = os.path.join(root, "boot", "xen.elf")
    if not os.path.exists(xen_elf):
        with gzip.open(os.path.join(root, "boot", "xen-%s-amd64.gz" % XENVER)) as src, \
                open(xen_elf + ".tmp", "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(xen_elf + ".tmp", xen_elf)
    return root


@dataclass
class Program:
    """A static C test program for the guests; built only when its sources exist."""
    name: str
    main: str                      # source with main(), relative to the top of the tree
    extra: tuple = ()              # glob patterns of further sources

    def sources(self):
        out = [os.path.join(TOP, self.main)]
        for pat in self.extra:
            out += sorted(p for p in glob.glob(os.path.join(TOP, pat)) if p not in out)
        return out


PROGRAMS = [
    # the platform layer's xen backend, self-test and cross-domain offer/map
    Program("plat_xentest", "tests/c/plat_xentest.c", ("xen/*.c",)),
    # the ring library across two domains, front and back over the platform API
    Program("ring_xen", "tests/c/ring_xen.c", ("xen/*.c",)),
]


def build_programs(cfg, clock, root):
    """gcc -static each program whose main source exists; returns the manifest for the guests:
    name -> "built" | "missing: why" | "failed: why"."""
    bindir = os.path.join(cfg.build, "bin")
    os.makedirs(bindir, exist_ok=True)
    manifest = {}
    for prog in PROGRAMS:
        out = os.path.join(bindir, prog.name)
        if os.path.exists(out):
            os.unlink(out)
        if not os.path.exists(os.path.join(TOP, prog.main)):
            manifest[prog.name] = "missing: %s not yet built" % prog.main
            continue
        cmd = ["gcc", "-static", "-O2", "-g0", "-std=gnu11", "-Wall",
               "-I", os.path.join(TOP, "xen", "include"),
               "-idirafter", os.path.join(root, "usr", "include"),   # Debian's xen/sys/*.h
               "-o", out] + prog.sources() + ["-lpthread"]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            err = " | ".join(l for l in proc.stdout.splitlines() if "error" in l)[:600]
            manifest[prog.name] = "failed: gcc: %s" % (err or proc.stdout.strip()[-600:])
            clock.log("build of %s failed:\n%s" % (prog.name, proc.stdout.strip()[-2000:]))
        else:
            manifest[prog.name] = "built"
    clock.log("programs: %s" % ", ".join("%s=%s" % (k, v.split(":")[0]) for k, v in manifest.items()))
    return manifest


def _add_sums(img, prefixes):
    """/xent/sha256sums: the digests of the image's files under `prefixes`, for the integrity
    step (busybox sha256sum -c): a page of the guest's page cache that a bad grant unmap or
    a stray write changed shows up there."""
    lines = []
    for path, (kind, _, what) in sorted(img.entries.items()):
        if kind == "file" and path.startswith(prefixes):
            with open(what, "rb") as f:
                lines.append("%s  /%s\n" % (hashlib.sha256(f.read()).hexdigest(), path))
    img.data("xent/sha256sums", "".join(lines))


def _base(img, init_src):
    img.file("init", init_src, 0o755)
    for d in ("bin", "sbin", "proc", "sys", "dev", "run", "tmp", "root", "usr/bin", "usr/sbin"):
        img.dir(d)
    img.dir("tmp", 0o1777)
    img.chardev("dev/console", 5, 1)      # the kernel opens it before running /init


def build_domu_image(cfg, root, kver, manifest):
    img = Cpio()
    _base(img, os.path.join(GUEST, "domu-init.sh"))
    img.file("bin/busybox", os.path.join(root, "bin", "busybox"), 0o755)
    mods = os.path.join(root, "lib", "modules", kver, "kernel", "drivers", "xen")
    for m in ("xen-evtchn", "xen-gntalloc", "xen-gntdev"):
        img.file("lib/modules/%s.ko" % m, os.path.join(mods, m + ".ko"))
    libs = deb.Libs(root)
    xs = os.path.join(root, "usr", "bin", "xenstore")
    img.file("usr/bin/xenstore", xs, 0o755)
    for op in ("read", "write", "ls", "rm", "exists", "watch"):
        img.symlink("usr/bin/xenstore-" + op, "xenstore")
    libs.add(img, [xs])
    libs.add_loader(img)
    for name, state in manifest.items():
        if state == "built":
            img.file("xent/bin/" + name, os.path.join(cfg.build, "bin", name), 0o755)
    _add_sums(img, ("usr/", "lib/", "bin/", "xent/bin/"))
    out = os.path.join(cfg.build, "domu-initrd.cpio.gz")
    img.write(out, compress=True)
    return out


VENV_PACKAGES = ("mwcomms", "pyxs", "cffi", "pycparser")
INS_DIR = "var/lib/mwcomms/ins"      # where dom0 keeps the INS image (its xl config says so)


def _netcases():
    spec = importlib.util.spec_from_file_location("realxen_netcases", os.path.join(GUEST, "netcases.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _site(cfg):
    site = os.path.join(cfg.venv, "lib", "python3.11", "site-packages")
    if not os.path.isdir(site):
        other = glob.glob(os.path.join(cfg.venv, "lib", "python3.*", "site-packages"))
        if other:
            raise SetupError("%s is a %s venv, the guests run Debian bookworm's Python 3.11: its "
                             "extensions (cffi, mwcomms._native) would not load there"
                             % (cfg.venv, other[0].split(os.sep)[-2]))
        raise SetupError("%s missing: run `make` first" % site)
    return site


def build_ins_image(cfg, clock, root):
    """The INS image exactly as `make ins-image` builds it (tools/insimage.py), its config's
    paths pointing at INS_DIR in dom0. @return insimage.build's answer"""
    out = insimage.build(root, _site(cfg), os.path.join(cfg.build, "ins-image"),
                         install_dir="/" + INS_DIR, log=clock.log)
    clock.log("INS image %.1f MB (kernel %.1f MB + initramfs %.1f MB)" % (
        out["bytes"] / 1e6, out["kernel_bytes"] / 1e6, out["initrd_bytes"] / 1e6))
    return out


def build_dom0_image(cfg, clock, root, kver, manifest, domu_initrd, ins):
    img = Cpio()
    _base(img, os.path.join(GUEST, "dom0-init.sh"))
    for d in ("etc/xen", "boot", "var/lib/xen", "var/log/xen/console", "usr/lib/xen-%s/bin" % XENVER):
        img.dir(d)
    img.symlink("var/run", "../run")       # the Xen tools use /var/run/xen*
    img.symlink("var/lock", "../run/lock")
    img.data("etc/xen/xl.conf", "")
    img.data("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
    img.data("etc/group", "root:x:0:\n")
    img.file("bin/busybox", os.path.join(root, "bin", "busybox"), 0o755)
    mods = os.path.join(root, "lib", "modules", kver, "kernel", "drivers", "xen")
    for m in ("xen-evtchn", "xen-gntdev", "xen-gntalloc", "xen-privcmd", "xenfs/xenfs"):
        img.file("lib/modules/%s.ko" % os.path.basename(m), os.path.join(mods, m + ".ko"))

    libs = deb.Libs(root)
    elfs = []
    xenbin = os.path.join(root, "usr", "lib", "xen-" + XENVER, "bin")
    for b in ("xenstored", "xenconsoled", "xenconsole", "xl", "xen-init-dom0", "libxl-save-helper",
              "xenstore-control"):
        img.file("usr/lib/xen-%s/bin/%s" % (XENVER, b), os.path.join(xenbin, b), 0o755)
        elfs.append(os.path.join(xenbin, b))
    xs = os.path.join(root, "usr", "bin", "xenstore")
    img.file("usr/bin/xenstore", xs, 0o755)
    for op in ("read", "write", "ls", "list", "rm", "exists", "chmod", "watch"):
        img.symlink("usr/bin/xenstore-" + op, "xenstore")
    elfs.append(xs)

    # Python 3.11: the interpreter, the stdlib less what no test imports, its C modules that
    # can load with the packages we have
    py = os.path.join(root, "usr", "bin", "python3.11")
    img.file("usr/bin/python3.11", py, 0o755)
    img.symlink("usr/bin/python3", "python3.11")
    elfs.append(py)
    stdlib = os.path.join(root, "usr", "lib", "python3.11")
    unused = {"test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "pydoc_data",
              "config-3.11-%s" % MULTIARCH}
    img.tree("usr/lib/python3.11", stdlib, skip=lambda r: r.split("/")[0] in unused)
    dynload = os.path.join(stdlib, "lib-dynload")
    broken = libs.add(img, [os.path.join(dynload, n) for n in sorted(os.listdir(dynload))], required=False)
    for b in broken:   # e.g. _sqlite3, readline, _curses: their libraries are not in the list
        del img.entries["usr/lib/python3.11/lib-dynload/" + os.path.basename(b)]

    # curl (and its libraries) for the end-to-end cases, run under the shim
    curl = os.path.join(root, "usr", "bin", "curl")
    img.file("usr/bin/curl", curl, 0o755)
    elfs.append(curl)

    # the project's installed package and its runtime dependencies, from the venv
    site = _site(cfg)
    dist = "usr/lib/python3/dist-packages"
    for pkg in VENV_PACKAGES:
        src = os.path.join(site, pkg)
        if not os.path.isdir(src):
            raise SetupError("%s is not installed in %s" % (pkg, site))
        img.tree("%s/%s" % (dist, pkg), src)
    for name in sorted(os.listdir(site)):
        if name.startswith("_cffi_backend") and name.endswith(".so"):
            img.file("%s/%s" % (dist, name), os.path.join(site, name))
    host_exts = [os.path.join(d, n) for d, _, ns in os.walk(site) for n in ns
                 if n.endswith(".so") and (n.startswith("_cffi_backend") or
                                           os.path.relpath(d, site).split("/")[0] == "mwcomms")]
    libs.add(img, elfs + host_exts)
    img.file("usr/lib/%s/libgcc_s.so.1" % MULTIARCH,
             os.path.realpath(os.path.join(root, "lib", MULTIARCH, "libgcc_s.so.1")))  # dlopen()ed by xl
    libs.add_loader(img)

    # the payload and the domU
    img.file("xent/steps.py", os.path.join(GUEST, "steps.py"))
    img.data("xent/manifest", "".join("%s=%s\n" % kv for kv in sorted(manifest.items())))
    # the expected digest of the 100 MB case, computed here (seconds under TCG)
    img.data("xent/config", "ring_messages=%d\nins_image_bytes=%d\nins_kernel_bytes=%d\n"
                            "ins_initrd_bytes=%d\nins_initrd_unpacked=%d\ndigest_100mb=%s\n" % (
                                cfg.ring_messages, ins["bytes"], ins["kernel_bytes"],
                                ins["initrd_bytes"], ins["initrd_unpacked"],
                                _netcases().digest(100 << 20)))
    img.file("xent/netcases.py", os.path.join(GUEST, "netcases.py"))
    img.data("usr/bin/mwctl", '#!/bin/sh\nexec python3 -m mwcomms.tools.mwctl "$@"\n', 0o755)
    img.file(INS_DIR + "/" + os.path.basename(ins["initrd"]), ins["initrd"])
    img.file(INS_DIR + "/mwcomms-ins.cfg", ins["config"])
    img.symlink(INS_DIR + "/vmlinux.gz", "/boot/vmlinux.gz")   # the same kernel as the domU's
    for name, state in manifest.items():
        if state == "built":
            img.file("xent/bin/" + name, os.path.join(cfg.build, "bin", name), 0o755)
    img.file("boot/vmlinux.gz", os.path.join(root, "boot", "vmlinux.gz"))
    img.file("boot/domu-initrd.cpio.gz", domu_initrd)
    img.file("etc/xen/xent-domu.cfg", os.path.join(GUEST, "domu.cfg"))
    _add_sums(img, ("usr/bin/", "usr/lib/%s/" % MULTIARCH, "usr/lib/xen-", "lib/", "bin/", "xent/bin/",
                    "usr/lib/python3/dist-packages/mwcomms/"))
    out = os.path.join(cfg.build, "dom0-initrd.cpio")
    size = img.write(out)   # uncompressed: QEMU loads it fast, dom0 skips a slow gunzip
    clock.log("dom0 initramfs %.0f MB in %d entries" % (size / 1e6, len(img.entries)))
    return out


# ------------------------------------------------------------------ 5. boot

def _qemu_cmd(cfg, xen, vmlinuz, initrd, steps):
    xen_cmdline = ("console=com1 com1=115200,8n1 dom0_mem=512M,max:512M dom0_max_vcpus=2 "
                   "loglvl=all guest_loglvl=all noreboot " + cfg.xen_extra).strip()
    dom0_cmdline = "console=hvc0 earlyprintk=xen rdinit=/init loglevel=5"
    if steps:
        dom0_cmdline += " xent.steps=" + steps
    # multiboot -initrd: modules separated by ",", a literal comma written ",,"
    modules = "%s %s,%s" % (vmlinuz, dom0_cmdline.replace(",", ",,"), initrd)
    return ["qemu-system-x86_64", "-accel", cfg.accel, "-cpu", cfg.cpu, "-m", str(cfg.memory_mb),
            "-smp", str(cfg.smp), "-machine", "pc", "-nographic", "-monitor", "none",
            "-serial", "stdio", "-no-reboot", "-kernel", xen, "-append", xen_cmdline,
            "-initrd", modules]


@contextlib.contextmanager
def _one_at_a_time(cfg, clock):
    """One run per machine from download to power-off: TCG wants both cores, and runs of the
    same work tree share build/realxen."""
    os.makedirs(cfg.cache, exist_ok=True)
    with open(os.path.join(cfg.cache, "run.lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            clock.log("another real-Xen run is going on here: waiting for it to end")
            t0 = time.monotonic()
            fcntl.flock(lock, fcntl.LOCK_EX)
            clock.log("waited %.0f s for the other run" % (time.monotonic() - t0))
        yield


def boot(cfg, clock, result, cmd):
    """Run QEMU, follow the console, fill `result`; @return the exit code of the run."""
    serial = result.serial_log = os.path.join(cfg.build, "serial.log")
    clock.log("boot: %s" % " ".join(cmd))
    with open(serial, "wb") as out:
        qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    marks = {}
    try:
        why_stop = _watch(cfg, clock, result, qemu, serial, t0, marks)
    finally:
        if qemu.poll() is None:   # interrupted (^C, an exception): no QEMU left behind
            qemu.kill()
    qemu.wait()
    result.timings["qemu"] = time.monotonic() - t0
    for k, v in marks.items():
        if not k.startswith("_"):
            result.timings[k] = v
    result.booted = "dom0-userspace" in marks
    result.finished = "done" in marks
    clock.log("QEMU exited (rc=%s) after %.1f s; serial log %s" % (qemu.returncode, result.timings["qemu"], serial))
    if not result.booted:
        with open(serial, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        tail = "\n".join(text.strip().splitlines()[-25:])
        if "xen" not in marks and QEMU_ENV_ERROR.search(text):
            raise NoQemu("QEMU cannot run Xen here: %s" % tail[-600:])
        result.summary = "Xen/dom0 did not boot (%s); last console lines:\n%s" % (why_stop or "QEMU exited", tail)
        return EXIT_NOBOOT
    if why_stop and not result.finished:
        result.summary = "payload did not finish: %s" % why_stop
        return EXIT_FAIL
    return EXIT_OK


def _watch(cfg, clock, result, qemu, serial, t0, marks):
    """Follow the console until QEMU exits; stop it on a fatal message or a timeout.
    @return why it was stopped, or None"""
    pending, why_stop, stopped, t_done = b"", None, False, None
    with open(serial, "rb") as f:
        while True:
            exited = qemu.poll() is not None
            pending += f.read()
            *lines, pending = pending.split(b"\n")
            if exited and pending:
                lines.append(pending)
                pending = b""
            for raw in lines:
                line = raw.decode("utf-8", "replace").rstrip("\r")
                why_stop = why_stop or _follow(cfg, clock, result, marks, line, time.monotonic() - t0)
            if exited:
                break
            now = time.monotonic() - t0
            if "done" in marks and t_done is None:
                t_done = now
            if why_stop is None:
                if t_done is not None and now > t_done + 60:
                    why_stop = "dom0 did not power off 60 s after the payload finished"
                elif "dom0-userspace" not in marks and now > cfg.boot_timeout:
                    why_stop = "no dom0 userspace within %.0f s" % cfg.boot_timeout
                elif now > cfg.timeout:
                    why_stop = "global timeout of %.0f s" % cfg.timeout
            if why_stop and not stopped:
                # the console goes on being read until QEMU is gone: the last lines explain
                clock.log("stopping QEMU: %s" % why_stop)
                qemu.terminate()
                stopped = True
                try:
                    qemu.wait(10)
                except subprocess.TimeoutExpired:
                    qemu.kill()
            time.sleep(0.2)
    return why_stop


def _follow(cfg, clock, result, marks, line, now):
    """One console line: timing marks, XENT results, fatal errors. @return a reason to stop."""
    if cfg.verbose:
        clock.log("| " + line)
    if "xen" not in marks and "Xen version %s" % XENVER in line:
        marks["xen"] = now
        clock.log("boot: Xen %s started at +%.1f s" % (XENVER, now))
    at = line.find("XENT-LOG ")
    if at >= 0:   # context: program output, never parsed as a result or a fatal error
        marks.setdefault("_context", []).append(line[at + len("XENT-LOG "):])
        if cfg.echo_logs and not cfg.verbose:
            clock.log(line)
        return None
    m = re.search(r"XENT-BOOT (\S+)(.*)", line)
    if m:
        marks.setdefault(m.group(1), now)
        clock.log("boot: %s at +%.1f s%s" % (m.group(1), now, m.group(2)))
        return None
    m = XENT_LINE.search(line)
    if m:
        status, name, why = m.group(1), m.group(2), (m.group(3) or "")
        result.status[name] = status
        result.reason[name] = why
        result.lines.append(line)
        result.context[name] = marks.pop("_context", [])[-30:]
        if not cfg.verbose:
            clock.log(line)
        return None
    if "XENT " in line:   # a malformed result line: shown, never counted
        if not cfg.verbose:
            clock.log(line)
        return None
    if FATAL.search(line):
        return "fatal console message: %s" % line.strip()
    return None


# ------------------------------------------------------------------ entry points

def run(cfg=None):
    """Prepare, boot and collect. @return Result; raises NoQemu when QEMU cannot run here."""
    cfg = cfg or Config()
    clock = _Clock(cfg.log or (lambda s: print(s, file=sys.stderr, flush=True)))
    result = Result()
    expected = [s for s in cfg.steps.split(",") if s] or STEP_NAMES
    unknown = [s for s in expected if s not in STEP_NAMES]
    if unknown:
        raise SetupError("unknown steps %s (known: %s)" % (unknown, ", ".join(STEP_NAMES)))
    os.makedirs(cfg.build, exist_ok=True)
    ensure_host_tools(clock)
    with _one_at_a_time(cfg, clock):
        return _run_locked(cfg, clock, result, expected)


def _run_locked(cfg, clock, result, expected):
    result.timings["waited"] = clock.since()   # for another run's lock
    try:
        root = prepare_root(cfg, clock)
        result.timings["extract"] = clock.since()
        kver = deb.kernel_version(root)
        manifest = build_programs(cfg, clock, root)
        domu = build_domu_image(cfg, root, kver, manifest)
        ins = build_ins_image(cfg, clock, root)
        dom0 = build_dom0_image(cfg, clock, root, kver, manifest, domu, ins)
        result.timings["build"] = clock.since()
    except SetupError as e:
        result.exit_code, result.summary = EXIT_SETUP, "setup error: %s" % e
        clock.log(result.summary)
        return result
    vmlinuz = os.path.join(root, "boot", "vmlinuz-" + kver)
    cmd = _qemu_cmd(cfg, os.path.join(root, "boot", "xen.elf"), vmlinuz, dom0, cfg.steps)
    code = boot(cfg, clock, result, cmd)
    result.timings["total"] = clock.since()
    if code == EXIT_OK:
        failed = [n for n, s in result.status.items() if s == "FAIL"]
        missing = result.missing(expected)
        if failed or missing:
            code = EXIT_FAIL
            result.summary = "failed: %s" % ", ".join(failed + ["%s (no result)" % m for m in missing])
        else:
            result.summary = "all steps passed or skipped"
    result.exit_code = code
    counts = {s: sum(1 for v in result.status.values() if v == s) for s in ("PASS", "FAIL", "SKIP")}
    clock.log("%s | %d PASS, %d FAIL, %d SKIP | Xen at +%s s, dom0 userspace at +%s s, payload done at +%s s, "
              "QEMU %.1f s, total %.1f s (%.0f s of it waiting for another run)" % (
                  result.summary.splitlines()[0] if result.summary else "", counts["PASS"], counts["FAIL"],
                  counts["SKIP"], _fmt(result.timings.get("xen")), _fmt(result.timings.get("dom0-userspace")),
                  _fmt(result.timings.get("done")), result.timings.get("qemu", 0), result.timings["total"],
                  result.timings["waited"]))
    return result


def _fmt(v):
    return "?" if v is None else "%.1f" % v


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 epilog="steps: " + ", ".join(STEP_NAMES))
    ap.add_argument("--steps", default="", help="comma separated subset of the steps (default: all)")
    ap.add_argument("--cache", default=Config.cache, help="download/extract cache (default %(default)s)")
    ap.add_argument("--build", default=Config.build, help="images and serial log (default %(default)s)")
    ap.add_argument("--venv", default=Config.venv, help="venv whose site-packages go to dom0")
    ap.add_argument("--timeout", type=float, default=Config.timeout, help="global QEMU limit, s")
    ap.add_argument("--ring-messages", type=int, default=Config.ring_messages)
    ap.add_argument("--clean", action="store_true", help="drop the cache first (a cold run)")
    ap.add_argument("-v", "--verbose", action="store_true", help="echo the whole serial console")
    a = ap.parse_args(argv)
    if a.clean:
        shutil.rmtree(a.cache, ignore_errors=True)
    cfg = Config(cache=a.cache, build=a.build, venv=a.venv, timeout=a.timeout, steps=a.steps,
                 ring_messages=a.ring_messages, verbose=a.verbose)
    try:
        result = run(cfg)
    except NoQemu as e:
        print("realxen: SKIPPED: %s" % e, file=sys.stderr)
        return EXIT_NOQEMU
    if result.exit_code != EXIT_OK:
        print("realxen: %s" % result.summary, file=sys.stderr)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
