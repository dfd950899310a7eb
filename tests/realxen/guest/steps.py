"""The real-Xen payload: the test steps, run by Python 3.11 in dom0 (see ../README.md).

Protocol: every result is one line on dom0's console (hvc0 -> Xen -> com1 -> QEMU stdout):

    XENT PASS <name>[: detail]
    XENT FAIL <name>: why
    XENT SKIP <name>: why
    XENT-LOG <text>              context for a reader, echoed by the harness
    XENT-BOOT <mark> [detail]    timing marks: dom0-userspace, xenstored-ready, steps-end, done

NAMES lists the steps the harness expects a result for, in run order; a step may add
sub-results named <step>/<case> (xsconform does, one per conformance case). dom0-init.sh
reports "dom0-xenstored" itself, and "dom0-python" as FAIL when this file cannot run.

The domU (domu-init.sh) runs an agent: dom0 writes a shell command to
/local/domain/<D>/data/xent/cmd-<n> (n = 0, 1, ...), the agent runs it in the background and
answers with data/xent/out-<n> (the tail of its output) then data/xent/rc-<n>. What the two
sides exchange for a test (grant references, ports) travels through XenStore nodes too: the
domU writes under its own data/xent/, dom0 writes under the domU's data/xent/ (nodes dom0
creates there inherit the domU's ownership, so the domU can read them).

Importing this module has no side effects: the host harness imports it for NAMES.
"""
import errno
import importlib.util
import os
import queue
import subprocess
import sys
import threading
import time

NAMES = [
    "dom0-xenstored",     # xen modules, xenfs, the C xenstored, xen-init-dom0 (dom0-init.sh)
    "dom0-python",        # Python 3.11 runs in dom0
    "dom0-import",        # the project's package from the host venv imports there
    "xenstore-pyxs",      # pyxs against the real C xenstored, cross-checked with xenstore-*
    "domu-boot",          # xl create of a PV domU whose agent answers through XenStore
    "plat-python",        # the same through the Python layer (mwcomms.xen.platform) in dom0
    "plat-self",          # platform layer, xen backend: grants + event channels within dom0
    "plat-domu-offers",   # domU shares and offers a port, dom0 maps and binds
    "plat-dom0-offers",   # dom0 shares and offers a port, domU maps and binds
    "ring-stress",        # the ring library across dom0 and the domU
    "xsconform",          # the XenStore conformance suite against the real xenstored
    "xenbus-handshake",   # the XenbusState handshake against the real xenstored
    "integrity",          # after all that, both domains' binaries still hash as built
    "domu-shutdown",      # the domU powers off on request and is gone
    # issue 4: the backbone on real Xen (the INS image as a domU, mwcommsd in dom0)
    "ins-image",          # `make ins-image`'s image is in dom0, under 40 MB
    "ins-boot",           # xl create of the INS image, mwctl attach: the INS serves (InitWait)
    "mwcommsd",           # mwcommsd in dom0 (xen backend) connects to the INS; node permissions
    "e2e-http",           # curl -> HTTP server, both under the shim in dom0: sockets in the INS
    "e2e-udp",            # UDP echo through the INS
    "e2e-dns",            # a name only the INS's /etc/hosts knows resolves, through the INS
    "e2e-100mb",          # 100 MB over HTTP, sha256 checked
    "ins-restart",        # xl destroy mid-transfer: clear errnos; xl create + mwctl attach: works again
    "ins-shutdown",       # xl shutdown closes the INS cleanly; mwcommsd follows and exits 0
]

XS_SOCKET = "/run/xenstored/socket"
DOMU_NAME = "xent-domu"
PAUSED_NAME = "xent-paused"   # created paused for xsconform's unprivileged-domain cases
DOMU_CFG = "/etc/xen/xent-domu.cfg"
XENT_BIN = "/xent/bin"
INS_NAME = "mwcomms-ins"
INS_CFG = "/var/lib/mwcomms/ins/mwcomms-ins.cfg"
CONTROL = "/run/mwcomms/control.sock"
NETCASES = "/xent/netcases.py"
HTTP_PORT, UDP_PORT = 8080, 5353
HUNDRED_MB = 100 << 20


class Fail(Exception):
    """The step failed; the message says why."""


class Skip(Exception):
    """The step cannot run yet; the message says why."""


def emit(status, name, why=""):
    print("XENT %s %s%s" % (status, name, ": " + why if why else ""), flush=True)


def log(text):
    for line in str(text).rstrip().splitlines():
        print("XENT-LOG %s" % line, flush=True)


def uptime():
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


