"""XenStore conformance suite: one set of cases for the sim xenstored and the real C one.

    python3 -m mwcomms.tools.xsconform --socket /run/xenstored/socket      # real Xen, in dom0
    python3 -m mwcomms.tools.xsconform --sim                               # a private sim daemon
    python3 -m mwcomms.tools.xsconform --socket DIR/socket                 # a running sim daemon

Prints `XSCONF PASS <case>`, `XSCONF FAIL <case>: reason` or `XSCONF SKIP <case>: reason` per
case, then `XSCONF RESULT: N passed, M failed, K skipped`; exits 0 iff nothing failed.

The cases talk to XenStore through pyxs only (its client, its monitor, and for requests pyxs
refuses to build, a packet sent through its router), so the suite means the same on both
daemons. Where the two disagree, the C daemon is the reference.

Cases that act as an unprivileged domain need a second connection that *is* that domain. On
the sim daemon (recognised by the `domain/` directory beside its socket) the suite introduces a
domain and uses its socket. On real Xen, dom0 can speak as a domain N that was created
paused (`xl create -p`, so its kernel never uses its XenStore ring): `--paused-domain N` maps
that ring page and relays a local socket onto it (xen/_xsring.py). Or pass
`--domain-socket PATH --domid N` for any socket that reaches domain N's XenStore connection
(it must hand each new client a clean connection: the suite opens one per case). Without
either, those cases are SKIPped with the reason. Cases that INTRODUCE/RELEASE domains only run where the
suite may invent domains (the sim, or a target with an `introduce` hook).

All cases pass on the sim and on Debian's xenstored 4.17.7 (the binary real Xen runs here),
checked by tests/xen/test_xsconform.py on a fake hypervisor.

Every case works under its own subtree (/xsconform-<run>/<case>, and
/local/domain/<N>/xsconform-<run>/<case> owned by N) and removes it afterwards.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import errno
import os
import posixpath
import queue
import socket
import struct
import sys
import threading
import time
import traceback
from typing import Callable

import pyxs
from pyxs._internal import Op, Packet, next_rq_id

__all__ = ["Target", "Result", "CASES", "run", "run_case", "sim_target", "main"]

CASE_TIMEOUT = 30.0         # seconds before a case is declared hung
EVENT_TIMEOUT = 5.0         # for a reply or an event that must come (only failures wait)
OP_RESET_WATCHES = 21
OP_DIRECTORY_PART = 22
DOMID_SELF = 0x7FF0
NO_SUCH_DOMAIN = 32000      # a domid no test system has


class Skip(Exception):
    """The case cannot run on this target; the message says why."""


class Fail(AssertionError):
    """The daemon's behaviour differs from the reference."""


@dataclasses.dataclass
class Target:
    """Where the suite runs.

    priv:         returns a new connected privileged pyxs.Client
    domain:       returns a new connected pyxs.Client acting as domain `domid`, or None
    domid:        that domain, or None
    no_domain:    why there is no domain connection (reported with the SKIPs)
    socket_path:  the privileged Unix socket, for the cases that speak raw bytes
    introduce:    returns the socket path of a domain just introduced (sim only), or None
    cleanup:      called once after the run
    """
    priv: Callable[[], pyxs.Client]
    domain: Callable[[], pyxs.Client] | None = None
    domid: int | None = None
    no_domain: str = ("no connection as an unprivileged domain (on real Xen: --paused-domain "
                      "N, or --domain-socket PATH --domid N)")
    socket_path: str | None = None
    introduce: Callable[[pyxs.Client, int], str] | None = None
    cleanup: Callable[[], None] | None = None


@dataclasses.dataclass
class Result:
    name: str
    status: str             # PASS, FAIL, SKIP
    reason: str = ""


# ---------------------------------------------------------------------------------------
# Helpers the cases use

def _ename(code) -> str:
    return errno.errorcode.get(code, str(code)) if isinstance(code, int) else str(code)


def expect_error(err: int, fn: Callable, *args) -> None:
    """Call fn(*args); it must fail with XenStore error `err`."""
    try:
        fn(*args)
    except pyxs.PyXSError as exc:
        got = exc.args[0] if exc.args else None
        if got != err:
            raise Fail(f"expected {_ename(err)}, got {_ename(got)}") from None
        return
    raise Fail(f"expected {_ename(err)}, got success")


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Fail(what)


def raw(client: pyxs.Client, op: int, payload: bytes, tx_id: int = 0,
        timeout: float = EVENT_TIMEOUT) -> tuple[int, bytes]:
    """Send one request through pyxs's router without pyxs's argument checks (for requests
    pyxs refuses to build: bad paths, unknown types, DIRECTORY_PART, RESET_WATCHES).
    @return (reply type, reply payload)"""
    packet = tuple.__new__(Packet, (op, next_rq_id(), tx_id, len(payload), payload))
    rvar = client.router.send(packet)
    with rvar.condition:
        if not rvar.condition.wait_for(lambda: rvar.target is not None, timeout):
            raise Fail(f"no reply to type {op} within {timeout}s")
    return rvar.target.op, rvar.target.payload


def raw_error(client: pyxs.Client, op: int, payload: bytes, err: int, tx_id: int = 0) -> None:
    """Send a raw request; it must fail with `err`."""
    rop, rpayload = raw(client, op, payload, tx_id)
    want = _ename(err).encode() + b"\0"
    if rop != Op.ERROR or rpayload != want:
        got = rpayload.rstrip(b"\0").decode(errors="replace") if rop == Op.ERROR else "success"
        raise Fail(f"type {op} {payload[:40]!r}: expected {_ename(err)}, got {got}")


def next_event(monitor: pyxs.Monitor, timeout: float = EVENT_TIMEOUT) -> tuple[bytes, bytes]:
    try:
        ev = monitor.events.get(timeout=timeout)
    except queue.Empty:
        raise Fail(f"no watch event within {timeout}s") from None
    return ev.path, ev.token


class Sentinel:
    """Proves that no event came: watch a sentinel node on the same connection, trigger it
    after the action, and collect what arrived before it (events on one connection keep
    their order on both daemons)."""

    def __init__(self, monitor: pyxs.Monitor, writer: pyxs.Client, path: bytes):
        self.monitor, self.writer, self.path = monitor, writer, path
        writer.write(path, b"init")         # exists: later writes leave its parent alone
        monitor.watch(path, b"sentinel")
        check(next_event(monitor) == (path, b"sentinel"), "sentinel initial event")

    def before(self) -> list[tuple[bytes, bytes]]:
        self.writer.write(self.path, b"ping")
        seen = []
        while True:
            ev = next_event(self.monitor)
            if ev == (self.path, b"sentinel"):
                return seen
            seen.append(ev)


