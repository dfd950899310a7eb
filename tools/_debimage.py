"""Guest images from Debian packages: fetch, unpack, resolve libraries, write newc cpio.

What `make ins-image` (tools/insimage.py) and the real-Xen test harness (tests/realxen) share.
Nothing here is installed on the host: packages are fetched with `apt-get download` into a
cache, unpacked with dpkg-deb, and the images are written straight from that tree.

    root = fetch(cache, ["linux-image-amd64", "busybox-static", ...], log)
    img = Cpio()
    img.file("bin/busybox", os.path.join(root, "bin", "busybox"), 0o755)
    Libs(root).add(img, [elf, ...]); Libs(root).add_loader(img)
    img.write("initrd.cpio.gz", compress=True)

The cache holds debs-<key>/ (the downloads) and root-<key>/ (the unpacked tree, plus derived
files: boot/vmlinux.gz, a precompiled Python stdlib), keyed by the resolved package list, each
finished directory marked `.done` and renamed into place, so runs that share a cache never see
half of one. Failures raise SetupError with the tail of the failing tool's output.
"""
from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from typing import Callable, Iterable

__all__ = ["SetupError", "MULTIARCH", "run", "resolve", "download", "extract", "fetch",
           "kernel_version", "host_python311", "Cpio", "Libs"]

MULTIARCH = "x86_64-linux-gnu"
# What the images take from the kernel package (the whole of it unpacks to ~400 MB).
KERNEL_PARTS = ("./boot/vmlinuz-*", "./lib/modules/*/kernel/drivers/xen/*",
                "./lib/modules/*/kernel/drivers/net/xen-netfront.ko")
# Left out of precompiling and of the images: nothing running in a guest imports them.
STDLIB_UNUSED = ("test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip")


class SetupError(Exception):
    """An image could not be prepared (download, extraction, a missing library)."""


