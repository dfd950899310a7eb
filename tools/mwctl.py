"""mwctl: see into the mwcomms backbone, and the toolstack step that attaches its two ends.

    mwctl [--dir D | --xenstore SOCKET --control SOCKET] COMMAND [--json] ...

    attach --frontend DOMID --ins DOMID   create the device's XenStore nodes (dom0)
    detach --frontend DOMID --ins DOMID   remove them
    xenstore [PATH]                       the mwcomms part of the tree, states decoded

Finding the backbone: options given on the command line win; else the run directory of
`mwcomms up` (--dir, default as mwcomms's own) when its state.json exists (sim: the
xenstored socket, mwcommsd's control socket, the daemons' stats files); else a Xen host:
the real xenstored (pyxs's default socket or xenbus device) and the control socket
/run/mwcomms/control.sock.

Exit codes (stable, docs/mwctl.md): 0 done; 1 the operation failed; 2 usage; 3 the backbone
(XenStore, mwcommsd) cannot be reached; 4 permission denied; 5 no such object (path, device).
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from dataclasses import dataclass, field

__all__ = ["main", "Backbone", "find_backbone"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_DENIED, EXIT_NOT_FOUND = range(6)
DEFAULT_CONTROL = "/run/mwcomms/control.sock"   # MWL_DEFAULT_SOCKET of local.h


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
        """A connected pyxs client, or MwctlError(EXIT_UNREACHABLE)."""
        from mwcomms.xen import xenbus
        try:
            return xenbus.connect_xenstore(self.xenstore)
        except Exception as exc:   # pyxs raises its own types, OSError, or ValueError
            where = self.xenstore or "the default xenstored socket / xenbus device"
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
    except (OSError, ValueError) as exc:
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


def _state_text(raw: str) -> str:
    from mwcomms.xen.xenbus import XenbusState
    st = XenbusState.parse(raw)
    return f"{raw} ({st.name.capitalize()})"


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
    ap.add_argument("--dir", default=default_run_dir(),
                    help="run directory of `mwcomms up` (sim; default: %(default)s)")
    ap.add_argument("--xenstore", metavar="SOCKET",
                    help="xenstored Unix socket (default: from --dir, else the real xenstored)")
    ap.add_argument("--control", metavar="SOCKET",
                    help=f"mwcommsd's control socket (default: from --dir, else {DEFAULT_CONTROL})")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def add(name, help_, fn, json_=True):
        p = sub.add_parser(name, help=help_, description=help_)
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
        p.add_argument("--xenstore", metavar="SOCKET", default=argparse.SUPPRESS,
                       help="xenstored Unix socket (as before the command)")
        if name == "attach":
            p.add_argument("--force", action="store_true",
                           help="replace an existing device (its drivers see it vanish first)")
    p = add("xenstore", "the mwcomms part of the XenStore tree, states decoded", cmd_xenstore)
    p.add_argument("path", nargs="?", help="a subtree to show instead (any path)")
    p.add_argument("--xenstore", metavar="SOCKET", default=argparse.SUPPRESS,
                   help="xenstored Unix socket (as before the command)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    try:
        bb = find_backbone(args)
        return args.fn(args, bb)
    except MwctlError as exc:
        print(f"mwctl {args.cmd}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