class Ctx:
    """What a case gets: a privileged client, its subtree, and the domain side on demand."""

    def __init__(self, target: Target, run_id: str, name: str):
        self.target, self.run_id, self.name = target, run_id, name
        self.base = f"/xsconform-{run_id}/{name}".encode()
        self.clients: list[pyxs.Client] = []
        self.cleanups: list[Callable[[], None]] = []
        self.p = self.client()
        self.p.mkdir(self.base)
        self._dom: pyxs.Client | None = None
        self.dhome: bytes | None = None

    def path(self, sub: str) -> bytes:
        return self.base + b"/" + sub.encode()

    def client(self) -> pyxs.Client:
        c = self.target.priv()
        self.clients.append(c)
        return c

    @property
    def domid(self) -> int:
        self.dom()
        return self.target.domid

    def dom(self) -> pyxs.Client:
        """A client acting as the unprivileged domain, with a subtree it owns (dhome)."""
        if self.target.domain is None:
            raise Skip(self.target.no_domain)
        if self._dom is None:
            d = self.target.domid
            self.dhome = f"/local/domain/{d}/xsconform-{self.run_id}/{self.name}".encode()
            self.p.mkdir(self.dhome)
            self.p.set_perms(posixpath.dirname(self.dhome), [f"n{d}".encode()])
            self.p.set_perms(self.dhome, [f"n{d}".encode()])
            self._dom = self.target.domain()
            self.clients.append(self._dom)
        return self._dom

    def dpath(self, sub: str) -> bytes:
        self.dom()
        return self.dhome + b"/" + sub.encode()

    def close(self) -> None:
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception:
                pass
        for c in self.clients:
            c.tx_id = 0
            try:
                c.close()
            except Exception:
                pass
        try:
            p = self.target.priv()
        except pyxs.PyXSError:          # the daemon is gone: nothing left to tidy
            return
        try:
            for path in (self.base, self.dhome):
                if path:
                    try:
                        p.delete(path)
                    except pyxs.PyXSError:
                        pass
        finally:
            p.close()


CASES: dict[str, Callable[[Ctx], None]] = {}


def case(name: str):
    def register(fn):
        if name in CASES:
            raise ValueError(f"duplicate case {name}")
        CASES[name] = fn
        return fn
    return register


# ---------------------------------------------------------------------------------------
# Read, write, mkdir, rm, directory

@case("rw-roundtrip")
def _(c: Ctx):
    c.p.write(c.path("a"), b"hello world")
    check(c.p.read(c.path("a")) == b"hello world", "read back differs")


@case("rw-overwrite")
def _(c: Ctx):
    c.p.write(c.path("a"), b"one")
    c.p.write(c.path("a"), b"two")
    check(c.p.read(c.path("a")) == b"two", "second write not visible")


@case("rw-creates-parents")
def _(c: Ctx):
    c.p.write(c.path("x/y/z"), b"leaf")
    check(c.p.read(c.path("x")) == b"" and c.p.read(c.path("x/y")) == b"",
          "created parents are not empty")
    check(c.p.list(c.path("x")) == [b"y"], "parent does not list the new child")


@case("rw-binary-value")
def _(c: Ctx):
    value = b"a\0b\0c" + bytes(range(0x20, 0x80))
    c.p.write(c.path("bin"), value)
    check(c.p.read(c.path("bin")) == value, "value with NULs not returned byte for byte")


@case("rw-empty-value")
def _(c: Ctx):
    c.p.write(c.path("e"), b"x")
    op, payload = raw(c.p, Op.WRITE, c.path("e") + b"\0")
    check(op == Op.WRITE and payload == b"OK\0", f"WRITE with no value: {op} {payload!r}")
    check(c.p.read(c.path("e")) == b"", "value not emptied")


@case("rw-max-value")
def _(c: Ctx):
    path = c.path("big")
    value = b"v" * (4096 - len(path) - 1)
    c.p.write(path, value)
    check(c.p.read(path) == value, "largest value that fits a message not returned")


@case("rw-read-missing-enoent")
def _(c: Ctx):
    expect_error(errno.ENOENT, c.p.read, c.path("nothing"))
    expect_error(errno.ENOENT, c.p.read, c.path("no/such/deep/node"))


@case("rw-relative-dom0")
def _(c: Ctx):
    home = c.p.get_domain_path(0)
    check(home == b"/local/domain/0", f"GET_DOMAIN_PATH 0 = {home!r}")
    created = [p for p in (b"/local", b"/local/domain", b"/local/domain/0") if not c.p.exists(p)]
    rel = f"xsconform-{c.run_id}-rel".encode()
    c.cleanups.append(lambda: c.p.delete(created[0] if created else home + b"/" + rel))
    c.p.write(rel + b"/x", b"relative")
    check(c.p.read(home + b"/" + rel + b"/x") == b"relative", "relative write not under home")
    check(c.p.read(rel + b"/x") == b"relative", "relative read")


@case("mkdir-creates-empty")
def _(c: Ctx):
    c.p.mkdir(c.path("d/e"))
    check(c.p.read(c.path("d/e")) == b"" and c.p.list(c.path("d/e")) == [], "not empty")


@case("mkdir-existing-keeps-value")
def _(c: Ctx):
    c.p.write(c.path("k"), b"keep")
    c.p.write(c.path("k/child"), b"1")
    c.p.mkdir(c.path("k"))
    check(c.p.read(c.path("k")) == b"keep", "MKDIR changed an existing value")
    check(c.p.list(c.path("k")) == [b"child"], "MKDIR changed the children")


@case("rm-subtree")
def _(c: Ctx):
    for sub in ("r/a/b", "r/a/c", "r/d"):
        c.p.write(c.path(sub), b"1")
    c.p.write(c.path("keep"), b"1")
    c.p.delete(c.path("r"))
    check(not c.p.exists(c.path("r")) and not c.p.exists(c.path("r/a/b")), "subtree remains")
    check(c.p.list(c.base) == [b"keep"], "parent still lists the removed node")


@case("rm-missing-ok")
def _(c: Ctx):
    c.p.delete(c.path("never-there"))


@case("rm-missing-parent-enoent")
def _(c: Ctx):
    expect_error(errno.ENOENT, c.p.delete, c.path("no/parent"))


@case("rm-root-einval")
def _(c: Ctx):
    expect_error(errno.EINVAL, c.p.delete, b"/")
    check(c.p.exists(c.base), "the store lost nodes")


@case("dir-list")
def _(c: Ctx):
    c.p.write(c.path("d/x"), b"1")
    c.p.write(c.path("d/y/deep"), b"1")
    c.p.mkdir(c.path("d/z"))
    check(sorted(c.p.list(c.path("d"))) == [b"x", b"y", b"z"], "children")
    check(c.p.list(c.path("d/x")) == [], "a leaf has children")


@case("dir-missing-enoent")
def _(c: Ctx):
    expect_error(errno.ENOENT, c.p.list, c.path("none"))