def run(cmd: list[str], **kw) -> str:
    """subprocess.run that raises SetupError with the tail of the output on failure."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.STDOUT)
    proc = subprocess.run(cmd, text=True, **kw)
    if proc.returncode != 0:
        tail = (proc.stdout or "").strip().splitlines()[-15:]
        raise SetupError("%s failed (rc=%d): %s" % (cmd[0], proc.returncode, "\n".join(tail)))
    return proc.stdout


def _need_tools() -> None:
    for tool in ("apt-get", "apt-cache", "dpkg-deb", "strip"):
        if not shutil.which(tool):
            raise SetupError("host tool %s is missing (a Debian or Ubuntu host with binutils "
                             "is needed)" % tool)


def _apt_lists_present() -> bool:
    lists = "/var/lib/apt/lists"
    return os.path.isdir(lists) and any("Packages" in n for n in os.listdir(lists))


def _apt_update(log: Callable[[str], None]) -> None:
    log("apt-get update")
    run(["apt-get", "update", "-qq"])


def resolve(names: Iterable[str], log: Callable[[str], None]) -> list[str]:
    """`names` with the kernel metapackage replaced by the versioned image it depends on."""
    _need_tools()
    if not _apt_lists_present():
        _apt_update(log)
    out = []
    for name in names:
        if name == "linux-image-amd64":
            deps = run(["apt-cache", "depends", name])
            m = re.search(r"Depends: (linux-image-[0-9][^\s]*)", deps)
            if not m:
                raise SetupError("cannot resolve linux-image-amd64: %s" % deps.strip())
            name = m.group(1)
        out.append(name)
    return out


def download(cache: str, packages: list[str], log: Callable[[str], None]) -> tuple[str, str]:
    """apt-get download into cache/debs-<key>; a finished directory is reused as it is.
    @return (key, directory)"""
    key = hashlib.sha256("\n".join(sorted(packages)).encode()).hexdigest()[:16]
    debs = os.path.join(cache, "debs-" + key)
    if os.path.exists(os.path.join(debs, ".done")):
        return key, debs
    os.makedirs(cache, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="debs-", dir=cache)
    log("downloading %d Debian packages into %s" % (len(packages), debs))
    for attempt in (1, 2):
        proc = subprocess.run(["apt-get", "download", "-q"] + packages, cwd=tmp, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if proc.returncode == 0:
            break
        if attempt == 2:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SetupError("apt-get download failed: %s" % proc.stdout.strip()[-1500:])
        _apt_update(log)   # stale lists: a version that left the mirror
    got = os.listdir(tmp)
    for p in packages:
        if not any(n.startswith(p + "_") and n.endswith(".deb") for n in got):
            shutil.rmtree(tmp, ignore_errors=True)
            raise SetupError("package %s was not downloaded" % p)
    open(os.path.join(tmp, ".done"), "w").close()
    shutil.rmtree(debs, ignore_errors=True)
    os.rename(tmp, debs)
    size = sum(os.path.getsize(os.path.join(debs, n)) for n in got)
    log("downloaded %d packages, %.0f MB" % (len(got), size / 1e6))
    return key, debs


def extract(cache: str, key: str, debs: str, log: Callable[[str], None],
            python: str | None = None) -> str:
    """Unpack every package of `debs` into cache/root-<key> (once) and derive the kernel as a
    gzip'd ELF (boot/vmlinux.gz) and, when a host Python 3.11 is given, the precompiled
    stdlib. @return the root"""
    root = os.path.join(cache, "root-" + key)
    if os.path.exists(os.path.join(root, ".done")):
        return root
    log("extracting into %s" % root)
    tmp = tempfile.mkdtemp(prefix="root-", dir=cache)
    try:
        for deb in sorted(os.listdir(debs)):
            if not deb.endswith(".deb"):
                continue
            path = os.path.join(debs, deb)
            if deb.startswith("linux-image-"):
                tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", path], stdout=subprocess.PIPE)
                run(["tar", "-x", "-C", tmp, "--wildcards"] + list(KERNEL_PARTS), stdin=tar.stdout)
                tar.wait()
            else:
                run(["dpkg-deb", "-x", path, tmp])
        if os.path.isdir(os.path.join(tmp, "boot")) and _vmlinuz(tmp):
            _kernel_elf(tmp)
        stdlib = os.path.join(tmp, "usr", "lib", "python3.11")
        if python and os.path.isdir(stdlib):
            log("precompiling the guests' Python stdlib with %s" % python)
            # unchecked-hash: the .pyc is used without looking at the source's mtime
            run([python, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode",
                 "unchecked-hash", "-x", r"/(%s)/" % "|".join(STDLIB_UNUSED), stdlib])
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    open(os.path.join(tmp, ".done"), "w").close()
    shutil.rmtree(root, ignore_errors=True)
    os.rename(tmp, root)
    return root


def fetch(cache: str, names: Iterable[str], log: Callable[[str], None],
          python: str | None = None) -> str:
    """resolve + download + extract. @return the unpacked tree"""
    packages = resolve(names, log)
    key, debs = download(cache, packages, log)
    return extract(cache, key, debs, log, python)


def _vmlinuz(root: str) -> str | None:
    names = [n for n in os.listdir(os.path.join(root, "boot")) if n.startswith("vmlinuz-")]
    return os.path.join(root, "boot", names[0]) if names else None


def _kernel_elf(root: str) -> None:
    """boot/vmlinux.gz: the kernel as a stripped, gzip'd ELF. libxenguest decompresses the xz
    bzImage slowly under TCG (~7 s); this loads in ~3 s."""
    with open(_vmlinuz(root), "rb") as f:
        image = f.read()
    start = image.find(b"\xfd7zXZ\x00")
    if start < 0:
        raise SetupError("%s holds no xz payload" % _vmlinuz(root))
    elf = os.path.join(root, "boot", "vmlinux")
    with open(elf, "wb") as f:
        f.write(lzma.LZMADecompressor().decompress(image[start:]))
    run(["strip", elf])
    with open(elf, "rb") as src, gzip.open(elf + ".gz", "wb", compresslevel=1) as dst:
        shutil.copyfileobj(src, dst)
    os.unlink(elf)


def kernel_version(root: str) -> str:
    return sorted(os.listdir(os.path.join(root, "lib", "modules")))[0]


def host_python311(*candidates: str | None) -> str | None:
    """A host Python 3.11 (same bytecode as Debian bookworm's) among `candidates` and this
    interpreter, or None."""
    for cand in list(candidates) + [sys.executable, shutil.which("python3.11")]:
        if not cand or not os.path.exists(cand):
            continue
        out = subprocess.run([cand, "-c", "import sys; print(sys.version_info[:2])"],
                             stdout=subprocess.PIPE, text=True).stdout.strip()
        if out == "(3, 11)":
            return cand
    return None


class Cpio:
    """An initramfs image, written directly in the newc cpio format the kernel unpacks.

    Entries are collected first (path -> what), so nothing is staged on disk; parents are
    created implicitly. Owner is always root."""

    def __init__(self):
        self.entries: dict[str, tuple] = {}

    def _put(self, path, entry):
        path = path.strip("/")
        parts = path.split("/")
        for i in range(1, len(parts)):
            self.entries.setdefault("/".join(parts[:i]), ("dir", 0o755, None))
        self.entries[path] = entry

    def dir(self, path, mode=0o755):
        self._put(path, ("dir", mode, None))

    def file(self, path, src, mode=None):
        mode = stat.S_IMODE(os.stat(src).st_mode) if mode is None else mode
        self._put(path, ("file", mode, src))

    def data(self, path, content, mode=0o644):
        self._put(path, ("data", mode, content.encode() if isinstance(content, str) else content))

    def symlink(self, path, target):
        self._put(path, ("symlink", 0o777, target))

    def chardev(self, path, major, minor, mode=0o600):
        self._put(path, ("chardev", mode, (major, minor)))

    def tree(self, path, src, skip=None):
        """Copy the directory src to path, symlinks kept, `skip(relpath)` true = left out."""
        for dirpath, dirnames, filenames in os.walk(src):
            rel = os.path.relpath(dirpath, src)
            if skip:
                dirnames[:] = [d for d in dirnames if not skip(os.path.normpath(os.path.join(rel, d)))]
            for name in dirnames + filenames:
                r = os.path.normpath(os.path.join(rel, name))
                if skip and skip(r):
                    continue
                s = os.path.join(dirpath, name)
                if os.path.islink(s):
                    self.symlink(os.path.join(path, r), os.readlink(s))
                elif os.path.isdir(s):
                    self.dir(os.path.join(path, r))
                else:
                    self.file(os.path.join(path, r), s)

    def write(self, out, compress=False, level=1):
        """Write the archive (gzip'd when `compress`). @return the bytes of file content"""
        opener = (lambda p: gzip.open(p, "wb", compresslevel=level)) if compress else (lambda p: open(p, "wb"))
        size = 0
        with opener(out) as f:
            ino = 1
            for path in sorted(self.entries):
                kind, mode, what = self.entries[path]
                body, rdev, mtime = b"", (0, 0), 0
                if kind == "dir":
                    mode |= stat.S_IFDIR
                elif kind == "symlink":
                    mode |= stat.S_IFLNK
                    body = what.encode()
                elif kind == "chardev":
                    mode |= stat.S_IFCHR
                    rdev = what
                else:
                    mode |= stat.S_IFREG
                    if kind == "file":
                        with open(what, "rb") as src:
                            body = src.read()
                        mtime = int(os.stat(what).st_mtime)   # keeps timestamp .pyc valid
                    else:
                        body = what
                self._entry(f, path, ino, mode, mtime, body, rdev)
                size += len(body)
                ino += 1
            self._entry(f, "TRAILER!!!", 0, 0, 0, b"", (0, 0))
        return size

    @staticmethod
    def _entry(f, name, ino, mode, mtime, body, rdev):
        name_b = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, mtime, len(body), 0, 0, rdev[0], rdev[1], len(name_b), 0)
        head = b"070701" + b"".join(b"%08x" % v for v in fields)
        f.write(head + name_b + b"\0" * (-(len(head) + len(name_b)) % 4))
        f.write(body + b"\0" * (-len(body) % 4))


class Libs:
    """Shared libraries of ELF files, resolved against the unpacked Debian tree, not the host
    (its own ld.so lists them)."""

    def __init__(self, root: str):
        self.root = root
        self.ldso = os.path.join(root, "lib", MULTIARCH, "ld-linux-x86-64.so.2")
        self.path = "%s:%s" % (os.path.join(root, "lib", MULTIARCH), os.path.join(root, "usr", "lib", MULTIARCH))

    def needed(self, elf: str) -> tuple[list[str], list[str]]:
        """@return (resolved paths, names not found in the unpacked tree)

        ld.so falls back to the host's cache and default directories for what --library-path
        lacks: a library resolved outside the tree is missing from the package list, never
        something to copy (it would mix the host's build into the image)."""
        proc = subprocess.run([self.ldso, "--inhibit-cache", "--library-path", self.path,
                               "--list", elf],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        root = os.path.realpath(self.root) + os.sep
        found, missing = [], []
        for line in proc.stdout.splitlines():
            m = re.match(r"\s*(\S+) => (\S+)", line)
            if m and m.group(2) == "not":
                missing.append(m.group(1))
            elif m and m.group(2).startswith("/"):
                if os.path.realpath(m.group(2)).startswith(root):
                    found.append(m.group(2))
                else:
                    missing.append(m.group(1))
        return found, missing

    def add(self, img: Cpio, elfs: Iterable[str], required: bool = True) -> list[str]:
        """Copy what `elfs` need into /usr/lib/<multiarch>; @return the elfs that cannot load
        (with required=True a missing library is a SetupError instead)."""
        broken = []
        for elf in elfs:
            found, missing = self.needed(elf)
            if missing:
                if required:
                    raise SetupError("%s needs libraries not in the package list: %s" % (elf, missing))
                broken.append(elf)
                continue
            for lib in found:
                img.file("usr/lib/%s/%s" % (MULTIARCH, os.path.basename(lib)), os.path.realpath(lib), 0o755)
        return broken

    def add_loader(self, img: Cpio) -> None:
        img.file("lib/%s/ld-linux-x86-64.so.2" % MULTIARCH, os.path.realpath(self.ldso), 0o755)
        img.symlink("lib64/ld-linux-x86-64.so.2", "/lib/%s/ld-linux-x86-64.so.2" % MULTIARCH)
