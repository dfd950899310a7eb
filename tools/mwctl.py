"""mwctl: see into the mwcomms backbone, and the toolstack step that attaches its two ends.

    mwctl [--dir D | --xenstore SOCKET --control SOCKET] COMMAND [--json] ...

    status                                each frontend and INS: handshake, version, features,
                                          rings, event channel counts, uptime
    sockets [--pid P] [--state S] [--addr A] [-p] [-a]   the forwarded sockets, as ss
    xenstore [PATH]                       the mwcomms part of the tree, states decoded
    stats [--watch S]                     counters: calls, errors by errno, bytes, reconnects
    trace [--sock H] [--pid P] [--type T] [--pcap FILE|-]   ring messages as they pass, decoded
    attach --frontend DOMID --ins DOMID   create the device's XenStore nodes (dom0)
    detach --frontend DOMID --ins DOMID   remove them
    dissector                             the Lua dissector of trace --pcap files, for tshark

The data: XenStore (pyxs), mwcommsd's introspection ops on its control socket
(mwcomms/include/mwcomms/introspect.h: INFO, SOCKETS, TRACE) and the INS's stats file.

Finding the backbone: options given on the command line win; else the run directory of
`mwcomms up` (--dir, default as mwcomms's own) when its state.json exists (sim: the
xenstored socket, mwcommsd's control socket, the daemons' stats files); else a Xen host:
the real xenstored (dom0's socket, else a domU's xenbus device) and the control socket
/run/mwcomms/control.sock.

Exit codes (stable, docs/mwctl.md): 0 done; 1 the operation failed; 2 usage; 3 the backbone
(XenStore, mwcommsd) cannot be reached; 4 permission denied; 5 no such object (path, device).
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import socket
import stat
import struct
import sys
import time
from dataclasses import dataclass, field

__all__ = ["main", "Backbone", "find_backbone", "Control", "MwctlError"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_DENIED, EXIT_NOT_FOUND = range(6)
DEFAULT_CONTROL = "/run/mwcomms/control.sock"   # MWL_DEFAULT_SOCKET of local.h
XENBUS_DEV = "/dev/xen/xenbus"                   # a domU's way to XenStore
LINKTYPE_MWCOMMS = 147                           # LINKTYPE_USER0: see tools/mwcomms.lua


class MwctlError(Exception):
    """A failure to report in one line, with its exit code."""

    def __init__(self, msg: str, code: int = EXIT_FAILED):
        super().__init__(msg)
        self.code = code


def _os_error(exc: OSError, what: str) -> MwctlError:
    """The one place where an OSError becomes an exit code."""
    code = {errno.EACCES: EXIT_DENIED, errno.EPERM: EXIT_DENIED, errno.ENOENT: EXIT_NOT_FOUND,
            errno.ECONNREFUSED: EXIT_UNREACHABLE}.get(exc.errno, EXIT_FAILED)
    reason = exc.strerror or str(exc)
    return MwctlError(f"{what}: {reason}", code)


# ---- finding the backbone -----------------------------------------------------------------

@dataclass
class Backbone:
    """Where a backbone's parts are. None: the platform's default (Xen)."""

    backend: str = "xen"
    xenstore: str | None = None          # xenstored Unix socket; None: pyxs's default
    control: str = DEFAULT_CONTROL       # mwcommsd's control socket
    stats: dict = field(default_factory=dict)   # {"mwcommsd": path, "ins": path}
    run_dir: str | None = None

    def xs(self):
        """A connected pyxs client, or MwctlError(EXIT_UNREACHABLE). Without a path: dom0's
        xenstored socket when there is one, else a domU's xenbus device."""
        from mwcomms.xen import xenbus
        where = self.xenstore
        if where is None:
            sock = os.environ.get("XENSTORED_PATH") or os.path.join(
                os.environ.get("XENSTORED_RUNDIR", "/var/run/xenstored"), "socket")
            where = sock if os.path.exists(sock) or not os.path.exists(XENBUS_DEV) else XENBUS_DEV
        try:
            if stat.S_ISCHR(os.stat(where).st_mode):
                return xenbus.connect_xenstore(xenbus_path=where)
            return xenbus.connect_xenstore(where)
        except Exception as exc:   # pyxs raises its own types, OSError, or ValueError
            raise MwctlError(f"cannot reach XenStore at {where}: {exc}", EXIT_UNREACHABLE) from None


def default_run_dir() -> str:
    from mwcomms.cli import default_run_dir as d
    return d()


def find_backbone(args) -> Backbone:
    """The backbone named by the command line, else by the run directory, else Xen's."""
    bb = Backbone()
    state_path = os.path.join(args.dir, "state.json")
    try:
        with open(state_path) as f:
            state = json.load(f)
    except FileNotFoundError:
        state = None
    except OSError as exc:
        raise _os_error(exc, f"cannot read {state_path}") from None
    except ValueError as exc:
        raise MwctlError(f"cannot read {state_path}: {exc}", EXIT_UNREACHABLE) from None
    if state:
        bb.backend = state.get("backend", "sim")
        bb.xenstore = state.get("xenstore")
        bb.control = state.get("control", bb.control)
        bb.stats = dict(state.get("stats") or {})
        bb.run_dir = args.dir
    if getattr(args, "xenstore", None):
        bb.xenstore = args.xenstore
    if getattr(args, "control", None):
        bb.control = args.control
    return bb


# ---- output -------------------------------------------------------------------------------

def _emit_json(doc) -> None:
    json.dump(doc, sys.stdout, indent=1, sort_keys=False)
    sys.stdout.write("\n")


# ---- mwcommsd's introspection ops (mwcomms/include/mwcomms/introspect.h) --------------------

_HDR = struct.Struct("=IHHIi")
OP_INFO, OP_SOCKETS, OP_TRACE = 64, 65, 66
# struct mwl_info, one struct per block (introspect.h), read one after the other
_INFO_HEAD = struct.Struct("=IIiIQQQ16I4Q10Q")          # version .. dgrams_dropped
_INFO_CALLS = struct.Struct("=32Q")                     # calls_by_op[MWL_INFO_OPS]
_INFO_CMDS = struct.Struct("=16Q")                      # ins_by_cmd[MWL_INFO_CMDS]
_ERRTAB_HEAD = struct.Struct("=QII")                    # *_other, n*, pad
_ERRNO_COUNT = struct.Struct("=iIQ")                    # struct mwl_errno_count
_INFO_ERRNOS = 48                                       # MWL_INFO_ERRNOS
_INFO_WHY = struct.Struct("=200s")
_INFO_SIZE = (_INFO_HEAD.size + _INFO_CALLS.size + _INFO_CMDS.size +
              2 * (_ERRTAB_HEAD.size + _INFO_ERRNOS * _ERRNO_COUNT.size) + _INFO_WHY.size)