@case("dir-e2big-and-part")
def _(c: Ctx):
    parent = c.path("many")
    names = [(f"{i:03d}-" + "n" * 96).encode() for i in range(45)]    # 45 * 101 > 4096
    rvars = [c.p.router.send(Packet(Op.MKDIR, parent + b"/" + n + b"\0", next_rq_id()))
             for n in names]
    for rv in rvars:
        check(rv.get().op == Op.MKDIR, "MKDIR failed")
    expect_error(errno.E2BIG, c.p.list, parent)
    s = _sock(c)            # pyxs cannot receive DIRECTORY_PART replies (type 22)
    got, offset, gens = [], 0, set()
    for req in range(10):
        payload = parent + b"\0" + str(offset).encode() + b"\0"
        s.sendall(struct.pack("=IIII", OP_DIRECTORY_PART, req, 0, len(payload)) + payload)
        op, _, _, payload = _recv_msg(s)
        check(op == OP_DIRECTORY_PART, f"DIRECTORY_PART failed: {payload!r}")
        gen, _, rest = payload.partition(b"\0")
        gens.add(gen)
        done = rest.endswith(b"\0\0") or rest == b"\0"
        chunk = rest[:-1] if done else rest
        got += [n for n in chunk.split(b"\0") if n]
        offset += len(chunk)
        if done:
            break
    check(len(gens) == 1, f"generation changed between pages: {gens}")
    check(sorted(got) == sorted(names), f"pages give {len(got)} names, want {len(names)}")


@case("path-invalid-einval")
def _(c: Ctx):
    for bad in (c.base + b"//x", c.base + b"/", c.base + b"/sp ace", c.base + b"/t\x7e",
                b"", b"@notapath"):
        raw_error(c.p, Op.READ, bad + b"\0", errno.EINVAL)
        raw_error(c.p, Op.WRITE, bad + b"\0v", errno.EINVAL)


@case("path-too-long-einval")
def _(c: Ctx):
    long = c.base + b"/" + b"l" * 2100
    raw_error(c.p, Op.WRITE, long + b"\0v", errno.EINVAL)
    ok = c.base + b"/" + b"l" * (2048 - len(c.base) - 1)
    c.p.write(ok, b"fits")


@case("payload-malformed-einval")
def _(c: Ctx):
    # Not sent: a READ (DIRECTORY, GET_PERMS, MKDIR, RM) whose payload is not exactly one
    # string. The C daemon 4.17 answers those with a stale errno, and when errno happens to be
    # 0 (right after a WATCH) it sends no reply and aborts on an assertion: the suite must not
    # kill the xenstored of the machine it checks.
    raw_error(c.p, Op.WRITE, c.base, errno.EINVAL)                      # no NUL at all
    raw_error(c.p, Op.WATCH, c.base + b"\0", errno.EINVAL)              # no token
    raw_error(c.p, Op.SET_PERMS, c.base + b"\0", errno.EINVAL)          # no permission
    raw_error(c.p, Op.TRANSACTION_END, b"X\0", errno.EINVAL, tx_id=0)


@case("op-unknown-enosys")
def _(c: Ctx):
    for op in (20, 99, Op.WATCH_EVENT, Op.ERROR):
        raw_error(c.p, op, b"x\0", errno.ENOSYS)


@case("domain-path-and-introduced")
def _(c: Ctx):
    check(c.p.get_domain_path(7) == b"/local/domain/7", "GET_DOMAIN_PATH 7")
    check(c.p.is_domain_introduced(0), "domain 0 not introduced")
    check(c.p.is_domain_introduced(DOMID_SELF), "DOMID_SELF not introduced")
    check(not c.p.is_domain_introduced(NO_SUCH_DOMAIN), "a domain that does not exist is")


# ---------------------------------------------------------------------------------------
# Permissions

@case("perms-new-node-inherits")
def _(c: Ctx):
    c.p.mkdir(c.path("p"))
    c.p.set_perms(c.path("p"), [b"r0", f"b{NO_SUCH_DOMAIN + 1}".encode()])
    c.p.write(c.path("p/q/r"), b"1")
    want = [b"r0", f"b{NO_SUCH_DOMAIN + 1}".encode()]
    check(c.p.get_perms(c.path("p/q")) == want, f"{c.p.get_perms(c.path('p/q'))} != {want}")
    check(c.p.get_perms(c.path("p/q/r")) == want, "leaf does not inherit")


@case("perms-roundtrip")
def _(c: Ctx):
    c.p.mkdir(c.path("p"))
    perms = [b"n0", b"r1", b"w2", b"b3"]
    c.p.set_perms(c.path("p"), perms)
    check(c.p.get_perms(c.path("p")) == perms, f"got {c.p.get_perms(c.path('p'))}")


@case("perms-owner-unknown-enoent")
def _(c: Ctx):
    c.p.mkdir(c.path("p"))
    expect_error(errno.ENOENT, c.p.set_perms, c.path("p"), [f"n{NO_SUCH_DOMAIN}".encode()])
    check(c.p.get_perms(c.path("p")) == [b"n0"], "permissions changed")


@case("perms-invalid-einval")
def _(c: Ctx):
    c.p.mkdir(c.path("p"))
    for bad in (b"x0", b"r", b"rabc", b"r1z"):
        raw_error(c.p, Op.SET_PERMS, c.path("p") + b"\0" + bad + b"\0", errno.EINVAL)
    expect_error(errno.ENOENT, c.p.set_perms, c.path("missing"), [b"n0"])


@case("perms-special-paths")
def _(c: Ctx):
    # Not sent: SET_PERMS on an unknown "@" path, refused by the C daemon with a stale errno
    # (no reply and an abort when errno is 0, as above).
    expect_error(errno.EINVAL, c.p.get_perms, b"@releaseDomain")
    expect_error(errno.EINVAL, c.p.read, b"@introduceDomain")


# The domain side. In the C daemon's words: owners and dom0 get everything; otherwise the
# first entry naming the domain decides, else the owner entry's letter.

@case("dom-read-denied-eacces")
def _(c: Ctx):
    d = c.dom()
    c.p.write(c.path("secret"), b"s")
    expect_error(errno.EACCES, d.read, c.path("secret"))
    expect_error(errno.EACCES, d.write, c.path("secret"), b"x")
    expect_error(errno.EACCES, d.get_perms, c.path("secret"))
    expect_error(errno.EACCES, d.list, c.path("secret"))


@case("dom-read-only-entry")
def _(c: Ctx):
    d = c.dom()
    c.p.write(c.path("ro"), b"r")
    c.p.set_perms(c.path("ro"), [b"n0", f"r{c.domid}".encode()])
    check(d.read(c.path("ro")) == b"r", "r entry does not allow reading")
    expect_error(errno.EACCES, d.write, c.path("ro"), b"x")
    expect_error(errno.EACCES, d.mkdir, c.path("ro"))


@case("dom-write-only-entry")
def _(c: Ctx):
    d = c.dom()
    c.p.write(c.path("wo"), b"w")
    c.p.set_perms(c.path("wo"), [b"n0", f"w{c.domid}".encode()])
    d.write(c.path("wo"), b"by-domain")
    expect_error(errno.EACCES, d.read, c.path("wo"))
    check(c.p.read(c.path("wo")) == b"by-domain", "write not applied")