def sh(cmd, timeout=60, check=False):
    """Run a command (argv list or shell string); @return (rc, combined output)."""
    try:
        p = subprocess.run(cmd, shell=isinstance(cmd, str), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise Fail("%s: timed out after %ss" % (cmd, timeout)) from e
    if check and p.returncode != 0:
        raise Fail("%s: rc=%d: %s" % (cmd, p.returncode, p.stdout.strip()[-300:]))
    return p.returncode, p.stdout


def xs_read(path, raw=False):
    """The value at `path`, or None; raw=False escapes what is not printable, like the tool."""
    rc, out = sh(["xenstore-read"] + (["-R"] if raw else []) + [path])
    return out.rstrip("\n") if rc == 0 else None


def xs_write(path, value):
    sh(["xenstore-write", path, value], check=True)


def wait_for(what, probe, timeout, interval=0.1):
    """Poll `probe()` until it returns something not None; Fail after `timeout` seconds."""
    end = time.monotonic() + timeout
    while True:
        v = probe()
        if v is not None:
            return v
        if time.monotonic() > end:
            raise Fail("%s: nothing after %.0f s" % (what, timeout))
        time.sleep(interval)


def manifest():
    """What the harness built: program name -> "built" | "missing: why" | "failed: why"."""
    out = {}
    with open("/xent/manifest") as f:
        for line in f:
            k, _, v = line.strip().partition("=")
            out[k] = v
    return out


def program(name):
    """Path of a test program; Skip when its source is not there yet, Fail when it did not build."""
    state = manifest().get(name, "missing: not known to the harness")
    if state == "built":
        return os.path.join(XENT_BIN, name)
    if state.startswith("missing"):
        raise Skip("not yet built (%s)" % state.partition(": ")[2])
    raise Fail("%s did not build: %s" % (name, state.partition(": ")[2]))


def config(key, default):
    with open("/xent/config") as f:
        for line in f:
            k, _, v = line.strip().partition("=")
            if k == key:
                return type(default)(v)
    return default


class Domu:
    """The PV domU and its agent (domu-init.sh)."""

    def __init__(self):
        self.domid = None
        self.error = None      # why it could not be started, once tried
        self.detail = ""       # how the start went
        self.ready = False     # its agent answered
        self.next = 0

    def path(self, rel):
        return "/local/domain/%d/data/xent/%s" % (self.domid, rel)

    def start(self):
        t0 = time.monotonic()
        rc, out = sh(["xl", "create", DOMU_CFG], timeout=120)
        t_xl = time.monotonic() - t0
        if rc != 0:
            raise Fail("xl create rc=%d: %s" % (rc, out.strip()[-400:]))
        rc, out = sh(["xl", "domid", DOMU_NAME])
        self.domid = int(out.strip())
        hello = wait_for("domU agent hello in XenStore", lambda: xs_read(self.path("hello")), 120)
        self.ready = True
        return "domid %d, xl create %.1f s, agent up %.1f s after it started; %s" % (
            self.domid, t_xl, time.monotonic() - t0, hello)

    def run(self, command):
        """Start `command` (busybox sh) in the domU; @return its handle for wait()."""
        n = self.next
        self.next += 1
        xs_write(self.path("cmd-%d" % n), command)
        return n

    def wait(self, n, timeout):
        """@return (rc, output tail) of command n."""
        rc = wait_for("domU command %d" % n, lambda: xs_read(self.path("rc-%d" % n)), timeout)
        out = xs_read(self.path("out-%d" % n), raw=True) or ""
        for line in out.splitlines():
            log("domU| " + line)
        return int(rc), out


class Context:
    def __init__(self):
        self.domu = Domu()
        self.backbone = Backbone()

    def need_domu(self):
        """The running domU, started on first use."""
        if self.domu.error:    # tried once already: the later steps fail fast
            raise Fail("no domU: %s" % self.domu.error)
        if not self.domu.ready:
            try:
                self.domu.detail = self.domu.start()
            except Fail as e:
                self.domu.error = str(e)
                raise
        return self.domu


# ------------------------------------------------------------------ the steps

def step_dom0_import(ctx):
    import cffi
    import pyxs
    import mwcomms
    from mwcomms import _native
    where = os.path.dirname(mwcomms.__file__)
    if not where.startswith("/usr/lib/python3/dist-packages"):
        raise Fail("mwcomms imported from %s, not the copied venv" % where)
    return "mwcomms from %s (%s), pyxs from %s, cffi %s" % (
        where, os.path.basename(_native.__file__), os.path.dirname(pyxs.__file__), cffi.__version__)


def step_xenstore_pyxs(ctx):
    from pyxs import Client
    base = b"/xent/pyxs"
    with Client(unix_socket_path=XS_SOCKET) as c:
        c.write(base + b"/a", b"from-pyxs")
        if c.read(base + b"/a") != b"from-pyxs":
            raise Fail("pyxs read back %r" % c.read(base + b"/a"))
        if xs_read("/xent/pyxs/a") != "from-pyxs":
            raise Fail("xenstore-read sees %r after a pyxs write" % xs_read("/xent/pyxs/a"))
        xs_write("/xent/pyxs/b", "from-cli")
        if c.read(base + b"/b") != b"from-cli":
            raise Fail("pyxs reads %r after xenstore-write" % c.read(base + b"/b"))
        if sorted(c.list(base)) != [b"a", b"b"]:
            raise Fail("directory %r" % c.list(base))
        if c.get_domain_path(0) != b"/local/domain/0":
            raise Fail("GET_DOMAIN_PATH 0 = %r" % c.get_domain_path(0))
        # a watch fires for a write made by another client (the C tool)
        with c.monitor() as m:
            m.watch(base + b"/w", b"tok")
            try:
                m.events.get(timeout=10)          # the initial event on registration
                xs_write("/xent/pyxs/w", "1")
                path, token = m.events.get(timeout=10)
            except queue.Empty:
                raise Fail("no watch event within 10 s") from None
            if (path, token) != (base + b"/w", b"tok"):
                raise Fail("watch event %r" % ((path, token),))
        # a transaction sees its own write, hides it from others until commit, and fails to
        # commit (EAGAIN) after another client changed a node it had read
        c.transaction()
        c.read(base + b"/a")
        c.write(base + b"/t", b"in-tx")
        if c.read(base + b"/t") != b"in-tx":
            raise Fail("a transaction does not see its own write")
        if xs_read("/xent/pyxs/t") is not None:
            raise Fail("a write inside a transaction is visible outside before commit")
        xs_write("/xent/pyxs/a", "outside")
        if c.commit():
            raise Fail("commit succeeded although a node read in the transaction changed")
        if c.exists(base + b"/t"):
            raise Fail("the write of a failed transaction is visible")
        c.transaction()
        c.write(base + b"/t", b"in-tx")
        if not c.commit() or c.read(base + b"/t") != b"in-tx":
            raise Fail("an uncontended transaction did not commit")
        c.delete(base)
        if c.exists(base):
            raise Fail("%r still exists after delete" % base)
    return "read/write/list/watch/transactions (isolation, EAGAIN, commit)/delete, cross-checked with xenstore-read/write"


def step_domu_boot(ctx):
    return ctx.need_domu().detail


def step_plat_python(ctx):
    """Grants and event channels of dom0 with itself through mwcomms.xen.platform: what one
    side writes the other reads, both ways; a bogus grant reference is an OSError, not a crash;
    notifications cross both ways and are taken once."""
    from mwcomms.xen.platform import Platform
    with Platform(backend="xen") as plat:
        if plat.backend != "xen":
            raise Fail("backend %r" % plat.backend)
        with plat.share(0, 2) as shared, plat.map(0, shared.refs) as mapped:
            shared.buffer[0:5] = b"hello"
            mapped.buffer[4096:4101] = b"world"
            if bytes(mapped.buffer[0:5]) != b"hello" or bytes(shared.buffer[4096:4101]) != b"world":
                raise Fail("2 shared pages do not carry the bytes both ways")
            refs = list(shared.refs)
        try:
            bogus = plat.map(0, [0xFFFFFF])
        except OSError as e:
            bad = "bogus ref -> %s" % errno.errorcode.get(e.errno, e.errno)
        else:
            bogus.release()
            raise Fail("mapping grant reference 0xffffff succeeded")
        with plat.evtchn() as a, plat.evtchn() as b:
            pa = a.alloc_unbound(0)
            pb = b.bind_interdomain(0, pa)
            # Xen marks the newly bound port pending (EVTCHNOP_bind_interdomain makes up for
            # notifications sent to the unbound port): a spurious event to take first
            spurious = []
            for ec in (a, b):
                while ec.wait(0.2):
                    spurious.append(ec.pending())
            rounds = 200
            t0 = time.monotonic()
            for _ in range(rounds):
                b.notify(pb)
                if not a.wait(5.0) or a.pending() != pa:
                    raise Fail("notification b -> a lost")
                a.notify(pa)
                if not b.wait(5.0) or b.pending() != pb:
                    raise Fail("notification a -> b lost")
            rtt = (time.monotonic() - t0) / rounds
            if a.pending() is not None or b.pending() is not None:
                raise Fail("a notification was delivered twice")
    return "refs %s, %s, evtchn ports %d<->%d (pending after bind: %s), %d round trips %.0f us each" % (
        refs, bad, pa, pb, spurious or "none", rounds, rtt * 1e6)


def _plat_result(out, rc, who):
    """plat_xentest's verdict: exit 0, "PLAT RESULT: PASS" and no PLAT FAIL, else Fail with
    the failed checks."""
    fails = [l for l in out.splitlines() if l.startswith("PLAT FAIL")]
    if rc == 0 and "PLAT RESULT: PASS" in out and not fails:
        return
    raise Fail("%s rc=%d: %s" % (who, rc, "; ".join(fails)[:400] or "no 'PLAT RESULT: PASS' line"))


def step_plat_self(ctx):
    prog = program("plat_xentest")
    rc, out = sh([prog, "self", "0"], timeout=60)   # xen: grants need our own domid
    log("\n".join("dom0| " + l for l in out.splitlines()))
    _plat_result(out, rc, "dom0 self-test")
    return "%d checks" % out.count("PLAT PASS")


def _offer_cmd(prog, remote, key):
    """Shell for an offering domU: start the offer, publish its "REFS PORT" line at
    data/xent/<key> once written, then wait for the program (its rc is the command's)."""
    f = "/tmp/%s.offer" % key
    return ("{prog} offer {remote} {f} & pid=$!; i=0; "
            "while [ ! -s {f} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; "
            "xenstore-write data/xent/{key} \"$(cat {f})\"; wait $pid"
            ).format(prog=prog, remote=remote, f=f, key=key)


def step_plat_domu_offers(ctx):
    program("plat_xentest")
    domu = ctx.need_domu()
    key = "plat-domu-offer"
    n = domu.run(_offer_cmd("plat_xentest", 0, key))
    offer = wait_for("domU offer at data/xent/" + key, lambda: xs_read(domu.path(key)), 60)
    rc, out = sh([program("plat_xentest"), "map", str(domu.domid)] + offer.split(), timeout=60)
    log("\n".join("dom0| " + l for l in out.splitlines()))
    rc_u, out_u = domu.wait(n, 60)
    _plat_result(out, rc, "dom0 (map)")
    _plat_result(out_u, rc_u, "domU (offer)")
    return "domU offered %s; dom0 mapped it" % offer


def step_plat_dom0_offers(ctx):
    prog = program("plat_xentest")
    domu = ctx.need_domu()
    key = "plat-dom0-offer"
    node = domu.path(key)
    offer_file = "/tmp/%s.offer" % key
    if os.path.exists(offer_file):
        os.unlink(offer_file)
    dom0 = subprocess.Popen([prog, "offer", str(domu.domid), offer_file], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        offer = wait_for("dom0 offer file", lambda: _read_nonempty(offer_file), 60)
        xs_write(node, offer)
        n = domu.run("set -- $(xenstore-read data/xent/%s) && plat_xentest map 0 \"$@\"" % key)
        rc_u, out_u = domu.wait(n, 90)
        out, _ = dom0.communicate(timeout=60)
    finally:
        if dom0.poll() is None:
            dom0.kill()
            dom0.wait()
    log("\n".join("dom0| " + l for l in out.splitlines()))
    _plat_result(out_u, rc_u, "domU (map)")
    _plat_result(out, dom0.returncode, "dom0 (offer)")
    return "dom0 offered %s via %s; domU mapped it" % (offer, node)


def _read_nonempty(path):
    try:
        with open(path) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    return text or None


def _xs_put_chunks(node, text, size=1000):
    """Write `text` under node/0, node/1, ... and node/n = the count (values stay small)."""
    chunks = [text[i:i + size] for i in range(0, len(text), size)] or [""]
    for i, c in enumerate(chunks):
        xs_write("%s/%d" % (node, i), c)
    xs_write(node + "/n", str(len(chunks)))


def step_ring_stress(ctx):
    """ring_xen across the domains: the frontend (dom0) shares the area and a port with the
    domU and writes the exchange file; its content travels to the domU through XenStore
    (data/xent/ring-xchg/<i>); the backend (domU) maps, binds and answers. Both check every
    message and byte; both must print RING-STRESS OK with the same hash."""
    prog = program("ring_xen")
    domu = ctx.need_domu()
    msgs = config("ring_messages", 20000)
    common = ["--platform", "--mode=doorbell", "--msgs=%d" % msgs, "--bytes=%d" % (msgs * 256),
              "--pingpong=200", "--seed=7", "--timeout=150"]
    xchg = "/tmp/ring.xchg"
    if os.path.exists(xchg):
        os.unlink(xchg)
    front = subprocess.Popen([prog, "--role=front", "--remote=%d" % domu.domid, "--xchg=" + xchg] + common,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        text = wait_for("ring_xen front exchange file", lambda: _read_nonempty(xchg), 60)
        _xs_put_chunks(domu.path("ring-xchg"), text)
        n = domu.run(
            "n=$(xenstore-read data/xent/ring-xchg/n) && i=0 && "
            "while [ $i -lt $n ]; do xenstore-read -R data/xent/ring-xchg/$i | tr -d '\\n'; i=$((i+1)); done "
            "> /tmp/ring.xchg.part && echo >> /tmp/ring.xchg.part && mv /tmp/ring.xchg.part /tmp/ring.xchg && "
            "ring_xen --role=back --remote=0 --xchg=/tmp/ring.xchg " + " ".join(common))
        rc_b, out_b = domu.wait(n, 200)
        out_f, _ = front.communicate(timeout=60)
    finally:
        if front.poll() is None:
            front.kill()
            front.wait()
    log("\n".join("dom0| " + l for l in out_f.splitlines()))
    for who, rc, out in (("front (dom0)", front.returncode, out_f), ("back (domU)", rc_b, out_b)):
        if rc != 0 or "RING-STRESS OK" not in out:
            bad = [l for l in out.splitlines() if "FAIL" in l] or out.strip().splitlines()[-1:]
            raise Fail("%s rc=%d: %s" % (who, rc, "; ".join(bad)[:300]))
    rate = [l for l in out_f.splitlines() if l.startswith(("RING-RATE", "RING-RTT"))]
    return "; ".join(rate) or "no RING-RATE line"


def _module(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def step_xsconform(ctx):
    if not _module("mwcomms.tools.xsconform"):
        raise Skip("not yet built (no module mwcomms.tools.xsconform)")
    # the cases that speak as an unprivileged domain need one whose kernel never touches its
    # XenStore ring: a second domU, created paused
    with open(DOMU_CFG) as f:
        cfg = f.read().replace('name = "%s"' % DOMU_NAME, 'name = "%s"' % PAUSED_NAME)
    with open("/tmp/xent-paused.cfg", "w") as f:
        f.write(cfg)
    extra = []
    rc, out = sh(["xl", "create", "-p", "/tmp/xent-paused.cfg"], timeout=120)
    if rc == 0:
        extra = ["--paused-domain", sh(["xl", "domid", PAUSED_NAME])[1].strip()]
    else:
        log("xl create -p failed (rc=%d), the unprivileged cases will skip: %s" % (rc, out.strip()[-300:]))
    try:
        rc, out = sh([sys.executable, "-m", "mwcomms.tools.xsconform", "--socket", XS_SOCKET] + extra,
                     timeout=240)
    finally:
        if extra:
            sh(["xl", "destroy", PAUSED_NAME])
    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    result = None
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 3 and parts[0] == "XSCONF" and parts[1] in counts:
            name, _, why = parts[2].partition(":")
            name = name.strip().replace(" ", "_")
            counts[parts[1]] += 1
            emit(parts[1], "xsconform/" + name, why.strip())
        elif line.startswith("XSCONF RESULT:"):
            result = line.split(":", 1)[1].strip()
        else:
            log("xsconform| " + line)
    summary = "%d PASS, %d FAIL, %d SKIP" % (counts["PASS"], counts["FAIL"], counts["SKIP"])
    if rc != 0 or counts["FAIL"] or result is None or " 0 failed" not in result:
        raise Fail("rc=%d, RESULT %s, %s" % (rc, result, summary))
    return "%s%s" % (summary, ", as dom0 and as paused domain %s" % extra[1] if extra else "")


def step_xenbus_handshake(ctx):
    if not _module("mwcomms.xen.xenbus"):
        raise Skip("not yet built (no module mwcomms.xen.xenbus)")
    rc, out = sh([sys.executable, "-m", "mwcomms.xen.xenbus", "selftest"], timeout=120)
    log("\n".join("xenbus| " + l for l in out.splitlines()))
    if rc != 0:
        last = out.strip().splitlines()[-1] if out.strip() else ""
        raise Fail("selftest rc=%d: %s" % (rc, last[:300]))
    return out.strip().splitlines()[-1] if out.strip() else "rc=0"


def step_integrity(ctx):
    """After everything else ran: the binaries and libraries of both images still have the
    digests the harness computed, and no process of either domain died of a segfault (the
    domU agent alone forks a few hundred times). Catches grant unmaps or stray writes that
    corrupt a domain's memory, and an emulated CPU that does (see harness.Config.cpu)."""
    check = "sha256sum -c /xent/sha256sums | grep -v ': OK$'; dmesg | grep -E 'segfault|general protection|BUG:'; true"
    _, bad0 = sh(check, timeout=120)
    domu = ctx.need_domu()
    _, bad_u = domu.wait(domu.run(check), 120)
    with open("/xent/sha256sums") as f:
        count = sum(1 for _ in f)
    if bad0.strip() or bad_u.strip():
        raise Fail("dom0 [%s] domU [%s]" % (bad0.strip().replace("\n", "; ")[:300],
                                            bad_u.strip().replace("\n", "; ")[:300]))
    return "%d files in dom0 and the domU's set hash as built; no segfault in either kernel log" % count


def step_domu_shutdown(ctx):
    domu = ctx.need_domu()
    domu.run("poweroff")
    t0 = time.monotonic()

    def gone():
        rc, _ = sh(["xl", "domid", DOMU_NAME])
        return True if rc != 0 else None
    try:
        wait_for("domU gone after poweroff", gone, 60)
    except Fail:
        sh(["xl", "destroy", DOMU_NAME])
        raise
    finally:
        domu.domid = None
    return "gone %.1f s after the request" % (time.monotonic() - t0)


# ------------------------------------------------------------------ issue 4: the backbone

def mwctl(*args, timeout=60):
    """`mwctl ARGS` in dom0 (the console script's module). @return (rc, output)"""
    return sh([sys.executable, "-m", "mwcomms.tools.mwctl"] + [str(a) for a in args], timeout=timeout)


_xs = None


def xs_state(path):
    """A XenbusState node through one pyxs connection: the waits poll it every 0.1-0.2 s,
    and a xenstore-read process each time would take CPU from the booting INS under TCG."""
    global _xs
    from pyxs import Client, PyXSError
    if _xs is None:
        _xs = Client(unix_socket_path=XS_SOCKET)
        _xs.connect()
    try:
        raw = _xs.read(path.encode() + b"/state")
    except PyXSError:
        return 0
    return int(raw) if raw.isdigit() else 0


class Backbone:
    """The INS domain (the image of `make ins-image`), mwcommsd in dom0 and the programs run
    under the shim, across the issue-4 steps."""

    FRONT = "/local/domain/0/device/mwcomms/0"

    def __init__(self):
        self.ins = None                  # the INS's domid
        self.mwcommsd = None             # Popen
        self.procs = []                  # servers under the shim
        self.error = None

    def back(self, ins=None):
        return "/local/domain/%d/backend/mwcomms/0/0" % (self.ins if ins is None else ins)

    def create_ins(self):
        """xl create the INS and attach the device to it. @return (xl create seconds, t0)"""
        t0 = time.monotonic()
        rc, out = sh(["xl", "create", INS_CFG], timeout=120)
        if rc != 0:
            raise Fail("xl create %s rc=%d: %s" % (INS_CFG, rc, out.strip()[-400:]))
        t_xl = time.monotonic() - t0
        self.ins = int(sh(["xl", "domid", INS_NAME], check=True)[1].strip())
        rc, out = mwctl("attach", "--frontend", 0, "--ins", self.ins)
        log("mwctl| " + out.strip())
        if rc != 0:
            raise Fail("mwctl attach --frontend 0 --ins %d rc=%d: %s" % (self.ins, rc, out.strip()[-300:]))
        return t_xl, t0

    def wait_serving(self, t0, timeout=90):
        """Until the INS daemon has advertised (backend state InitWait or later)."""
        wait_for("INS dom%d serving (backend state >= InitWait)" % self.ins,
                 lambda: True if xs_state(self.back()) >= 2 else None, timeout)
        return time.monotonic() - t0

    def wait_connected(self, timeout=60):
        t0 = time.monotonic()
        wait_for("both ends Connected",
                 lambda: True if xs_state(self.FRONT) == 4 and xs_state(self.back()) == 4 else None,
                 timeout, interval=0.2)
        return time.monotonic() - t0

    def env(self):
        from mwcomms import shim_path
        return dict(os.environ, LD_PRELOAD=shim_path(), MWCOMMS_SOCKET=CONTROL)

    def shim(self, cmd, timeout=120):
        """Run `cmd` (argv) under the shim. @return (rc, stdout + stderr)"""
        try:
            p = subprocess.run(cmd, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise Fail("%s under the shim: timed out after %s s" % (" ".join(cmd), timeout)) from e
        return p.returncode, p.stdout

    def spawn(self, cmd, ready=None, timeout=60):
        """Start `cmd` under the shim; wait for a first output line containing `ready`."""
        p = subprocess.Popen(cmd, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
        self.procs.append(p)
        if ready:
            # lines before `ready` (the shim's notices, say) are logged; EOF is "" (exited)
            q = queue.Queue()

            def first_lines():
                for line in iter(p.stdout.readline, ""):
                    q.put(line)
                    if ready in line:
                        return
                q.put("")
            threading.Thread(target=first_lines, daemon=True).start()
            end = time.monotonic() + timeout
            while True:
                try:
                    line = q.get(timeout=max(0.1, end - time.monotonic()))
                except queue.Empty:
                    raise Fail("%s: no %r within %d s" % (" ".join(cmd), ready, timeout)) from None
                if ready in line:
                    break
                if not line:
                    raise Fail("%s exited (rc=%s) before %r" % (" ".join(cmd), p.wait(), ready))
                log("%s| %s" % (os.path.basename(cmd[1]) if len(cmd) > 1 else cmd[0], line.rstrip()))
        return p

    def servers(self):
        """The HTTP and UDP echo servers of the cases, under the shim (their sockets in the INS)."""
        self.stop_servers()
        self.spawn([sys.executable, NETCASES, "http", str(HTTP_PORT)], "listening")
        self.spawn([sys.executable, NETCASES, "udp-echo", str(UDP_PORT)], "listening")

    def stop_servers(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        self.procs = []

    def start_mwcommsd(self):
        os.makedirs("/run/mwcomms", exist_ok=True)
        self.mwcommsd = subprocess.Popen(
            [sys.executable, "-m", "mwcomms.daemon", "--backend", "xen", "--domid", "0",
             "--xenstore", XS_SOCKET, "--socket", CONTROL, "--log", "/tmp/mwcommsd.log",
             "--stats", "/run/mwcomms/mwcommsd.stats.json"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def mwcommsd_log(self, lines=25):
        try:
            with open("/tmp/mwcommsd.log") as f:
                log("\n".join("mwcommsd| " + l for l in f.read().splitlines()[-lines:]))
        except OSError:
            pass

    def close(self):
        self.stop_servers()
        if self.mwcommsd is not None and self.mwcommsd.poll() is None:
            self.mwcommsd.kill()
            self.mwcommsd.wait()
        if self.ins is not None:
            sh(["xl", "destroy", INS_NAME])


def ins_console(patterns=("mwcomms-ins:", "serving")):
    """Log the INS's console lines that contain one of `patterns` (its boot marks)."""
    try:
        with open("/var/log/xen/console/guest-%s.log" % INS_NAME, errors="replace") as f:
            log("\n".join("INS console| " + l.rstrip() for l in f if any(p in l for p in patterns)))
    except OSError:
        pass


def need_backbone(ctx, connected=True):
    bb = ctx.backbone
    if bb.error:
        raise Fail("no backbone: %s" % bb.error)
    if connected and (bb.mwcommsd is None or bb.mwcommsd.poll() is not None):
        raise Fail("mwcommsd is not running (see the mwcommsd step)")
    return bb


def step_ins_image(ctx):
    size = config("ins_image_bytes", 0)
    detail = "%.1f MB: kernel %.1f MB (gzip'd ELF) + initramfs %.1f MB (%.1f MB of files)" % (
        size / 1e6, config("ins_kernel_bytes", 0) / 1e6, config("ins_initrd_bytes", 0) / 1e6,
        config("ins_initrd_unpacked", 0) / 1e6)
    where = os.path.dirname(INS_CFG)
    with open(INS_CFG) as f:
        cfg = f.read()
    for key in ("kernel", "ramdisk"):
        path = cfg.split('\n%s = "' % key, 1)[-1].split('"', 1)[0]
        if not path.startswith(where + "/") or not os.path.exists(path):
            raise Fail("the config's %s %r is not in %s" % (key, path, where))
    if not 0 < size < 40e6:
        raise Fail("%s: not under 40 MB" % detail)
    return detail


def step_ins_boot(ctx):
    """The toolstack attaches the device as soon as the INS domain exists; the INS daemon,
    once up, finds it and advertises (InitWait): that is "serving"."""
    bb = ctx.backbone
    try:
        t_xl, t0 = bb.create_ins()
        t_serve = bb.wait_serving(t0)
    except Fail as e:
        bb.error = str(e)
        raise
    finally:
        ins_console()
    return "INS dom%d: xl create %.1f s, serving %.1f s after xl create%s" % (
        bb.ins, t_xl, t_serve, "" if t_serve <= 10 else " (goal 10 s: missed)")


def step_mwcommsd(ctx):
    """mwcommsd starts after the INS (the INS-first order; ins-restart does mwcommsd first)."""
    bb = need_backbone(ctx, connected=False)
    if bb.ins is None:
        raise Fail("no INS domain")
    from pyxs import Client
    bb.start_mwcommsd()
    try:
        t = bb.wait_connected()
    except Fail:
        bb.mwcommsd_log()
        bb.error = "mwcommsd and the INS did not connect"
        raise
    with Client(unix_socket_path=XS_SOCKET) as c:
        fperm = [p.decode() for p in c.get_perms(bb.FRONT.encode())]
        bperm = [p.decode() for p in c.get_perms(bb.back().encode())]
    if fperm != ["n0", "r%d" % bb.ins] or bperm != ["n%d" % bb.ins, "r0"]:
        raise Fail("permissions: frontend %s, backend %s" % (fperm, bperm))
    with open("/sys/module/xen_gntalloc/parameters/limit") as f:
        limit = f.read().strip()
    area = xs_read(bb.FRONT + "/area-pages")
    status = wait_for("`mwctl status` showing the device Connected and mwcommsd's link attached",
                      mwctl_status_ok, 30, interval=1)
    return "Connected %.1f s after mwcommsd started; area %s pages (gntalloc limit now %s); " \
           "perms frontend %s, backend %s; mwctl status: %s" % (t, area, limit, fperm, bperm, status)


def mwctl_status_ok():
    """`mwctl status --json` (dom0: XenStore and mwcommsd's control socket) says the device
    is Connected on both sides and mwcommsd's INS link is attached; @return a summary or None"""
    import json
    rc, out = mwctl("status", "--json")
    try:
        doc = json.loads(out)
    except ValueError:
        log("mwctl status| " + out.strip()[-300:])
        return None
    devs = [d for d in doc.get("xenstore") or []
            if str(d.get("front_state")).lower() == "connected" == str(d.get("back_state")).lower()]
    link = (doc.get("mwcommsd") or {}).get("link")
    if rc != 0 or not devs or link != 1:
        return None
    return "device %s Connected both sides, mwcommsd link attached" % devs[0].get("devid")


def step_e2e_http(ctx):
    bb = need_backbone(ctx)
    bb.servers()
    listening = mwctl_sockets_listen(HTTP_PORT)
    # `mwctl trace` (root: dom0 is) around one more curl: the ring messages on the xen backend
    trace = subprocess.Popen([sys.executable, "-m", "mwcomms.tools.mwctl", "trace", "--type",
                              "connect", "--duration", "10"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    first = trace.stdout.readline()        # "tracing ..." once it listens (or why it cannot)
    bb.shim(["curl", "-sS", "--max-time", "30", "http://127.0.0.1:%d/" % HTTP_PORT], timeout=60)
    try:
        traced, _ = trace.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        trace.kill()
        traced, _ = trace.communicate()
    log("\n".join("mwctl trace| " + l for l in (first + traced).splitlines()[-12:]))
    if "REQ  CONNECT" not in traced or "RSP  CONNECT" not in traced:
        raise Fail("mwctl trace --type connect did not show curl's CONNECT both ways")
    out = []
    for url in ("http://127.0.0.1:%d/" % HTTP_PORT, "http://%s:%d/" % (INS_NAME, HTTP_PORT)):
        rc, text = bb.shim(["curl", "-sS", "--max-time", "30", url], timeout=60)
        if rc != 0 or text != "hello from a server under the shim\n":
            raise Fail("curl %s under the shim: rc=%d %r" % (url, rc, text[-300:]))
        out.append(url)
    # the control: dom0's own stack has no such server (not even loopback up)
    rc, text = sh(["curl", "-sS", "--max-time", "10", "http://127.0.0.1:%d/" % HTTP_PORT])
    if rc == 0:
        raise Fail("curl without the shim reached the server: it is not in the INS")
    return "curl under the shim got the greeting from %s; without the shim: rc=%d (%s); " \
           "mwctl sockets: %s; mwctl trace: CONNECT both ways" % (
               " and ".join(out), rc, text.strip()[-80:], listening)


def mwctl_sockets_listen(port):
    """`mwctl sockets` (logged) must list the server's listening socket on `port`."""
    import json
    rc, text = mwctl("sockets")
    log("\n".join("mwctl sockets| " + l for l in text.splitlines()[-12:]))
    rc, out = mwctl("sockets", "--json", "--state", "listen")
    try:
        socks = json.loads(out)
    except ValueError:
        raise Fail("mwctl sockets --json rc=%d: %s" % (rc, out.strip()[-200:])) from None
    mine = [d for d in socks if (d.get("local") or {}).get("port") == port]
    if rc != 0 or not mine:
        raise Fail("mwctl sockets --state listen does not list port %d: %s" % (port, out.strip()[-300:]))
    return "listener %s:%d (pid %s)" % (mine[0]["local"].get("host"), port, mine[0].get("pid"))


def step_e2e_udp(ctx):
    bb = need_backbone(ctx)
    rc, text = bb.shim([sys.executable, NETCASES, "udp-client", str(UDP_PORT), "50"], timeout=120)
    if rc != 0 or not text.startswith("OK"):
        raise Fail(text.strip()[-300:])
    return text.strip()[3:]


def step_e2e_dns(ctx):
    bb = need_backbone(ctx)
    rc, text = bb.shim([sys.executable, NETCASES, "resolve", INS_NAME], timeout=60)
    if rc != 0 or text.strip() != "OK 127.0.1.1":
        raise Fail("getaddrinfo(%s) under the shim: %s" % (INS_NAME, text.strip()[-300:]))
    rc2, native = sh([sys.executable, NETCASES, "resolve", INS_NAME], timeout=60)
    if rc2 == 0:
        raise Fail("dom0 resolves %s by itself (%s): the test proves nothing" % (INS_NAME, native.strip()))
    return "%s -> 127.0.1.1 through the INS's resolver (natively: %s)" % (INS_NAME, native.strip()[:80])


def step_e2e_100mb(ctx):
    bb = need_backbone(ctx)
    want = config("digest_100mb", "")
    t0 = time.monotonic()
    cmd = ("LD_PRELOAD=%s MWCOMMS_SOCKET=%s curl -sS --max-time 400 http://127.0.0.1:%d/bytes/%d"
           " | %s %s sha256" % (bb.env()["LD_PRELOAD"], CONTROL, HTTP_PORT, HUNDRED_MB,
                                sys.executable, NETCASES))
    rc, text = sh(cmd, timeout=420)
    took = time.monotonic() - t0
    got = text.strip().split()
    if rc != 0 or got[:1] != ["OK"] or got[2:3] != [str(HUNDRED_MB)]:
        raise Fail("rc=%d: %s" % (rc, text.strip()[-300:]))
    if got[1] != want:
        raise Fail("sha256 %s, the server sent %s" % (got[1], want))
    return "%d bytes in %.1f s (%.1f MB/s), sha256 %s... as sent" % (
        HUNDRED_MB, took, HUNDRED_MB / took / 1e6, want[:16])


def step_ins_restart(ctx):
    """The INS destroyed while a Python client and curl download from it: both fail with an
    error (not a hang, not a clean end); a new socket fails with a clear errno while there is
    no INS; a new INS is created (new domid) and attached: new connections work."""
    bb = need_backbone(ctx)
    old = bb.ins
    stream = bb.spawn([sys.executable, NETCASES, "stream", str(HTTP_PORT)], "streaming")
    curl = subprocess.Popen(["curl", "-sS", "-o", "/dev/null", "--max-time", "120",
                             "http://127.0.0.1:%d/slow/1073741824" % HTTP_PORT],
                            env=bb.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    bb.procs.append(curl)
    time.sleep(2)
    if stream.poll() is not None or curl.poll() is not None:
        raise Fail("a download ended before the INS was destroyed: %s" % stream.stdout.read()[-200:])
    t0 = time.monotonic()
    sh(["xl", "destroy", INS_NAME], check=True, timeout=60)
    try:
        s_out, _ = stream.communicate(timeout=20)
        c_out, _ = curl.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        raise Fail("a client still runs 20 s after xl destroy (hang)") from None
    t_fail = time.monotonic() - t0
    if not s_out.strip().startswith("OK"):
        raise Fail("python client: %s" % s_out.strip()[-200:])
    if curl.returncode == 0:
        raise Fail("curl ended with success after the INS was destroyed")
    rc, out = bb.shim([sys.executable, NETCASES, "socket"], timeout=60)
    down = ([l for l in out.splitlines() if l.startswith("OK ")] or [""])[0]
    if not down:
        raise Fail("while no INS: %s" % out.strip()[-200:])
    bb.stop_servers()
    # the toolstack: a new INS domain, the device detached from the old and attached to it
    # (mwcommsd was running first this time)
    mwctl("detach", "--frontend", 0, "--ins", old)
    t_xl, t1 = bb.create_ins()
    t_serve = bb.wait_serving(t1)
    t_conn = bb.wait_connected()
    bb.servers()
    rc, text = bb.shim(["curl", "-sS", "--max-time", "30", "http://127.0.0.1:%d/" % HTTP_PORT], timeout=60)
    if rc != 0 or "hello" not in text:
        bb.mwcommsd_log()
        raise Fail("curl after the new INS came up: rc=%d %s" % (rc, text.strip()[-200:]))
    return ("INS dom%d destroyed: python client %s; curl rc=%d (%s); clients done %.1f s after "
            "xl destroy; a new connection with no INS: %s; new INS dom%d serving %.1f s after xl "
            "create, Connected %.1f s later; curl works again" % (
                old, s_out.strip()[3:], curl.returncode, c_out.strip()[-70:], t_fail,
                down.strip()[3:], bb.ins, t_serve, t_conn))


def step_ins_shutdown(ctx):
    bb = need_backbone(ctx)
    have = mwctl("-h")[1]
    for cmd in (("status",), ("xenstore", bb.FRONT)):
        if cmd[0] in have:
            rc, out = mwctl(*cmd)
            log("\n".join("mwctl %s| %s" % (cmd[0], l) for l in out.splitlines()[-25:]))
    bb.stop_servers()
    if bb.ins is None:
        raise Fail("no INS domain to shut down")
    rc, out = sh(["xl", "shutdown", "-w", INS_NAME], timeout=90)
    if rc != 0:
        raise Fail("xl shutdown -w rc=%d: %s" % (rc, out.strip()[-200:]))
    bb.ins = None
    # the INS left cleanly: its daemon closed the device (Closed), mwcommsd followed
    front = xs_state(bb.FRONT)
    bb.mwcommsd.terminate()
    try:
        rc = bb.mwcommsd.wait(20)
    except subprocess.TimeoutExpired:
        raise Fail("mwcommsd still running 20 s after SIGTERM") from None
    with open("/tmp/mwcommsd.log") as f:
        text = f.read()
    if rc != 0 or "Traceback" in text:
        bb.mwcommsd_log()
        raise Fail("mwcommsd exit status %d%s" % (rc, ", a traceback in its log" if "Traceback" in text else ""))
    if front != 6:
        raise Fail("the frontend is in state %d after the INS shut down, not Closed (6)" % front)
    return "INS shut down, frontend Closed; mwcommsd exited 0 on SIGTERM"


STEPS = [
    ("dom0-import", step_dom0_import),
    ("xenstore-pyxs", step_xenstore_pyxs),
    ("domu-boot", step_domu_boot),
    ("plat-python", step_plat_python),
    ("plat-self", step_plat_self),
    ("plat-domu-offers", step_plat_domu_offers),
    ("plat-dom0-offers", step_plat_dom0_offers),
    ("ring-stress", step_ring_stress),
    ("xsconform", step_xsconform),
    ("xenbus-handshake", step_xenbus_handshake),
    ("integrity", step_integrity),
    ("domu-shutdown", step_domu_shutdown),
    ("ins-image", step_ins_image),
    ("ins-boot", step_ins_boot),
    ("mwcommsd", step_mwcommsd),
    ("e2e-http", step_e2e_http),
    ("e2e-udp", step_e2e_udp),
    ("e2e-dns", step_e2e_dns),
    ("e2e-100mb", step_e2e_100mb),
    ("ins-restart", step_ins_restart),
    ("ins-shutdown", step_ins_shutdown),
]


def selected():
    """The steps named by xent.steps= on the kernel command line, else all of them."""
    with open("/proc/cmdline") as f:
        for word in f.read().split():
            if word.startswith("xent.steps="):
                return set(word.split("=", 1)[1].split(","))
    return set(NAMES)


def main():
    want = selected()
    if "dom0-python" in want:
        emit("PASS", "dom0-python", "Python %s at %s, dom0 uptime %.1f s" % (
            sys.version.split()[0], sys.executable, uptime()))
    ctx = Context()
    for name, fn in STEPS:
        if name not in want:
            continue
        t0 = time.monotonic()
        try:
            detail = fn(ctx)
            status = "PASS"
        except Skip as e:
            status, detail = "SKIP", str(e)
        except Fail as e:
            status, detail = "FAIL", str(e)
        except Exception as e:   # a bug in the step or in the code under test: still a result
            status, detail = "FAIL", "%s: %s" % (type(e).__name__, e)
        emit(status, name, "%s (%.1f s)" % (detail, time.monotonic() - t0))
    if ctx.domu.domid is not None:   # still there: a step failed, or domu-shutdown did not run
        sh(["xl", "destroy", DOMU_NAME])
    ctx.backbone.close()
    print("XENT-BOOT steps-end dom0 uptime %.1f s" % uptime(), flush=True)


if __name__ == "__main__":
    main()