_INFO_FIELDS = ("version", "features", "link", "pid", "now_ns", "started_ns", "attached_ns",
                "port", "cmd_slots", "cmd_outstanding", "cmd_queued", "fq_len", "fq_used",
                "bq_len", "bq_used", "sock_slots", "slots_used", "data_pages", "data_free",
                "clients", "sockets", "zombies", "tracers", "notifies", "wakeups",
                "trace_records", "trace_dropped", "sockets_total", "bytes_tx", "bytes_rx",
                "calls", "call_errors", "clients_dropped", "ins_requests", "attaches",
                "violations", "dgrams_dropped")
_SOCKINFO = struct.Struct("=QIiQiiiIIIiIIIIIIIIIQQQ32s32s")
_SOCKINFO_FIELDS = ("handle", "uid", "pid", "x_ino", "family", "type", "protocol", "state",
                    "flags", "slot", "error", "tx_size", "tx_used", "rx_size", "rx_used",
                    "p_inq", "p_outq", "queued", "accepts", "pad", "bytes_tx", "bytes_rx",
                    "created_ns", "local", "peer")
_TRACE_REC = struct.Struct("=QHHIQiIII")
assert _INFO_SIZE == 2368 and _SOCKINFO.size == 176 and _TRACE_REC.size == 40

LOCAL_OPS = {64: "INFO", 65: "SOCKETS", 66: "TRACE", 1: "HELLO", 2: "SOCKET", 3: "IDENTIFY", 4: "CONNECT", 5: "BIND", 6: "LISTEN",
             7: "ACCEPT", 8: "GETSOCKNAME", 9: "GETPEERNAME", 10: "GETSOCKOPT",
             11: "SETSOCKOPT", 12: "SHUTDOWN", 13: "CLOSE", 14: "GETADDRINFO",
             15: "GETNAMEINFO", 16: "IOCTL", 17: "STATUS"}
FEATURES = {0x1: "ipv6", 0x2: "udp", 0x4: "dns"}
SK_STATES = {1: "OPENING", 2: "OPEN", 3: "CONNECTING", 4: "ESTAB", 5: "LISTEN", 6: "QUEUED",
             7: "CLOSING", 8: "CLOSED"}
SK_FLAGS = {0x1: "app-shut-wr", 0x2: "app-closed", 0x4: "rx-ended", 0x8: "shut-wr-sent",
            0x10: "ins-lost", 0x20: "tx-full", 0x40: "app-not-reading", 0x80: "pre-accept"}
TR_KINDS = {1: "REQ", 2: "RSP", 3: "EV", 4: "EV", 5: "DATA", 6: "DATA"}
TR_TO_INS = (1, 3, 5)
LINK = {1: "attached", 0: "detached", -errno.EPROTO: "detached (protocol violation)",
        -errno.EPIPE: "detached (INS gone)"}


def _errname(err: int) -> str:
    return errno.errorcode.get(-err, str(err)) if err < 0 else str(err)


def _addr(raw: bytes) -> dict | None:
    from mwcomms.tools import codec
    try:
        sa = codec.SockAddr.decode(raw)
    except ValueError:
        return {"raw": raw.hex()}
    if sa.host is None:
        return None
    return {"host": str(sa.host), "port": sa.port}


def _addr_text(a: dict | None) -> str:
    if not a:
        return "*:*"
    if "raw" in a:
        return "?"
    host = f"[{a['host']}]" if ":" in a["host"] else a["host"]
    return f"{host}:{a['port'] or '*'}"


class Control:
    """A connection to mwcommsd's control socket, for the introspection ops."""

    def __init__(self, path: str):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.seq = 0
        try:
            self.sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            self.sock.close()
            raise MwctlError(f"mwcommsd is not running here (no control socket at {path})",
                             EXIT_UNREACHABLE) from None
        except PermissionError:
            self.sock.close()
            raise MwctlError(f"permission denied on {path}", EXIT_DENIED) from None
        except OSError as exc:
            self.sock.close()
            raise _os_error(exc, f"control socket {path}") from None

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Control":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def call(self, op: int, body: bytes = b"", timeout: float = 10.0) -> bytes:
        """One request, its answer's body. @raise MwctlError (an error answer: its errno)"""
        self.seq += 1
        self.sock.settimeout(timeout)
        try:
            self.sock.send(_HDR.pack(_HDR.size + len(body), op, 0, self.seq, 0) + body)
            while True:
                raw = self.sock.recv(1 << 17)
                if not raw:
                    raise MwctlError("mwcommsd closed the connection", EXIT_UNREACHABLE)
                length, rop, _flags, seq, ret = _HDR.unpack_from(raw)
                if seq == self.seq and rop == op:
                    break
        except socket.timeout:
            raise MwctlError("mwcommsd did not answer", EXIT_UNREACHABLE) from None
        except OSError as exc:
            raise _os_error(exc, "control socket") from None
        if ret < 0:
            if -ret == errno.EOPNOTSUPP:
                raise MwctlError("this mwcommsd has no introspection ops (older version)")
            raise _os_error(OSError(-ret, os.strerror(-ret)), LOCAL_OPS.get(op, f"op {op}"))
        return raw[_HDR.size:length]

    def info(self) -> dict:
        from mwcomms.tools import codec
        raw = self.call(OP_INFO)
        if len(raw) < _INFO_SIZE:
            raise MwctlError(f"INFO answer of {len(raw)} bytes, not {_INFO_SIZE}")
        off = 0

        def take(st: struct.Struct) -> tuple:
            nonlocal off
            v = st.unpack_from(raw, off)
            off += st.size
            return v

        def errno_table() -> dict:
            other, n, _pad = take(_ERRTAB_HEAD)
            pairs = [take(_ERRNO_COUNT) for _ in range(_INFO_ERRNOS)]
            table = {_errname(err): count for err, _p, count in pairs[:min(n, _INFO_ERRNOS)]}
            if other:
                table["other"] = other
            return table

        doc = dict(zip(_INFO_FIELDS, take(_INFO_HEAD)))
        doc["calls_by_op"] = {LOCAL_OPS.get(i, str(i)): n
                              for i, n in enumerate(take(_INFO_CALLS)) if n}
        doc["ins_requests_by_cmd"] = {codec.CMD_NAMES.get(i, str(i)): n
                                      for i, n in enumerate(take(_INFO_CMDS)) if n}
        doc["errors_by_errno"] = errno_table()
        doc["ins_errors_by_errno"] = errno_table()
        doc["why"] = take(_INFO_WHY)[0].split(b"\0", 1)[0].decode("utf-8", "replace")
        doc["link_text"] = LINK.get(doc["link"], str(doc["link"]))
        doc["feature_names"] = [n for b, n in FEATURES.items() if doc["features"] & b]
        doc["ins_up"] = bool(doc["features"] & 0x100)
        return doc

    def sockets(self) -> list[dict]:
        out, start = [], 0
        while True:
            raw = self.call(OP_SOCKETS, struct.pack("=II", start, 0))
            count, nxt = struct.unpack_from("=II", raw)
            for i in range(count):
                v = _SOCKINFO.unpack_from(raw, 8 + i * _SOCKINFO.size)
                d = dict(zip(_SOCKINFO_FIELDS, v))
                del d["pad"]
                d["local"], d["peer"] = _addr(d["local"]), _addr(d["peer"])
                d["state_name"] = SK_STATES.get(d["state"], str(d["state"]))
                d["flag_names"] = [n for b, n in SK_FLAGS.items() if d["flags"] & b]
                d["slot"] = None if d["slot"] == 0xFFFFFFFF else d["slot"]
                d["proto"] = ("tcp" if d["type"] == socket.SOCK_STREAM else "udp") + \
                    ("6" if d["family"] == socket.AF_INET6 else "")
                d["send_q"] = d["p_inq"] + d["tx_used"]
                d["error_name"] = _errname(d["error"]) if d["error"] else None
                out.append(d)
            if not nxt:
                return out
            start = nxt

    def start_trace(self, snaplen: int, kinds: int = 0) -> None:
        """Turn this connection into a trace stream (then read records())."""
        self.call(OP_TRACE, struct.pack("=II", snaplen, kinds))
        self.sock.settimeout(None)

    def records(self):
        """Yield (record dict, record bytes: struct mwl_trace_rec and its payload) until
        mwcommsd ends the stream. @raise TimeoutError when the socket's timeout passes"""
        while True:
            try:
                raw = self.sock.recv(1 << 17)
            except socket.timeout:
                raise TimeoutError from None
            except BlockingIOError:
                raise                # a non-blocking caller has read everything queued
            except OSError as exc:
                raise _os_error(exc, "trace") from None
            if not raw:
                return
            if len(raw) < _HDR.size + _TRACE_REC.size:
                continue
            length, op, _f, seq, _ret = _HDR.unpack_from(raw)
            if op != OP_TRACE:
                continue
            ns, kind, flags, slot, handle, pid, rlen, dropped, _pad = \
                _TRACE_REC.unpack_from(raw, _HDR.size)
            rec = {"seq": seq, "ns": ns, "kind": kind, "flags": flags,
                   "slot": None if slot == 0xFFFFFFFF else slot, "handle": handle, "pid": pid,
                   "len": rlen, "dropped": dropped}
            yield rec, raw[_HDR.size:length]