@case("dom-owner-letter-is-default")
def _(c: Ctx):
    d = c.dom()
    c.p.write(c.path("pub"), b"p")
    c.p.set_perms(c.path("pub"), [b"r0"])
    check(d.read(c.path("pub")) == b"p", "owner entry's r does not apply to others")
    expect_error(errno.EACCES, d.write, c.path("pub"), b"x")
    c.p.set_perms(c.path("pub"), [b"r0", f"n{c.domid}".encode()])
    expect_error(errno.EACCES, d.read, c.path("pub"))


@case("dom-owner-full-access")
def _(c: Ctx):
    d = c.dom()
    mine = c.dpath("mine")
    c.p.write(mine, b"m")
    c.p.set_perms(mine, [f"n{c.domid}".encode()])
    check(d.read(mine) == b"m", "owner cannot read")
    d.write(mine, b"m2")
    d.set_perms(mine, [f"n{c.domid}".encode(), b"r0"])
    check(c.p.get_perms(mine) == [f"n{c.domid}".encode(), b"r0"], "owner's SET_PERMS lost")
    d.delete(mine)
    check(not c.p.exists(mine), "owner cannot remove")


@case("dom-enoent-vs-eacces")
def _(c: Ctx):
    d = c.dom()
    c.p.mkdir(c.path("open"))
    c.p.set_perms(c.path("open"), [b"n0", f"r{c.domid}".encode()])
    expect_error(errno.ENOENT, d.read, c.path("open/missing"))
    expect_error(errno.ENOENT, d.read, c.path("open/missing/deeper"))
    c.p.mkdir(c.path("closed"))
    expect_error(errno.EACCES, d.read, c.path("closed/missing"))
    expect_error(errno.EACCES, d.write, c.path("open/new"), b"x")    # r, not w


@case("dom-creator-owns-new-node")
def _(c: Ctx):
    d = c.dom()
    c.p.mkdir(c.path("shared"))
    c.p.set_perms(c.path("shared"), [b"n0", f"b{c.domid}".encode()])
    d.write(c.path("shared/made/by/domain"), b"1")
    want = [f"n{c.domid}".encode(), f"b{c.domid}".encode()]
    for sub in ("shared/made", "shared/made/by/domain"):
        check(c.p.get_perms(c.path(sub)) == want, f"{sub}: {c.p.get_perms(c.path(sub))}")
    c.p.write(c.path("shared/by-dom0"), b"1")
    check(c.p.get_perms(c.path("shared/by-dom0"))[0] == b"n0", "dom0's node not owned by 0")


@case("dom-chown-eperm")
def _(c: Ctx):
    d = c.dom()
    mine = c.dpath("mine")
    d.write(mine, b"1")
    expect_error(errno.EPERM, d.set_perms, mine, [b"n0"])


@case("dom-set-perms-non-owner-eacces")
def _(c: Ctx):
    d = c.dom()
    c.p.write(c.path("rw"), b"1")
    c.p.set_perms(c.path("rw"), [b"n0", f"b{c.domid}".encode()])
    expect_error(errno.EACCES, d.set_perms, c.path("rw"), [b"n0", f"b{c.domid}".encode()])


@case("dom-relative-paths")
def _(c: Ctx):
    d = c.dom()
    home = f"/local/domain/{c.domid}".encode()
    check(d.get_domain_path(c.domid) == home, "GET_DOMAIN_PATH")
    rel = c.dhome[len(home) + 1:] + b"/rel"
    d.write(rel, b"r")
    check(c.p.read(c.dhome + b"/rel") == b"r", "relative write of a domain not under its home")
    check(d.read(rel) == b"r", "relative read")


@case("dom-privileged-ops-eacces")
def _(c: Ctx):
    d = c.dom()
    raw_error(d, Op.INTRODUCE, b"1\x00" b"0\x00" b"1\x00", errno.EACCES)
    raw_error(d, Op.RELEASE, f"{c.domid}\0".encode(), errno.EACCES)
    raw_error(d, Op.IS_DOMAIN_INTRODUCED, b"0\0", errno.EACCES)
    raw_error(d, Op.SET_TARGET, f"{c.domid}\0{c.domid}\0".encode(), errno.EACCES)


@case("dom-node-size-enospc")
def _(c: Ctx):
    d = c.dom()
    d.write(c.dpath("small"), b"s" * 1000)
    expect_error(errno.ENOSPC, d.write, c.dpath("large"), b"L" * 2100)
    check(not c.p.exists(c.dpath("large")), "refused node exists")
    c.p.write(c.dpath("by-dom0"), b"L" * 2100)     # no quota for dom0


@case("dom-perms-count-enospc")
def _(c: Ctx):
    d = c.dom()
    mine = c.dpath("mine")
    d.write(mine, b"1")
    me = f"n{c.domid}".encode()
    d.set_perms(mine, [me] + [b"r0"] * 4)
    expect_error(errno.ENOSPC, d.set_perms, mine, [me] + [b"r0"] * 5)


@case("dom-watch-filtered-by-perms")
def _(c: Ctx):
    d = c.dom()
    m = d.monitor()
    m.watch(c.path("hidden"), b"hidden")
    check(next_event(m) == (c.path("hidden"), b"hidden"), "initial event")
    s = Sentinel(m, c.p, c.dpath("sentinel"))
    c.p.write(c.path("hidden"), b"secret")
    seen = s.before()
    check(not seen, f"domain saw events for a node it cannot read: {seen}")
    c.p.set_perms(c.path("hidden"), [b"n0", f"r{c.domid}".encode()])
    check(next_event(m) == (c.path("hidden"), b"hidden"), "no event once readable")


@case("dom-watch-quota-e2big")
def _(c: Ctx):
    d = c.dom()
    m = d.monitor()
    added, err = 0, None
    for i in range(300):
        try:
            m.watch(c.dpath("w"), f"t{i}".encode())
        except pyxs.PyXSError as exc:
            err = exc.args[0]
            break
        added += 1
    m.close()
    check(err == errno.E2BIG, f"after {added} watches: {_ename(err) if err else 'no error'}")
    check(added <= 129, f"{added} watches accepted, the C daemon stops at 129")


@case("dom-transaction-quota-enospc")
def _(c: Ctx):
    d = c.dom()
    ids, err = [], None
    for _ in range(30):
        op, payload = raw(d, Op.TRANSACTION_START, b"\0")
        if op == Op.ERROR:
            err = payload.rstrip(b"\0").decode()
            break
        ids.append(int(payload.rstrip(b"\0")))
    for tx in ids:
        raw(d, Op.TRANSACTION_END, b"F\0", tx_id=tx)
    check(err == "ENOSPC", f"after {len(ids)} transactions: {err or 'no error'}")
    check(len(ids) <= 11, f"{len(ids)} transactions open, the C daemon stops at 11")


@case("dom-node-quota-enospc")
def _(c: Ctx):
    d = c.dom()
    base = c.dpath("q")
    d.mkdir(base)
    # At most 32 children per parent, so that no node record reaches the size quota and the
    # error can only come from the count of nodes the domain owns.
    rvars = [d.router.send(Packet(Op.MKDIR, base + f"/{i // 32}/{i % 32}\0".encode(),
                                  next_rq_id())) for i in range(1100)]
    replies = [rv.get() for rv in rvars]
    made = sum(r.op == Op.MKDIR for r in replies)
    errs = {r.payload for r in replies if r.op == Op.ERROR}
    check(errs == {b"ENOSPC\0"}, f"after {made} nodes: errors {errs or 'none'}")
    expect_error(errno.ENOSPC, d.mkdir, base + b"/fresh")
    d.delete(base + b"/0/0")
    d.mkdir(base + b"/fresh")       # room again once a node is gone


# ---------------------------------------------------------------------------------------
# Watches

@case("watch-initial-event")
def _(c: Ctx):
    m = c.p.monitor()
    m.watch(c.path("nonexistent/yet"), b"tok")
    check(next_event(m) == (c.path("nonexistent/yet"), b"tok"), "first event")


@case("watch-fires-on-write")
def _(c: Ctx):
    m = c.p.monitor()
    m.watch(c.path("w"), b"t")
    next_event(m)
    c.p.write(c.path("w"), b"1")
    check(next_event(m) == (c.path("w"), b"t"), "no event for a write")
    c.p.write(c.path("w"), b"1")
    check(next_event(m) == (c.path("w"), b"t"), "no event for an unchanged rewrite")


@case("watch-subtree")
def _(c: Ctx):
    m = c.p.monitor()
    m.watch(c.path("w"), b"t")
    next_event(m)
    c.p.write(c.path("w/a/b/c"), b"1")
    check(next_event(m) == (c.path("w/a/b/c"), b"t"), "event path is not the written node")


@case("watch-prefix-is-not-parent")
def _(c: Ctx):
    m = c.p.monitor()
    m.watch(c.path("w"), b"t")
    next_event(m)
    s = Sentinel(m, c.p, c.path("s"))
    c.p.write(c.path("wx"), b"1")
    c.p.write(c.path("other/w"), b"1")
    seen = s.before()
    check(not seen, f"events for non-children: {seen}")


@case("watch-rm-fires")
def _(c: Ctx):
    c.p.write(c.path("r/a/b"), b"1")
    m = c.p.monitor()
    m.watch(c.path("r"), b"top")
    m.watch(c.path("r/a/b"), b"leaf")
    got = {next_event(m), next_event(m)}
    c.p.delete(c.path("r"))
    got = {next_event(m), next_event(m)}
    want = {(c.path("r"), b"top"), (c.path("r/a/b"), b"leaf")}
    check(got == want, f"{got} != {want}")


@case("watch-unwatch-stops")
def _(c: Ctx):
    m = c.p.monitor()
    m.watch(c.path("w"), b"t")
    next_event(m)
    s = Sentinel(m, c.p, c.path("s"))
    m.unwatch(c.path("w"), b"t")
    c.p.router.subscribe(b"t", m)       # keep routing the token, to see a stray event
    c.p.write(c.path("w"), b"1")
    seen = s.before()
    check(not seen, f"events after UNWATCH: {seen}")


@case("watch-duplicate-eexist")
def _(c: Ctx):
    m = c.p.monitor()
    m.watch(c.path("w"), b"t")
    expect_error(errno.EEXIST, m.watch, c.path("w"), b"t")
    m.watch(c.path("w"), b"t2")     # same path, other token: fine


@case("watch-unwatch-unknown-enoent")
def _(c: Ctx):
    m = c.p.monitor()
    expect_error(errno.ENOENT, m.unwatch, c.path("never"), b"t")


@case("watch-relative-path")
def _(c: Ctx):
    home = c.p.get_domain_path(0)
    created = [p for p in (b"/local", b"/local/domain", b"/local/domain/0") if not c.p.exists(p)]
    rel = f"xsconform-{c.run_id}-relw".encode()
    c.cleanups.append(lambda: c.p.delete(created[0] if created else home + b"/" + rel))
    m = c.p.monitor()
    m.watch(rel, b"r")
    check(next_event(m) == (rel, b"r"), "initial event path not relative")
    c.p.write(home + b"/" + rel + b"/x", b"1")
    check(next_event(m) == (rel + b"/x", b"r"), "event path not relative")


@case("watch-set-perms-fires")
def _(c: Ctx):
    c.p.write(c.path("p"), b"1")
    m = c.p.monitor()
    m.watch(c.path("p"), b"t")
    next_event(m)
    c.p.set_perms(c.path("p"), [b"r0"])
    check(next_event(m) == (c.path("p"), b"t"), "no event for SET_PERMS")


@case("watch-quiet-no-change")
def _(c: Ctx):
    c.p.write(c.path("k"), b"1")
    m = c.p.monitor()
    m.watch(c.path("k"), b"t")
    next_event(m)
    s = Sentinel(m, c.p, c.path("s"))
    c.p.mkdir(c.path("k"))              # exists already
    c.p.delete(c.path("k/missing"))     # nothing to remove
    c.p.read(c.path("k"))
    seen = s.before()
    check(not seen, f"events without a change: {seen}")


@case("watch-special-initial")
def _(c: Ctx):
    m = c.p.monitor()
    m.watch(b"@introduceDomain", b"i")
    m.watch(b"@releaseDomain", b"r")
    got = {next_event(m), next_event(m)}
    check(got == {(b"@introduceDomain", b"i"), (b"@releaseDomain", b"r")}, str(got))


@case("watch-introduce-release")
def _(c: Ctx):
    if c.target.introduce is None:
        raise Skip("the suite cannot introduce domains on this target (real Xen)")
    m = c.p.monitor()
    m.watch(b"@introduceDomain", b"i")
    m.watch(b"@releaseDomain", b"r")
    next_event(m), next_event(m)
    domid = _free_domid(c.p)
    path = c.target.introduce(c.p, domid)
    check(next_event(m) == (b"@introduceDomain", b"i"), "no @introduceDomain")
    check(c.p.is_domain_introduced(domid), "not introduced")
    dc = pyxs.Client(unix_socket_path=path)
    dc.connect()
    c.clients.append(dc)
    check(dc.get_domain_path(domid) == f"/local/domain/{domid}".encode(), "domain socket")
    c.clients.remove(dc)
    dc.close()
    raw(c.p, Op.RELEASE, f"{domid}\0".encode())
    check(next_event(m) == (b"@releaseDomain", b"r"), "no @releaseDomain")
    check(not c.p.is_domain_introduced(domid), "still introduced")


@case("watch-transaction-fires-on-commit")
def _(c: Ctx):
    m = c.p.monitor()
    m.watch(c.path("t"), b"t")
    next_event(m)
    s = Sentinel(m, c.p, c.path("s"))
    tx = _copy(c.p)
    tx.transaction()
    tx.write(c.path("t/a"), b"1")
    check(not s.before(), "event before commit")
    check(tx.commit(), "commit failed")
    check(next_event(m) == (c.path("t/a"), b"t"), "no event at commit")
    tx.transaction()
    tx.write(c.path("t/b"), b"1")
    tx.rollback()
    check(not s.before(), "event from an aborted transaction")