def _control(bb: Backbone) -> Control:
    return Control(bb.control)


def _proc_comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _socket_holders(inodes: set[int]) -> dict[int, list[int]]:
    """inode -> pids whose fds hold that socket (as ss -p: every process we may look into)."""
    out: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{name}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{name}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                ino = int(link[8:-1])
                if ino in inodes and int(name) not in out.setdefault(ino, []):
                    out[ino].append(int(name))
    return out


_NLMSG = struct.Struct("=IHHII")
_UNIX_DIAG_REQ = struct.Struct("=BBHIII8s")
_UNIX_DIAG_MSG = struct.Struct("=BBBBI8s")
SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, NLM_F_DUMP, NLMSG_DONE, NLMSG_ERROR = 20, 1, 0x300, 3, 2
UDIAG_SHOW_RQLEN, UNIX_DIAG_RQLEN = 0x10, 4


def _unix_rqueues(inodes: set[int]) -> dict[int, int]:
    """inode -> payload bytes waiting in that AF_UNIX socket's receive queue, from sock_diag
    (as `ss -x`; sockets of this network namespace). Empty when the kernel will not say."""
    out: dict[int, int] = {}
    if not inodes:
        return out
    try:
        nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 4)
    except OSError:
        return out
    with nl:
        nl.settimeout(5)
        req = _UNIX_DIAG_REQ.pack(socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, UDIAG_SHOW_RQLEN, b"")
        try:
            nl.send(_NLMSG.pack(_NLMSG.size + len(req), SOCK_DIAG_BY_FAMILY,
                                NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req)
            while True:
                buf = nl.recv(1 << 16)
                off = 0
                while off + _NLMSG.size <= len(buf):
                    length, mtype, _f, _seq, _pid = _NLMSG.unpack_from(buf, off)
                    if mtype in (NLMSG_DONE, NLMSG_ERROR) or length < _NLMSG.size:
                        return out
                    body = buf[off + _NLMSG.size:off + length]
                    _fam, _type, _state, _pad, ino, _ck = _UNIX_DIAG_MSG.unpack_from(body)
                    if ino in inodes:
                        a = _UNIX_DIAG_MSG.size
                        while a + 4 <= len(body):
                            alen, atype = struct.unpack_from("=HH", body, a)
                            if alen < 4:
                                break
                            if atype == UNIX_DIAG_RQLEN and alen >= 12:
                                out[ino] = struct.unpack_from("=I", body, a + 4)[0]
                            a += (alen + 3) & ~3
                    off += (length + 3) & ~3
        except OSError:
            return out


def _proc_uptime(pid: int) -> float | None:
    """Seconds since process `pid` started (from /proc), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as f:
            up = float(f.read().split()[0])
        return max(0.0, up - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, IndexError, ValueError):
        return None


def _read_json(path: str | None) -> dict | None:
    if not path:
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _duration(sec: float | None) -> str:
    if sec is None:
        return "-"
    sec = int(sec)
    d, sec = divmod(sec, 86400)
    h, sec = divmod(sec, 3600)
    m, sec = divmod(sec, 60)
    return (f"{d}d" if d else "") + (f"{h}h" if d or h else "") + f"{m}m{sec:02d}s"


# ---- status -------------------------------------------------------------------------------

def _read_keys(client, path: str | None) -> dict:
    import pyxs
    from mwcomms.xen import xenbus
    if not path:
        return {}
    try:
        return xenbus.read_dir(client, path)
    except (OSError, pyxs.PyXSError):
        return {}


def _device(front, ins, devid, fkeys: dict, bkeys: dict) -> dict:
    """One device, both ends' keys read from the paths the toolstack made (front_path,
    back_path of the domain ids), never from the path keys each domain writes itself (a
    compromised end could point mwctl at another device's keys): those are only compared."""
    from mwcomms.xen import xenbus
    from mwcomms.xen.xenbus import XenbusState
    known = all(isinstance(v, int) for v in (front, ins, devid))
    fp = xenbus.front_path(front, devid) if known else None
    bp = xenbus.back_path(ins, front, devid) if known else None
    suspicious = []
    if fkeys.get("backend") not in (None, bp):
        suspicious.append(f"the frontend's backend key is {fkeys['backend']!r}, not {bp}")
    if bkeys.get("frontend") not in (None, fp):
        suspicious.append(f"the INS's frontend key is {bkeys['frontend']!r}, not {fp}")
    return {"frontend": front, "ins": ins, "devid": devid, "front_path": fp, "back_path": bp,
            "front_state": XenbusState.parse(fkeys.get("state")).name,
            "back_state": XenbusState.parse(bkeys.get("state")).name,
            "front_keys": fkeys, "back_keys": bkeys, "suspicious": suspicious}


def _number(text: str):
    """A domain id or device number from XenStore: an int, else the text as it is (shown,
    never used to build a path)."""
    return int(text) if text.isdigit() and len(text) < 10 else text


def _devices(client) -> list[dict]:
    """Every mwcomms device visible in XenStore, each with both ends' keys."""
    import pyxs
    out = []
    for root in _mwcomms_paths(client):
        dom = int(root.split("/")[3])
        if "/device/" in root:
            try:
                devids = sorted(n.decode() for n in client.list(root.encode()) if n)
            except pyxs.PyXSError:
                continue
            for devid in devids:
                fkeys = _read_keys(client, f"{root}/{devid}")
                if not fkeys:
                    continue
                ins, dev = _number(fkeys.get("backend-id", "")), _number(devid)
                bkeys = (_read_keys(client, f"/local/domain/{ins}/backend/mwcomms/{dom}/{dev}")
                         if isinstance(ins, int) and isinstance(dev, int) else {})
                out.append(_device(dom, ins, dev, fkeys, bkeys))
        else:
            # dom0 or the INS: backend directories, also of frontends we may not read
            try:
                fronts = [n.decode() for n in client.list(root.encode()) if n]
            except pyxs.PyXSError:
                continue
            for front in fronts:
                try:
                    devids = [n.decode() for n in client.list(f"{root}/{front}".encode()) if n]
                except pyxs.PyXSError:
                    continue
                for devid in devids:
                    fr, dev = _number(front), _number(devid)
                    if any((d["frontend"], d["ins"], d["devid"]) == (fr, dom, dev) for d in out):
                        continue
                    bkeys = _read_keys(client, f"{root}/{front}/{devid}")
                    fkeys = (_read_keys(client, f"/local/domain/{fr}/device/mwcomms/{dev}")
                             if isinstance(fr, int) and isinstance(dev, int) else {})
                    out.append(_device(fr, dom, dev, fkeys, bkeys))
    return out


def _status_doc(bb: Backbone) -> dict:
    doc: dict = {"backend": bb.backend, "run_dir": bb.run_dir, "xenstore": None,
                 "mwcommsd": None, "ins": None, "errors": []}
    try:
        client = bb.xs()
    except MwctlError as exc:
        doc["errors"].append(str(exc))
    else:
        try:
            doc["xenstore"] = _devices(client)
        finally:
            client.close()
    try:
        with _control(bb) as ctl:
            info = ctl.info()
            socks = ctl.sockets()
        # the byte rings, summed over the sockets this caller may see
        info["byte_rings"] = {
            "sockets": len(socks),
            "tx_bytes": sum(s["tx_used"] for s in socks),
            "tx_size": sum(s["tx_size"] for s in socks),
            "rx_bytes": sum(s["rx_used"] for s in socks),
            "rx_size": sum(s["rx_size"] for s in socks),
            "tx_full": sum(1 for s in socks if s["flags"] & 0x20),
            "app_not_reading": sum(1 for s in socks if s["flags"] & 0x40)}
        info["uptime_s"] = (info["now_ns"] - info["started_ns"]) / 1e9
        info["attached_for_s"] = ((info["now_ns"] - info["attached_ns"]) / 1e9
                                  if info["link"] == 1 and info["attached_ns"] else None)
        info["control"] = bb.control
        doc["mwcommsd"] = info
    except MwctlError as exc:
        doc["errors"].append(str(exc))
    ins = _read_json(bb.stats.get("ins"))
    if ins is not None:
        pid = _sim_pid(bb, "ins")
        ins["uptime_s"] = _proc_uptime(pid) if pid else None
        ins["stats_age_s"] = max(0.0, time.time() - ins.get("time", time.time()))
        doc["ins"] = ins
    return doc


def _sim_pid(bb: Backbone, name: str) -> int | None:
    state = _read_json(os.path.join(bb.run_dir, "state.json")) if bb.run_dir else None
    return (state or {}).get("pids", {}).get(name)


def cmd_status(args, bb: Backbone) -> int:
    doc = _status_doc(bb)
    if doc["xenstore"] is None and doc["mwcommsd"] is None:
        raise MwctlError("; ".join(doc["errors"]), EXIT_UNREACHABLE)
    if args.json:
        _emit_json(doc)
        return EXIT_OK
    for dev in doc["xenstore"] or []:
        fk, bk = dev["front_keys"], dev["back_keys"]
        print(f"device {dev['devid']}: frontend dom{dev['frontend']} "
              f"{dev['front_state'].capitalize()}, INS dom{dev['ins']} "
              f"{dev['back_state'].capitalize()}")
        print(f"  protocol version {fk.get('version', '-')} (INS offers "
              f"{bk.get('versions', '-')}); features {fk.get('features', '-') or '-'} "
              f"(INS offers {bk.get('features', '-') or '-'})")
        print(f"  event channel {fk.get('event-channel', '-')}; area "
              f"{fk.get('area-pages', fk.get('nr-pages', '-'))} pages; "
              f"INS limits: {bk.get('max-area-pages', '-')} pages, "
              f"{bk.get('max-sock-slots', '-')} socket slots")
        for side, keys in (("frontend", fk), ("INS", bk)):
            if keys.get("error"):
                print(f"  {side} error: {keys['error']}")
        for what in dev["suspicious"]:
            print(f"  suspicious: {what}")
    if doc["xenstore"] == []:
        print("no mwcomms device in XenStore (`mwctl attach --frontend F --ins I`)")
    info = doc["mwcommsd"]
    if info:
        print(f"mwcommsd pid {info['pid']}: up {_duration(info['uptime_s'])}, INS link "
              f"{info['link_text']}"
              + (f" for {_duration(info['attached_for_s'])}" if info["attached_for_s"] else "")
              + f", local protocol v{info['version']}, features "
              f"{' '.join(info['feature_names']) or '-'}")
        if info["why"]:
            print(f"  last detach: {info['why']}")
        if info["link"] == 1:
            print(f"  command ring {info['cmd_outstanding']}/{info['cmd_slots']} in flight, "
                  f"{info['cmd_queued']} queued; events to INS {info['fq_used']}/{info['fq_len']}, "
                  f"from INS {info['bq_used']}/{info['bq_len']}")
            print(f"  socket slots {info['slots_used']}/{info['sock_slots']}; data area "
                  f"{info['data_pages'] - info['data_free']}/{info['data_pages']} pages used")
            br = info["byte_rings"]
            print(f"  byte rings: {br['tx_bytes']} B to the INS (of {br['tx_size']}), "
                  f"{br['rx_bytes']} B from it (of {br['rx_size']}); {br['tx_full']} full, "
                  f"{br['app_not_reading']} waiting for their application")
        print(f"  event channel: {info['notifies']} notifications sent, {info['wakeups']} "
              f"received; {info['attaches']} attaches, {info['violations']} violations")
        print(f"  {info['clients']} clients, {info['sockets']} sockets "
              f"({info['zombies']} ended), {info['sockets_total']} since start; "
              f"{info['tracers']} tracers")
    ins = doc["ins"]
    if ins:
        for path, dev in ins.get("devices", {}).items():
            print(f"INS dom{ins.get('domid')} (up {_duration(ins.get('uptime_s'))}): frontend "
                  f"dom{dev.get('front')} {dev.get('state', '?').capitalize()}, "
                  f"{dev.get('sockets', 0)} sockets, tx {dev.get('tx_bytes', 0)} B, rx "
                  f"{dev.get('rx_bytes', 0)} B, {dev.get('proto_errors', 0)} protocol errors"
                  + (f" ({dev['why']})" if dev.get("why") else "")
                  + (f" [counters {ins['stats_age_s']:.0f} s old: is the INS running?]"
                     if ins.get("stats_age_s", 0) > 5 else ""))
    for err in doc["errors"]:
        print(f"({err})")
    return EXIT_OK


# ---- sockets ------------------------------------------------------------------------------

def _addr_match(pattern: str, a: dict | None) -> bool:
    """host, :port, host:port or [v6]:port against an address."""
    if not a or "raw" in a:
        return False
    host, port = pattern, None
    if pattern.startswith("["):
        host, _, rest = pattern[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif pattern.count(":") == 1:
        host, port = pattern.split(":")
    if host and host not in ("*", a["host"]):
        return False
    return port in (None, "", "*") or str(a["port"]) == port


def _state_match(want: str, d: dict) -> bool:
    aliases = {"established": "ESTAB", "connected": "ESTAB", "listening": "LISTEN",
               "ended": "CLOSED"}
    return d["state_name"] == aliases.get(want.lower(), want.upper())


def cmd_sockets(args, bb: Backbone) -> int:
    with _control(bb) as ctl:
        socks = ctl.sockets()
    if not args.all:
        # sockets ready for a listener's next connection, and ended ones mwcommsd remembers
        # for STATUS, are not the application's sockets now (shown with --all / --state)
        socks = [d for d in socks if not d["flags"] & 0x80 and
                 (args.state or d["state_name"] != "CLOSED")]
    if args.pid is not None:
        socks = [d for d in socks if d["pid"] == args.pid]
    if args.state:
        socks = [d for d in socks if _state_match(args.state, d)]
    if args.addr:
        socks = [d for d in socks if _addr_match(args.addr, d["local"]) or
                 _addr_match(args.addr, d["peer"])]
    holders = _socket_holders({d["x_ino"] for d in socks}) if args.processes else {}
    waiting = _unix_rqueues({d["x_ino"] for d in socks})
    for d in socks:
        # Recv-Q: in the rx ring + in the application's socket (X), as the kernel counts it;
        # without that (another namespace), what P holds for it in kernel memory
        d["x_rqueue"] = waiting.get(d["x_ino"])
        d["recv_q"] = d["rx_used"] + (d["x_rqueue"] if d["x_rqueue"] is not None else
                                      d["p_outq"])
        d["command"] = _proc_comm(d["pid"]) if d["pid"] > 0 else ""
        d["handle_hex"] = f"{d['handle']:#x}"
        if args.processes:
            d["holders"] = [{"pid": p, "command": _proc_comm(p)}
                            for p in holders.get(d["x_ino"], [])]
    if args.json:
        _emit_json(socks)
        return EXIT_OK
    rows = [("Proto", "State", "Recv-Q", "Send-Q", "Local Address:Port", "Peer Address:Port",
             "Bytes-In", "Bytes-Out", "Slot", "Handle", "Process")]
    for d in socks:
        proc = f"{d['command'] or '?'},pid={d['pid']}" if d["pid"] > 0 else "-"
        if args.processes:
            proc = ",".join(f'("{h["command"]}",pid={h["pid"]})' for h in d["holders"]) or "-"
        rows.append((d["proto"], d["state_name"] + (f"({d['error_name']})" if d["error"] else ""),
                     str(d["recv_q"]), str(d["send_q"]), _addr_text(d["local"]),
                     _addr_text(d["peer"]), str(d["bytes_rx"]), str(d["bytes_tx"]),
                     "-" if d["slot"] is None else str(d["slot"]), d["handle_hex"], proc))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1])
    return EXIT_OK