@case("watch-reset-watches")
def _(c: Ctx):
    s = _sock(c)            # pyxs cannot receive RESET_WATCHES replies (type 21)

    def send(op, payload, req):
        s.sendall(struct.pack("=IIII", op, req, 0, len(payload)) + payload)

    c.p.write(c.path("s"), b"init")
    send(Op.WATCH, c.path("w") + b"\0old\0", 1)
    check(_recv_msg(s)[0] == Op.WATCH and _recv_msg(s)[0] == Op.WATCH_EVENT, "WATCH")
    send(OP_RESET_WATCHES, b"\0", 2)
    check(_recv_msg(s) == (OP_RESET_WATCHES, 2, 0, b"OK\0"), "RESET_WATCHES reply")
    send(Op.WATCH, c.path("s") + b"\0sentinel\0", 3)
    check(_recv_msg(s)[0] == Op.WATCH and _recv_msg(s)[0] == Op.WATCH_EVENT, "WATCH")
    c.p.write(c.path("w"), b"1")
    c.p.write(c.path("s"), b"1")
    msg = _recv_msg(s)
    check(msg == (Op.WATCH_EVENT, 0, 0, c.path("s") + b"\0sentinel\0"),
          f"after RESET_WATCHES: {msg}")


# ---------------------------------------------------------------------------------------
# Transactions

def _copy(client: pyxs.Client) -> pyxs.Client:
    """Another pyxs client on the same connection (its own transaction id)."""
    return copy.copy(client)


@case("tx-commit")
def _(c: Ctx):
    t = _copy(c.p)
    t.transaction()
    t.write(c.path("a"), b"1")
    t.write(c.path("b/c"), b"2")
    check(t.commit(), "commit failed")
    check(c.p.read(c.path("a")) == b"1" and c.p.read(c.path("b/c")) == b"2", "not visible")


@case("tx-isolation")
def _(c: Ctx):
    t = _copy(c.p)
    t.transaction()
    t.write(c.path("a"), b"1")
    check(not c.p.exists(c.path("a")), "uncommitted write visible outside")
    check(t.commit(), "commit failed")


@case("tx-read-own-writes")
def _(c: Ctx):
    c.p.write(c.path("gone"), b"x")
    t = _copy(c.p)
    t.transaction()
    t.write(c.path("a/b"), b"mine")
    check(t.read(c.path("a/b")) == b"mine", "own write not visible inside")
    check(t.list(c.path("a")) == [b"b"], "own new child not listed inside")
    t.delete(c.path("gone"))
    expect_error(errno.ENOENT, t.read, c.path("gone"))
    check(c.p.read(c.path("gone")) == b"x", "removal visible outside before commit")
    check(t.commit(), "commit failed")
    check(not c.p.exists(c.path("gone")), "removal lost")


@case("tx-abort")
def _(c: Ctx):
    c.p.write(c.path("keep"), b"old")
    t = _copy(c.p)
    t.transaction()
    t.write(c.path("keep"), b"new")
    t.write(c.path("new"), b"1")
    t.rollback()
    check(c.p.read(c.path("keep")) == b"old" and not c.p.exists(c.path("new")), "abort applied")


@case("tx-conflict-eagain")
def _(c: Ctx):
    c.p.write(c.path("c"), b"0")
    t = _copy(c.p)
    t.transaction()
    t.read(c.path("c"))
    c.p.write(c.path("c"), b"outside")
    t.write(c.path("d"), b"inside")
    check(t.commit() is False, "conflicting commit succeeded")
    check(not c.p.exists(c.path("d")) and c.p.read(c.path("c")) == b"outside",
          "a failed commit changed the store")


@case("tx-conflict-created-node")
def _(c: Ctx):
    t = _copy(c.p)
    t.transaction()
    check(not t.exists(c.path("n")), "node exists")
    c.p.write(c.path("n"), b"outside")
    t.write(c.path("m"), b"1")
    check(t.commit() is False, "commit after a node it saw missing appeared succeeded")


@case("tx-conflict-removed-node")
def _(c: Ctx):
    c.p.write(c.path("n"), b"1")
    t = _copy(c.p)
    t.transaction()
    t.read(c.path("n"))
    c.p.delete(c.path("n"))
    t.write(c.path("m"), b"1")
    check(t.commit() is False, "commit after a node it read vanished succeeded")


@case("tx-per-node-snapshot")
def _(c: Ctx):
    c.p.write(c.path("n"), b"before")
    t = _copy(c.p)
    t.transaction()
    check(t.read(c.path("n")) == b"before", "first read")
    c.p.write(c.path("n"), b"after")
    check(t.read(c.path("n")) == b"before", "second read inside saw the outside write")
    t.rollback()


@case("tx-disjoint-commit")
def _(c: Ctx):
    c.p.write(c.path("mine"), b"0")
    c.p.write(c.path("theirs"), b"0")
    t = _copy(c.p)
    t.transaction()
    t.read(c.path("mine"))
    t.write(c.path("mine"), b"1")
    c.p.write(c.path("theirs"), b"1")          # an existing node the transaction never saw
    check(t.commit(), "commit failed without a conflicting change")
    check(c.p.read(c.path("mine")) == b"1", "commit lost")


@case("tx-retry-loop")
def _(c: Ctx):
    c.p.write(c.path("counter"), b"0")
    t = _copy(c.p)
    attempts = 0
    while True:
        attempts += 1
        t.transaction()
        n = int(t.read(c.path("counter")))
        if attempts == 1:
            c.p.write(c.path("counter"), b"10")    # interference on the first try only
        t.write(c.path("counter"), str(n + 1).encode())
        if t.commit():
            break
        check(attempts < 5, "never committed")
    check(attempts == 2, f"{attempts} attempts, want 2")
    check(c.p.read(c.path("counter")) == b"11", f"counter {c.p.read(c.path('counter'))}")


@case("tx-two-on-one-connection")
def _(c: Ctx):
    c.p.write(c.path("one"), b"0")
    c.p.write(c.path("two"), b"0")
    t1, t2 = _copy(c.p), _copy(c.p)
    i1, i2 = t1.transaction(), t2.transaction()
    check(i1 != i2 and i1 and i2, f"transaction ids {i1} {i2}")
    t1.write(c.path("one"), b"1")
    t2.write(c.path("two"), b"2")
    check(t1.commit() and t2.commit(), "disjoint transactions conflicted")


@case("tx-unknown-id-enoent")
def _(c: Ctx):
    raw_error(c.p, Op.READ, c.base + b"\0", errno.ENOENT, tx_id=0x7FFFFFF0)
    raw_error(c.p, Op.TRANSACTION_END, b"T\0", errno.ENOENT, tx_id=0)


@case("tx-end-bad-arg-einval")
def _(c: Ctx):
    t = _copy(c.p)
    tx = t.transaction()
    raw_error(c.p, Op.TRANSACTION_END, b"X\0", errno.EINVAL, tx_id=tx)
    t.rollback()                        # still there after the bad END


@case("tx-nested-ebusy")
def _(c: Ctx):
    t = _copy(c.p)
    tx = t.transaction()
    raw_error(c.p, Op.TRANSACTION_START, b"\0", errno.EBUSY, tx_id=tx)
    t.rollback()


@case("tx-gone-after-end")
def _(c: Ctx):
    c.p.write(c.path("c"), b"0")
    t = _copy(c.p)
    tx = t.transaction()
    t.read(c.path("c"))
    c.p.write(c.path("c"), b"1")
    check(t.commit() is False, "no conflict")
    raw_error(c.p, Op.READ, c.path("c") + b"\0", errno.ENOENT, tx_id=tx)


# ---------------------------------------------------------------------------------------
# The wire itself (privileged Unix socket only: a domain's connection cannot be replaced)

def _sock(c: Ctx) -> socket.socket:
    if not c.target.socket_path:
        raise Skip("no privileged Unix socket")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(c.target.socket_path)     # blocking: C xenstored listens with a backlog of 1,
    s.settimeout(EVENT_TIMEOUT)         # and a non-blocking connect fails with EAGAIN
    c.cleanups.append(s.close)
    return s


def _recv_msg(s: socket.socket) -> tuple[int, int, int, bytes]:
    def exact(n):
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise Fail("connection closed")
            buf += chunk
        return buf
    mtype, req, tx, length = struct.unpack("=IIII", exact(16))
    return mtype, req, tx, exact(length)


@case("wire-oversized-disconnects")
def _(c: Ctx):
    s = _sock(c)
    s.sendall(struct.pack("=IIII", Op.READ, 1, 0, 4097))
    try:
        data = s.recv(100)
    except socket.timeout:
        raise Fail("connection still open after a 4097-byte length") from None
    except ConnectionResetError:
        data = b""
    check(data == b"", f"got {data!r} instead of a closed connection")
    check(c.p.read(c.base) == b"", "daemon unusable afterwards")


@case("wire-split-and-pipelined")
def _(c: Ctx):
    s = _sock(c)
    msgs = b"".join(struct.pack("=IIII", Op.GET_DOMAIN_PATH, 100 + i, 0, 3) + f"{i}\0".encode()
                    for i in range(10, 40))
    head, tail = msgs[:7], msgs[7:]
    for b in head:                       # a header in single bytes
        s.sendall(bytes([b]))
        time.sleep(0.002)
    s.sendall(tail)
    for i in range(10, 40):
        mtype, req, tx, payload = _recv_msg(s)
        check((mtype, req, payload) == (Op.GET_DOMAIN_PATH, 100 + i,
                                        f"/local/domain/{i}\0".encode()),
              f"reply {i}: {(mtype, req, tx, payload)}")


@case("wire-error-echoes-ids")
def _(c: Ctx):
    s = _sock(c)
    s.sendall(struct.pack("=IIII", Op.READ, 0xDEADBEEF, 0, 6) + b"/nope\0")
    check(_recv_msg(s) == (Op.ERROR, 0xDEADBEEF, 0, b"ENOENT\0"), "ENOENT reply")
    s.sendall(struct.pack("=IIII", Op.READ, 7, 0x7FFFFFF1, len(c.base) + 1) + c.base + b"\0")
    check(_recv_msg(s) == (Op.ERROR, 7, 0x7FFFFFF1, b"ENOENT\0"), "unknown transaction")


# ---------------------------------------------------------------------------------------
# Running

def _free_domid(client: pyxs.Client, start: int = 200) -> int:
    for domid in range(start, start + 1000):
        if not client.is_domain_introduced(domid):
            return domid
    raise Fail("no free domid")


def run_case(target: Target, name: str, run_id: str | None = None) -> Result:
    """Run one case (bounded by CASE_TIMEOUT) and return its result."""
    run_id = run_id or f"{os.getpid()}-{int(time.time() * 1000) % 10**8}"
    outcome: list[Result] = []

    def body():
        ctx = None
        try:
            ctx = Ctx(target, run_id, name)
            CASES[name](ctx)
            outcome.append(Result(name, "PASS"))
        except Skip as exc:
            outcome.append(Result(name, "SKIP", str(exc)))
        except Fail as exc:
            outcome.append(Result(name, "FAIL", str(exc)))
        except pyxs.PyXSError as exc:
            code = exc.args[0] if exc.args else "?"
            where = traceback.extract_tb(exc.__traceback__)[-1]
            outcome.append(Result(name, "FAIL", f"unexpected {_ename(code)} at line "
                                                f"{where.lineno}"))
        except Exception as exc:
            outcome.append(Result(name, "FAIL", f"{type(exc).__name__}: {exc}"))
        finally:
            if ctx is not None:
                ctx.close()

    worker = threading.Thread(target=body, daemon=True, name=f"xsconform-{name}")
    worker.start()
    worker.join(CASE_TIMEOUT)
    if worker.is_alive():
        return Result(name, "FAIL", f"hung for {CASE_TIMEOUT}s")
    return outcome[0]


def run(target: Target, names: list[str] | None = None,
        out: Callable[[str], None] = print) -> list[Result]:
    """Run the cases (all by default), printing one XSCONF line each and the summary."""
    run_id = f"{os.getpid()}-{int(time.time() * 1000) % 10**8}"
    results = []
    try:
        for name in names or list(CASES):
            r = run_case(target, name, run_id)
            results.append(r)
            out(f"XSCONF {r.status} {r.name}" + (f": {r.reason}" if r.reason else ""))
    finally:
        try:
            p = target.priv()
            tops = [f"/xsconform-{run_id}"]
            if target.domid is not None:
                tops.append(f"/local/domain/{target.domid}/xsconform-{run_id}")
            for top in tops:
                try:
                    p.delete(top.encode())
                except pyxs.PyXSError:
                    pass
            p.close()
        except Exception:
            pass
        if target.cleanup:
            target.cleanup()
    n = {s: sum(r.status == s for r in results) for s in ("PASS", "FAIL", "SKIP")}
    out(f"XSCONF RESULT: {n['PASS']} passed, {n['FAIL']} failed, {n['SKIP']} skipped")
    return results


def _client_factory(path: str) -> Callable[[], pyxs.Client]:
    def make() -> pyxs.Client:
        c = pyxs.Client(unix_socket_path=path)
        c.connect()
        return c
    return make


def _sim_introduce(socket_path: str) -> Callable[[pyxs.Client, int], str]:
    def introduce(client: pyxs.Client, domid: int) -> str:
        client.introduce_domain(domid, 0, 1)
        return os.path.join(os.path.dirname(socket_path), "domain", f"{domid}.sock")
    return introduce