# ---- stats --------------------------------------------------------------------------------

def _stats_doc(bb: Backbone) -> dict:
    doc: dict = {"time": time.time(), "mwcommsd": None, "ins": None}
    try:
        with _control(bb) as ctl:
            info = ctl.info()
        doc["mwcommsd"] = {k: info[k] for k in (
            "calls", "call_errors", "calls_by_op", "errors_by_errno", "ins_errors_by_errno",
            "bytes_tx", "bytes_rx",
            "ins_requests", "ins_requests_by_cmd", "violations", "attaches", "clients_dropped",
            "dgrams_dropped", "sockets", "sockets_total", "notifies", "wakeups",
            "trace_records", "trace_dropped")}
        doc["mwcommsd"]["reconnects"] = max(0, info["attaches"] - 1)
        doc["mwcommsd"]["source"] = "control socket"
    except MwctlError as exc:
        fallback = _read_json(bb.stats.get("mwcommsd"))
        if fallback is None:
            doc["mwcommsd_error"] = str(exc)
        else:
            fallback["reconnects"] = max(0, fallback.get("attaches", 0) - 1)
            fallback["source"] = bb.stats["mwcommsd"]
            doc["mwcommsd"] = fallback
    ins = _read_json(bb.stats.get("ins"))
    if ins is not None:
        doc["ins"] = ins
    if doc["mwcommsd"] is None and doc["ins"] is None:
        raise MwctlError(doc.get("mwcommsd_error", "no counters found"), EXIT_UNREACHABLE)
    return doc


def _print_counts(title: str, counts: dict, prev: dict | None) -> None:
    if not counts:
        return
    parts = []
    for k, v in sorted(counts.items(), key=lambda kv: -kv[1]):
        delta = f" (+{v - prev.get(k, 0)})" if prev is not None and v != prev.get(k, 0) else ""
        parts.append(f"{k} {v}{delta}")
    print(f"  {title}: " + ", ".join(parts))


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _print_stats(doc: dict, prev: dict | None) -> None:
    m = doc["mwcommsd"]
    pm = (prev or {}).get("mwcommsd") or {}

    def d(key, rate=False):
        if prev is None or key not in pm:
            return ""
        if m[key] == pm[key]:
            return ""
        delta = m[key] - pm[key]
        span = doc["time"] - prev["time"]
        per_s = f", {_bytes(delta / span)}/s" if rate and span > 0 else ""
        return f" (+{delta}{per_s})"

    stamp = time.strftime("%H:%M:%S", time.localtime(doc["time"]))
    if m:
        print(f"{stamp} mwcommsd: calls {m.get('calls', 0)}{d('calls')}, errors "
              f"{m.get('call_errors', 0)}{d('call_errors')}; bytes out {m.get('bytes_tx', 0)}"
              f"{d('bytes_tx', True)}, in {m.get('bytes_rx', 0)}{d('bytes_rx', True)}; INS requests "
              f"{m.get('ins_requests', 0)}{d('ins_requests')}; protocol errors "
              f"{m.get('violations', 0)}; reconnects {m.get('reconnects', 0)}; dropped clients "
              f"{m.get('clients_dropped', 0)}, datagrams {m.get('dgrams_dropped', 0)}")
        _print_counts("calls by type", m.get("calls_by_op", {}),
                      pm.get("calls_by_op") if prev else None)
        _print_counts("errors by errno", m.get("errors_by_errno", {}),
                      pm.get("errors_by_errno") if prev else None)
        _print_counts("INS requests by command", m.get("ins_requests_by_cmd", {}),
                      pm.get("ins_requests_by_cmd") if prev else None)
        _print_counts("INS answers by errno", m.get("ins_errors_by_errno", {}),
                      pm.get("ins_errors_by_errno") if prev else None)
    elif doc.get("mwcommsd_error"):
        print(f"{stamp} mwcommsd: ({doc['mwcommsd_error']})")
    ins = doc.get("ins")
    if ins:
        for path, dev in ins.get("devices", {}).items():
            print(f"{stamp} INS dom{ins.get('domid')} <- frontend dom{dev.get('front')}: "
                  f"tx {dev.get('tx_bytes', 0)} B, rx {dev.get('rx_bytes', 0)} B, "
                  f"{dev.get('sockets', 0)} sockets, protocol errors "
                  f"{dev.get('proto_errors', 0)}")
            _print_counts("requests by command", dev.get("requests", {}), None)