def socket_poker(socket_path: str) -> Callable[[], None]:
    """A notify() for a ring relay without an event channel: one GET_DOMAIN_PATH round trip
    on a privileged socket makes xenstored run its loop once, which serves the domain rings."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(socket_path)           # blocking, see _sock()
    sock.settimeout(EVENT_TIMEOUT)
    lock = threading.Lock()

    def poke() -> None:
        with lock:
            sock.sendall(struct.pack("=IIII", Op.GET_DOMAIN_PATH, 0, 0, 2) + b"0\0")
            want = 16 + len(b"/local/domain/0\0")
            got = b""
            while len(got) < want:
                chunk = sock.recv(want - len(got))
                if not chunk:
                    raise ConnectionError("xenstored closed the poke socket")
                got += chunk
    poke.close = sock.close
    return poke


def _map_foreign_page(domid: int, frame: int):
    """Map one page of domain `domid` (dom0 only, through libxenforeignmemory).
    @return (a ctypes array over the page, a function that unmaps it)"""
    import ctypes
    lib = ctypes.CDLL("libxenforeignmemory.so.1", use_errno=True)
    lib.xenforeignmemory_open.restype = ctypes.c_void_p
    lib.xenforeignmemory_open.argtypes = [ctypes.c_void_p, ctypes.c_uint]
    lib.xenforeignmemory_map.restype = ctypes.c_void_p
    lib.xenforeignmemory_map.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                         ctypes.c_size_t, ctypes.POINTER(ctypes.c_ulong),
                                         ctypes.POINTER(ctypes.c_int)]
    lib.xenforeignmemory_unmap.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    lib.xenforeignmemory_close.argtypes = [ctypes.c_void_p]
    handle = lib.xenforeignmemory_open(None, 0)
    if not handle:
        raise OSError(ctypes.get_errno(), "xenforeignmemory_open")
    frames, errs = (ctypes.c_ulong * 1)(frame), (ctypes.c_int * 1)()
    addr = lib.xenforeignmemory_map(handle, domid, 3, 1, frames, errs)   # PROT_READ|WRITE
    if not addr or errs[0]:
        err = ctypes.get_errno() or -errs[0]
        lib.xenforeignmemory_close(handle)
        raise OSError(err, f"mapping frame {frame:#x} of domain {domid}")

    def unmap() -> None:
        lib.xenforeignmemory_unmap(handle, addr, 1)
        lib.xenforeignmemory_close(handle)
    return (ctypes.c_ubyte * 4096).from_address(addr), unmap


def paused_domain_target(socket_path: str, domid: int) -> Target:
    """Real Xen: speak as domain `domid` through its own XenStore ring. The domain must be
    created paused (`xl create -p`), so that its kernel never touches the ring; dom0 maps
    the ring page (store/ring-ref) and relays a local socket onto it. On failure the domain
    cases SKIP, saying why."""
    from mwcomms.xen._xsring import RingRelay
    priv = _client_factory(socket_path)
    target = Target(priv=priv, socket_path=socket_path)
    try:
        p = priv()
        try:
            if not p.is_domain_introduced(domid):
                raise OSError(errno.ENOENT, f"domain {domid} is not introduced")
            frame = int(p.read(f"/local/domain/{domid}/store/ring-ref".encode()))
        finally:
            p.close()
        page, unmap = _map_foreign_page(domid, frame)
        poke = socket_poker(socket_path)
        path = f"/tmp/xsconform-dom{domid}-{os.getpid()}.sock"
        relay = RingRelay(page, path, poke)
    except (OSError, ValueError, pyxs.PyXSError) as exc:
        target.no_domain = f"--paused-domain {domid} unusable: {exc}"
        return target

    def cleanup() -> None:
        relay.close()
        poke.close()
        unmap()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    target.domain, target.domid, target.cleanup = _client_factory(path), domid, cleanup
    return target


def is_sim(socket_path: str) -> bool:
    """The sim daemon keeps its per-domain sockets in domain/ beside the main socket."""
    return os.path.isdir(os.path.join(os.path.dirname(socket_path), "domain"))


def sim_target(socket_path: str) -> Target:
    """A target on a running sim daemon: introduces a domain for the unprivileged cases (the
    toolstack's part, as xl does: /local/domain/N owned by dom0, readable by N) and releases
    it in cleanup()."""
    priv = _client_factory(socket_path)
    introduce = _sim_introduce(socket_path)
    p = priv()
    try:
        domid = _free_domid(p, 100)
        dsock = introduce(p, domid)
        home = f"/local/domain/{domid}".encode()
        made_home = not p.exists(home)
        if made_home:
            p.mkdir(home)
            p.set_perms(home, [b"n0", f"r{domid}".encode()])
    finally:
        p.close()

    def cleanup():
        c = priv()
        try:
            raw(c, Op.RELEASE, f"{domid}\0".encode())
            if made_home:
                c.delete(home)
        finally:
            c.close()

    return Target(priv=priv, domain=_client_factory(dsock), domid=domid,
                  socket_path=socket_path, introduce=introduce, cleanup=cleanup)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m mwcomms.tools.xsconform",
                                 description="XenStore conformance suite (pyxs)")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--socket", help="privileged xenstored Unix socket "
                                        "(default: /run/xenstored/socket)")
    where.add_argument("--sim", action="store_true", help="start a private sim xenstored")
    ap.add_argument("--domain-socket", help="a socket that speaks as domain --domid (real Xen)")
    ap.add_argument("--domid", type=int, help="the domain behind --domain-socket")
    ap.add_argument("--paused-domain", type=int, metavar="N",
                    help="real Xen, dom0: act as domain N (created with xl create -p) "
                         "through its own XenStore ring")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("cases", nargs="*", help="run only these cases")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(CASES))
        return 0
    unknown = [n for n in args.cases if n not in CASES]
    if unknown:
        ap.error(f"unknown cases: {' '.join(unknown)}")
    if bool(args.domain_socket) != (args.domid is not None):
        ap.error("--domain-socket and --domid go together")
    if args.domain_socket and args.paused_domain is not None:
        ap.error("--paused-domain or --domain-socket, not both")

    daemon = None
    if args.sim:
        from mwcomms.xen import xenstored
        daemon = xenstored.start()
        socket_path = daemon.socket_path
    else:
        socket_path = args.socket or "/run/xenstored/socket"
    try:
        if not os.path.exists(socket_path):
            print(f"XSCONF FAIL setup: no socket at {socket_path}", flush=True)
            print("XSCONF RESULT: 0 passed, 1 failed, 0 skipped", flush=True)
            return 1
        if args.paused_domain is not None:
            target = paused_domain_target(socket_path, args.paused_domain)
        elif is_sim(socket_path) and not args.domain_socket:
            target = sim_target(socket_path)
        else:
            target = Target(priv=_client_factory(socket_path), socket_path=socket_path)
            if args.domain_socket:
                target.domain, target.domid = _client_factory(args.domain_socket), args.domid
        t0 = time.monotonic()
        results = run(target, args.cases or None, out=lambda s: print(s, flush=True))
        print(f"XSCONF TIME: {time.monotonic() - t0:.2f}s", flush=True)
        return 1 if any(r.status == "FAIL" for r in results) else 0
    finally:
        if daemon is not None:
            daemon.stop()


if __name__ == "__main__":
    sys.exit(main())