def cmd_stats(args, bb: Backbone) -> int:
    prev = None
    n = 0
    while True:
        doc = _stats_doc(bb)
        if args.json:
            print(json.dumps(doc), flush=True)
        else:
            _print_stats(doc, prev)
            sys.stdout.flush()
        n += 1
        if not args.watch or (args.count and n >= args.count):
            return EXIT_OK
        prev = doc
        time.sleep(args.watch)


# ---- trace --------------------------------------------------------------------------------

def _fmt_value(v) -> str:
    from mwcomms.tools import codec
    if isinstance(v, codec.SockAddr):
        return _addr_text(None if v.host is None else {"host": str(v.host), "port": v.port})
    if isinstance(v, codec.Rings):
        return f"tx@{v.tx_off:#x}/{1 << v.tx_order},rx@{v.rx_off:#x}/{1 << v.rx_order}"
    if isinstance(v, bytes):
        return v.hex() if len(v) <= 16 else v[:16].hex() + "..."
    if hasattr(v, "__dataclass_fields__"):
        return "{" + " ".join(f"{k}={_fmt_value(getattr(v, k))}"
                              for k in v.__dataclass_fields__) + "}"
    return str(v)


def _json_value(v):
    """A decoded field for JSON: addresses as "host:port", bytes as hex, numbers as numbers."""
    from mwcomms.tools import codec
    if isinstance(v, (codec.SockAddr, codec.Rings)):
        return _fmt_value(v)
    if isinstance(v, bytes):
        return v.hex()
    if hasattr(v, "__dataclass_fields__"):
        return {k: _json_value(getattr(v, k)) for k in v.__dataclass_fields__}
    return v


def _decode(rec: dict, payload: bytes) -> dict:
    """The record's message, decoded with the codec: {"what": text, "msg": json-able}."""
    from mwcomms.tools import codec
    kind, body = rec["kind"], payload[_TRACE_REC.size:]
    out: dict = {"dir": "->INS" if kind in TR_TO_INS else "<-INS",
                 "kind": TR_KINDS.get(kind, str(kind))}
    try:
        if kind in (1, 2):
            msg = (codec.decode_request if kind == 1 else codec.decode_response)(body[:128])
            cmd = codec.CMD_NAMES.get(getattr(msg, "cmd", 0), str(getattr(msg, "cmd", "?")))
            fields = {k: getattr(msg, k) for k in msg.__dataclass_fields__}
            out["cmd"] = cmd
            out["msg"] = {k: _json_value(v) for k, v in fields.items()}
            if kind == 2 and fields["ret"] < 0:
                fields["ret"] = f"{fields['ret']} ({_errname(fields['ret'])})"
                out["msg"]["errno"] = _errname(msg.ret)
            out["text"] = f"{cmd} " + " ".join(f"{k}={_fmt_value(v)}" for k, v in fields.items()
                                               if k not in ("cmd",) and v is not None)
        elif kind in (3, 4):
            ev = codec.decode_event(body[:16], from_ins=kind == 4)
            name = {codec.EV_DATA: "DATA", codec.EV_SPACE: "SPACE", codec.EV_STATE: "STATE"}[ev.type]
            out["event"] = name
            out["text"] = f"{name} sock={ev.sock} arg={ev.arg}"
            out["msg"] = {"sock": ev.sock, "type": name, "arg": ev.arg}
        elif kind in (5, 6):
            addr = _addr(body[:32])
            data = body[32:]
            shown = data.decode("latin-1").encode("unicode_escape").decode("ascii")
            if len(shown) > 80:
                shown = shown[:80] + "..."
            trunc = "" if len(data) == rec["len"] else f" (first {len(data)})"
            out["text"] = (f"sock={rec['slot']} len={rec['len']}{trunc}"
                           + (f" addr={_addr_text(addr)}" if addr else "") + f' "{shown}"')
            out["msg"] = {"len": rec["len"], "addr": addr, "data": data.hex()}
        else:                   # a newer mwcommsd's record kind
            out["text"] = f"record kind {kind}: {body[:64].hex()}"
            out["msg"] = {"raw": body.hex()}
    except ValueError as exc:   # codec.ProtocolError: what the INS would have refused
        out["text"] = f"undecodable ({exc}): {body[:128].hex()}"
        out["msg"] = {"error": str(exc), "raw": body[:128].hex()}
    return out


def _type_match(types: set[str], rec: dict, dec: dict) -> bool:
    names = {dec["kind"].lower()}
    if dec["kind"] == "EV":
        names.add("event")
        names.add(dec.get("event", "").lower())
    if dec.get("cmd"):
        names.add(dec["cmd"].lower())
    return bool(names & types)


def _parse_handle(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise MwctlError(f"--sock: not a handle: {text!r} (as `mwctl sockets` shows)",
                         EXIT_USAGE) from None


def _stop_on_signals() -> None:
    """SIGINT and SIGTERM end a trace cleanly (summary printed, pcap file complete), also
    when started in the background by a shell, which ignores SIGINT for it."""
    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


def cmd_trace(args, bb: Backbone) -> int:
    from . import _pcap
    _stop_on_signals()
    want_sock = _parse_handle(args.sock) if args.sock else None
    types = {t.strip().lower() for t in args.type.split(",")} if args.type else None
    writer = None
    pcap_file = None
    shown = dropped = 0
    deadline = time.monotonic() + args.duration if args.duration else None
    print_lines = args.print or not args.pcap
    code = EXIT_OK
    ctl = _control(bb)
    try:
        if args.pcap == "-":              # to a pipe: `| tshark -X lua_script:... -i -`
            if args.print:
                raise MwctlError("--pcap - writes to stdout: no --print with it", EXIT_USAGE)
            pcap_file = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
        elif args.pcap:
            pcap_file = open(args.pcap, "wb")
        if pcap_file:
            writer = _pcap.PcapNgWriter(
                pcap_file, LINKTYPE_MWCOMMS, name=f"mwcomms:{bb.control}",
                description="mwcomms ring messages (mwctl trace; docs/mwctl.md)")
        ctl.start_trace(args.snaplen)
        print(f"mwctl trace: tracing {bb.control} (snaplen {args.snaplen})", file=sys.stderr,
              flush=True)
        if deadline is not None:
            ctl.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            for rec, payload in ctl.records():
                dropped += rec["dropped"]
                if want_sock is not None and rec["handle"] != want_sock:
                    continue
                if args.pid is not None and rec["pid"] != args.pid:
                    continue
                dec = _decode(rec, payload) if types or print_lines else None
                if types and not _type_match(types, rec, dec):
                    continue
                if writer:
                    writer.packet(rec["ns"], payload, flags=_pcap.EPB_OUTBOUND
                                  if rec["kind"] in TR_TO_INS else _pcap.EPB_INBOUND)
                    if args.pcap == "-":
                        writer.flush()
                if print_lines:
                    if args.json:
                        doc = dict(rec, **{k: v for k, v in dec.items() if k != "text"})
                        doc["handle"] = f"{rec['handle']:#x}"
                        print(json.dumps(doc), flush=True)
                    else:
                        t = time.strftime("%H:%M:%S", time.localtime(rec["ns"] / 1e9))
                        who = f" pid={rec['pid']}" if rec["pid"] else ""
                        lost = f" [{rec['dropped']} dropped before]" if rec["dropped"] else ""
                        print(f"{t}.{rec['ns'] % 1_000_000_000 // 1000:06d} {dec['dir']} "
                              f"{dec['kind']:<4} {dec['text']}{who}{lost}", flush=True)
                shown += 1
                if args.count and shown >= args.count:
                    break
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    ctl.sock.settimeout(left)
            else:
                print("mwctl trace: mwcommsd ended the trace (it stopped)", file=sys.stderr)
                code = EXIT_UNREACHABLE
        except TimeoutError:
            pass                 # --duration is over
    except KeyboardInterrupt:
        pass
    finally:
        ctl.close()
        if pcap_file:
            pcap_file.close()
    print(f"mwctl trace: {shown} records" + (f" written to {args.pcap}" if args.pcap else "")
          + (f", {dropped} dropped by mwcommsd (tracer too slow)" if dropped else ""),
          file=sys.stderr)
    return code


def cmd_dissector(args, bb: Backbone) -> int:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mwcomms.lua")
    if not os.path.exists(path):
        raise MwctlError(f"the dissector is not installed ({path} missing)", EXIT_NOT_FOUND)
    print(path)
    return EXIT_OK


# ---- attach / detach (the toolstack step) -------------------------------------------------

def cmd_attach(args, bb: Backbone) -> int:
    from mwcomms.xen import xenbus
    client = bb.xs()
    try:
        for dom, role in ((args.frontend, "frontend"), (args.ins, "INS")):
            if not client.exists(f"/local/domain/{dom}".encode()):
                raise MwctlError(f"{role} domain {dom} does not exist "
                                 f"(no /local/domain/{dom} in XenStore)", EXIT_NOT_FOUND)
        fp = xenbus.front_path(args.frontend, args.devid)
        bp = xenbus.back_path(args.ins, args.frontend, args.devid)
        present = [p for p in (fp, bp) if client.exists(p.encode())]
        if present and not args.force:
            raise MwctlError(f"already attached ({', '.join(present)} exist): "
                             f"`mwctl detach` first, or --force")
        if present:
            xenbus.detach(client, args.frontend, args.ins, args.devid)
        fp, bp = xenbus.attach(client, args.frontend, args.ins, args.devid)
    except OSError as exc:
        raise _os_error(exc, "attach") from None
    finally:
        client.close()
    print(f"attached device {args.devid}: frontend dom{args.frontend} {fp} "
          f"(owner dom{args.frontend}, read dom{args.ins}); "
          f"backend dom{args.ins} {bp} (owner dom{args.ins}, read dom{args.frontend})")
    return EXIT_OK


def cmd_detach(args, bb: Backbone) -> int:
    from mwcomms.xen import xenbus
    client = bb.xs()
    try:
        fp = xenbus.front_path(args.frontend, args.devid)
        bp = xenbus.back_path(args.ins, args.frontend, args.devid)
        present = [p for p in (fp, bp) if client.exists(p.encode())]
        if present:
            xenbus.detach(client, args.frontend, args.ins, args.devid)
    except OSError as exc:
        raise _os_error(exc, "detach") from None
    finally:
        client.close()
    if present:
        print(f"detached device {args.devid}: removed {' and '.join(present)}")
    else:
        print(f"device {args.devid} between dom{args.frontend} and dom{args.ins} "
              f"is not attached: nothing to do")
    return EXIT_OK


# ---- xenstore -----------------------------------------------------------------------------

def _xs_walk(client, path: str, depth: int = 0, limit: int = 32) -> dict:
    """{"value": str|None, "perms": [...], "children": {name: node}} of `path`'s subtree."""
    import pyxs
    node: dict = {"value": None, "children": {}}
    try:
        raw = client.read(path.encode())
        node["value"] = raw.decode("utf-8", "replace")
    except pyxs.PyXSError as exc:
        if exc.args and exc.args[0] == errno.ENOENT:
            raise FileNotFoundError(errno.ENOENT, f"{path}: no such node") from None
        if exc.args and exc.args[0] == errno.EACCES:
            raise PermissionError(errno.EACCES, f"{path}: permission denied") from None
        raise
    try:
        node["perms"] = [p.decode() for p in client.get_perms(path.encode()) if p]
    except pyxs.PyXSError:
        node["perms"] = []
    if depth >= limit:
        return node
    try:
        names = sorted(n.decode() for n in client.list(path.encode()) if n)
    except pyxs.PyXSError:
        names = []
    for name in names:
        child = "/" + name if path == "/" else f"{path}/{name}"
        try:
            node["children"][name] = _xs_walk(client, child, depth + 1, limit)
        except (FileNotFoundError, PermissionError):
            continue      # gone meanwhile, or not ours to read
    return node


def _mwcomms_paths(client) -> list[str]:
    """Every mwcomms device directory: /local/domain/*/device/mwcomms and
    /local/domain/*/backend/mwcomms (as far as this client may list)."""
    import pyxs
    out = []
    try:
        doms = sorted((d.decode() for d in client.list(b"/local/domain") if d),
                      key=lambda d: int(d) if d.isdigit() else 1 << 30)
    except pyxs.PyXSError:
        # a domU may not list the domains: its own home, by the relative key "domid"
        try:
            doms = [client.read(b"domid").decode()]
        except pyxs.PyXSError:
            doms = []
    for dom in doms:
        for kind in ("device", "backend"):
            p = f"/local/domain/{dom}/{kind}/mwcomms"
            try:
                if client.exists(p.encode()):
                    out.append(p)
            except pyxs.PyXSError:
                pass
    return out


def _decode_states(node: dict, name: str = "") -> None:
    if name == "state" and node.get("value") is not None:
        from mwcomms.xen.xenbus import XenbusState
        node["state"] = XenbusState.parse(node["value"]).name
    for cname, child in node["children"].items():
        _decode_states(child, cname)


def _print_tree(path: str, node: dict, indent: int = 0) -> None:
    name = path if indent == 0 else path.rsplit("/", 1)[-1]
    value = node.get("value")
    if "state" in node:
        value = f"{value} ({node['state'].capitalize()})"
    shown = f' = "{value}"' if value else ""
    perms = f"   [{' '.join(node['perms'])}]" if node.get("perms") else ""
    print(f"{'  ' * indent}{name}{shown}{perms}")
    for cname, child in node["children"].items():
        _print_tree(f"{path}/{cname}", child, indent + 1)


def cmd_xenstore(args, bb: Backbone) -> int:
    client = bb.xs()
    try:
        roots = [args.path] if args.path else _mwcomms_paths(client)
        trees = {}
        for root in roots:
            node = _xs_walk(client, root)
            _decode_states(node)
            trees[root] = node
    except OSError as exc:
        raise _os_error(exc, "xenstore") from None
    finally:
        client.close()
    if args.json:
        _emit_json(trees)
        return EXIT_OK
    if not trees:
        print("no mwcomms devices in XenStore (not attached: `mwctl attach`)")
    for root, node in trees.items():
        _print_tree(root, node)
    return EXIT_OK


# ---- the command line ---------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="mwctl", description="Inspect the mwcomms backbone; attach and detach its devices.",
        epilog="exit codes: 0 done, 1 failed, 2 usage, 3 backbone unreachable, "
               "4 permission denied, 5 no such object")
    def where(parser, default):
        """--dir, --xenstore, --control: before the command, and after it too (there with
        SUPPRESS as default: absent, they keep what was given before the command)."""
        parser.add_argument("--dir", default=default, help="run directory of `mwcomms up` "
                            f"(sim; default: {default_run_dir()})")
        parser.add_argument("--xenstore", metavar="SOCKET", default=default,
                            help="xenstored Unix socket or xenbus device (default: from --dir, "
                            "else the real xenstored: its socket in dom0, /dev/xen/xenbus in a "
                            "domU)")
        parser.add_argument("--control", metavar="SOCKET", default=default,
                            help=f"mwcommsd's control socket (default: from --dir, else "
                            f"{DEFAULT_CONTROL})")
        return parser

    where(ap, None)
    after = where(argparse.ArgumentParser(add_help=False), argparse.SUPPRESS)
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def add(name, help_, fn, json_=True):
        p = sub.add_parser(name, help=help_, description=help_, parents=[after])
        p.set_defaults(fn=fn)
        if json_:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    for name, fn, what in (("attach", cmd_attach, "create the XenStore nodes of a device "
                            "(toolstack step, dom0): the frontend's owned by the frontend and "
                            "readable by the INS, the backend's the other way round"),
                           ("detach", cmd_detach, "remove both XenStore directories of a "
                            "device (both drivers let go)")):
        p = add(name, what, fn, json_=False)
        p.add_argument("--frontend", type=int, required=True, metavar="DOMID",
                       help="the protected domain (mwcommsd)")
        p.add_argument("--ins", type=int, required=True, metavar="DOMID", help="the INS domain")
        p.add_argument("--devid", type=int, default=0, help="device number (default 0)")
        if name == "attach":
            p.add_argument("--force", action="store_true",
                           help="replace an existing device (its drivers see it vanish first)")
    add("status", "each frontend and INS: handshake state, protocol version and features, "
        "ring occupancy, event channel counts, uptime", cmd_status)
    p = add("sockets", "the forwarded sockets, in the spirit of ss: owner, addresses, state, "
            "bytes, queues, INS slot", cmd_sockets)
    p.add_argument("--pid", type=int, help="only the sockets this process created")
    p.add_argument("--state", help="only this state: established, listen, connecting, closed, "
                   "open, opening, queued, closing")
    p.add_argument("--addr", help="only sockets with this local or peer address: HOST, :PORT, "
                   "HOST:PORT or [V6]:PORT")
    p.add_argument("-p", "--processes", action="store_true",
                   help="Process: every process holding the socket now (from /proc, as ss -p; "
                   "others' need root) instead of the one that created it")
    p.add_argument("-a", "--all", action="store_true",
                   help="also the sockets mwcommsd keeps ready for listeners' next connections "
                   "and the ended ones it remembers")
    p = add("stats", "counters: calls by type, errors by errno, bytes, protocol errors, "
            "reconnects", cmd_stats)
    p.add_argument("--watch", type=float, metavar="SECONDS",
                   help="print again every SECONDS, with the change since the last print")
    p.add_argument("--count", type=int, default=0, help="with --watch: stop after N prints")
    p = add("trace", "live decode of the ring messages both ways (needs root or mwcommsd's "
            "user)", cmd_trace)
    p.add_argument("--sock", metavar="HANDLE", help="only this socket (handle as `mwctl "
                   "sockets` shows it)")
    p.add_argument("--pid", type=int, help="only sockets this process created")
    p.add_argument("--type", metavar="T[,T...]", help="only these: req, rsp, event, data, a "
                   "command (connect, socket, ...) or an event type (space, state)")
    p.add_argument("--snaplen", type=int, default=256,
                   help="data bytes kept per data record (default %(default)s, at most 65536)")
    p.add_argument("--pcap", metavar="FILE", help="write the records as pcap-ng (link type "
                   "USER0; decode with `tshark -X lua_script:$(mwctl dissector)`); - for "
                   "stdout, e.g. piped into `tshark ... -i -`")
    p.add_argument("--print", action="store_true", help="with --pcap: print the records too")
    p.add_argument("--count", type=int, default=0, help="stop after N records")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after SECONDS")
    add("dissector", "print the path of the Wireshark/tshark Lua dissector of `trace --pcap` "
        "files", cmd_dissector, json_=False)
    p = add("xenstore", "the mwcomms part of the XenStore tree, states decoded", cmd_xenstore)
    p.add_argument("path", nargs="?", help="a subtree to show instead (any path)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    if args.dir is None:
        args.dir = default_run_dir()
    try:
        bb = find_backbone(args)
        return args.fn(args, bb)
    except MwctlError as exc:
        print(f"mwctl {args.cmd}: {exc}", file=sys.stderr)
        return exc.code
    except OSError as exc:          # one not foreseen above: still one line and its code
        err = _os_error(exc, args.cmd)
        print(f"mwctl {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
