"""`mwcomms up|down|run`: bring the backbone up on this host, take it down, run a program
through it.

`up` (backend sim) plays every part a Xen host would: it starts the project's xenstored, acts
as the toolstack (introduces the protected domain 1 and the INS domain 2, attaches the mwcomms
device between them), starts the INS (in a network namespace of its own when run as root) and
mwcommsd, and waits until the two have connected. Everything it starts is recorded in the run
directory's state.json, which `down` and `run` read.

`up` on a backbone whose INS or mwcommsd died (XenStore still running) restarts just those,
with the command lines recorded in state.json, and waits until mwcommsd has connected to the
INS again; anything else broken is taken down and started afresh.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

FRONT, INS = 1, 2
EXIT_USAGE, EXIT_NOT_UP, EXIT_FAILED = 2, 3, 1


class CliError(Exception):
    """A failure to report to the user in one line, with an exit code."""

    def __init__(self, msg: str, code: int = EXIT_FAILED):
        super().__init__(msg)
        self.code = code


def default_run_dir() -> str:
    if os.geteuid() == 0:
        return "/run/mwcomms"
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/mwcomms-{os.getuid()}"
    return os.path.join(base, "mwcomms")


def _state_path(run_dir: str) -> str:
    return os.path.join(run_dir, "state.json")


def _read_state(run_dir: str) -> dict | None:
    try:
        with open(_state_path(run_dir)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _dead(state: dict) -> list[str]:
    return [name for name, pid in state.get("pids", {}).items() if not _alive(pid)]


def load_state(run_dir: str) -> dict:
    """The record of a backbone that is up, or CliError(EXIT_NOT_UP)."""
    state = _read_state(run_dir)
    if state is None:
        raise CliError(f"the backbone is not up (no {_state_path(run_dir)}): "
                       f"run `mwcomms up` first", EXIT_NOT_UP)
    dead = _dead(state)
    if dead:
        fix = ("run `mwcomms up` to restart " + (" and ".join(dead)) if _restartable(state, dead)
               else "run `mwcomms down` then `mwcomms up`")
        raise CliError(f"the backbone is broken: {', '.join(dead)} not running "
                       f"(logs in {state.get('logs', run_dir)}); {fix}", EXIT_NOT_UP)
    return state


def _proc_state(pid: int) -> str:
    """The process's state letter from /proc (R, S, T, Z...), "" when unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _proc_state(pid) != "Z"      # a zombie is dead, whoever has yet to reap it


def _stopped(state: dict) -> str:
    """A warning about components that are stopped (SIGSTOP, a debugger): alive, but every
    call that needs them waits. Empty when none is."""
    stopped = [f"{name} (pid {pid})" for name, pid in state.get("pids", {}).items()
               if _proc_state(pid) in ("T", "t")]
    if not stopped:
        return ""
    pids = " ".join(str(state["pids"][n.split()[0]]) for n in stopped)
    return (f"{', '.join(stopped)} {'is' if len(stopped) == 1 else 'are'} stopped: socket "
            f"calls wait until it runs again (`kill -CONT {pids}`)")


def _env() -> dict:
    return dict(os.environ, PYTHONSAFEPATH="1")


def _spawn(cmd: list[str], log: str, netns: str | None = None) -> subprocess.Popen:
    if netns:
        cmd = ["ip", "netns", "exec", netns] + cmd
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=_env(), start_new_session=True)


def _netns_up(run_dir: str) -> str | None:
    """A network namespace for the INS, with only loopback, when we may make one. Its name
    comes from the run directory, so that two backbones on one host stay apart."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        return None
    name = "mwcomms-" + hashlib.sha1(os.path.abspath(run_dir).encode()).hexdigest()[:10]
    subprocess.run(["ip", "netns", "del", name], stderr=subprocess.DEVNULL)
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
    return name


def _wait_connected(xs_socket: str, procs: dict, timeout: float) -> None:
    from mwcomms.xen import xenbus

    client = xenbus.connect_xenstore(xs_socket)
    try:
        end = time.monotonic() + timeout
        paths = (xenbus.front_path(FRONT), xenbus.back_path(INS, FRONT))
        while time.monotonic() < end:
            states = [xenbus.XenbusState.parse(xenbus.read_opt(client, f"{p}/state"))
                      for p in paths]
            if all(s is xenbus.XenbusState.CONNECTED for s in states):
                return
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise CliError(f"{name} exited with {proc.returncode} during start-up")
            time.sleep(0.05)
        raise CliError(f"mwcommsd and the INS did not connect within {timeout:.0f} s "
                       f"(states {[s.name for s in states]})")
    finally:
        client.close()


def cmd_up(args) -> int:
    run_dir = args.dir
    if args.backend != "sim":
        raise CliError("only --backend sim runs on one host; on Xen, start the INS image and "
                       "mwcommsd in their domains (docs/xen.md)", EXIT_USAGE)
    if args.spin_us is not None and not 0 <= args.spin_us <= 1000:
        raise CliError(f"--spin-us {args.spin_us}: must be 0 (never poll) to 1000", EXIT_USAGE)
    old = _read_state(run_dir)
    if old is not None:
        dead = _dead(old)
        if not dead:
            stopped = _stopped(old)
            raise CliError(f"the backbone is already up ({_state_path(run_dir)})" +
                           (f", but {stopped}" if stopped else "; `mwcomms down` first"))
        if _restartable(old, dead):
            return _restart(old, dead, args.timeout)
        print(f"mwcomms up: the previous backbone is broken ({', '.join(dead)} not running): "
              f"taking it down and starting afresh", file=sys.stderr)
        _down(run_dir, quiet=True)
    from mwcomms.xen import area, xenbus, xenstored

    layout = area.AreaLayout()
    sock_slots = args.sock_slots or layout.sock_slots
    data_pages = args.data_pages or layout.data_pages
    os.makedirs(run_dir, exist_ok=True)
    logs = os.path.join(run_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    sim_dir = os.path.join(run_dir, "sim")
    control = os.path.join(run_dir, "control.sock")
    xs = xenstored.start(os.path.join(run_dir, "xs"), mode="process",
                         log_file=os.path.join(logs, "xenstored.log"))
    procs: dict[str, subprocess.Popen] = {}
    state = {"backend": "sim", "dir": run_dir, "logs": logs, "control": control,
             "xenstore": xs.socket_path, "sim_dir": sim_dir, "netns": None,
             "pids": {"xenstored": xs.pid}}
    try:
        tool = xenbus.connect_xenstore(xs.socket_path)
        for dom in (FRONT, INS):
            xenbus.introduce(tool, dom)
        xenbus.attach(tool, FRONT, INS)
        tool.close()
        netns = _netns_up(run_dir)
        state["netns"] = netns
        py = sys.executable
        # The counters each daemon writes every second (mwctl reads them).
        state["stats"] = {name: os.path.join(run_dir, f"{name}.stats.json")
                          for name in ("mwcommsd", "ins")}
        # The command lines are recorded so that `up` can restart a component that died
        # exactly as it was first started.
        state["cmds"] = {
            "ins": [py, "-m", "mwcomms.ins.daemon", "--backend", "sim", "--sim-dir", sim_dir,
                    "--domid", str(INS), "--xenstore", xs.socket_path,
                    "--stats", state["stats"]["ins"]],
            # the sim's area is a sparse file: xen/area.py's default layout (32768 socket
            # slots, 512 MiB of rings) costs nothing until used
            "mwcommsd": [py, "-m", "mwcomms.daemon", "--backend", "sim", "--sim-dir", sim_dir,
                         "--domid", str(FRONT), "--ins-domid", str(INS),
                         "--xenstore", xs.socket_path, "--socket", control,
                         "--stats", state["stats"]["mwcommsd"],
                         "--sock-slots", str(sock_slots), "--data-pages", str(data_pages)],
        }
        if args.spin_us is not None:
            for cmd in state["cmds"].values():
                cmd += ["--spin-us", str(args.spin_us)]
        for name in ("ins", "mwcommsd"):
            procs[name] = _spawn(state["cmds"][name], os.path.join(logs, f"{name}.log"),
                                 netns if name == "ins" else None)
        state["pids"].update({name: p.pid for name, p in procs.items()})
        with open(_state_path(run_dir), "w") as f:
            json.dump(state, f, indent=1)
        _wait_connected(xs.socket_path, procs, args.timeout)
    except BaseException:
        _down(run_dir, quiet=True, extra=[p.pid for p in procs.values()] + [xs.pid])
        raise
    where = f"the INS in network namespace {state['netns']}" if state["netns"] else \
        "the INS in this network namespace (not root: no namespace of its own)"
    print(f"mwcomms is up: mwcommsd (domain {FRONT}) connected to {where} (domain {INS}).\n"
          f"  control socket: {control}\n  logs:           {logs}\n"
          f"  run a program:  mwcomms run -- CMD ARGS...")
    return 0


def _restartable(state: dict, dead: list[str]) -> bool:
    """Only the INS and mwcommsd can be restarted in place: XenStore (and the toolstack's
    nodes in it) must have survived, and so must the INS's network namespace."""
    if "xenstored" in dead or not set(dead) <= set(state.get("cmds", {})):
        return False
    return not state.get("netns") or os.path.exists(f"/run/netns/{state['netns']}")


def _mwcommsd_link(state: dict) -> tuple[str, int]:
    """mwcommsd's link state and how many times it attached an INS (from its stats file)."""
    try:
        with open(state["stats"]["mwcommsd"]) as f:
            doc = json.load(f)
        return doc.get("link", "?"), int(doc.get("attaches", 0))
    except (OSError, KeyError, ValueError):
        return "?", 0


def _restart(state: dict, dead: list[str], timeout: float) -> int:
    """Start the dead components again with the command lines they were first started with,
    then wait until mwcommsd has attached a new INS connection."""
    t0 = time.monotonic()
    logs = state["logs"]
    _, attaches = _mwcommsd_link(state)
    if "mwcommsd" in dead:
        attaches = 0
        for path in (state["stats"]["mwcommsd"], state["control"]):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    procs = {}
    for name in ("ins", "mwcommsd"):
        if name in dead:
            procs[name] = _spawn(state["cmds"][name], os.path.join(logs, f"{name}.log"),
                                 state.get("netns") if name == "ins" else None)
            print(f"mwcomms up: {name} (pid {state['pids'][name]}) is not running: "
                  f"restarted as pid {procs[name].pid}")
            state["pids"][name] = procs[name].pid
    with open(_state_path(state["dir"]), "w") as f:
        json.dump(state, f, indent=1)
    end = t0 + timeout
    while True:
        link, n = _mwcommsd_link(state)
        if link == "attached" and n > attaches:
            break
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise CliError(f"{name} exited with {proc.returncode} during restart "
                               f"(see {os.path.join(logs, name + '.log')})")
        if time.monotonic() > end:
            raise CliError(f"mwcommsd did not connect to the INS within {timeout:.0f} s of the "
                           f"restart (link {link}; logs in {logs})")
        time.sleep(0.05)
    _wait_connected(state["xenstore"], procs, max(1.0, end - time.monotonic()))
    print(f"mwcomms is up again: mwcommsd connected to the INS {time.monotonic() - t0:.2f} s "
          f"after the restart.")
    return 0


def _down(run_dir: str, quiet: bool = False, extra: list[int] | None = None) -> int:
    try:
        with open(_state_path(run_dir)) as f:
            state = json.load(f)
    except FileNotFoundError:
        state = {"pids": {}}
    # The frontend first, then the INS (each leaves the handshake cleanly on SIGTERM), then
    # XenStore.
    order = ["mwcommsd", "ins", "xenstored"]
    pids = [state["pids"][n] for n in order if n in state["pids"]] + list(extra or [])
    for pid in pids:
        _stop(pid)
    if state.get("netns"):
        subprocess.run(["ip", "netns", "del", state["netns"]], stderr=subprocess.DEVNULL)
    for name in ("state.json", "control.sock"):
        try:
            os.unlink(os.path.join(run_dir, name))
        except FileNotFoundError:
            pass
    shutil.rmtree(os.path.join(run_dir, "sim"), ignore_errors=True)
    shutil.rmtree(os.path.join(run_dir, "xs"), ignore_errors=True)
    if not quiet:
        print(f"mwcomms is down (logs kept in {os.path.join(run_dir, 'logs')}).")
    return 0


def _stop(pid: int, timeout: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            if not _alive(pid):
                return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def cmd_down(args) -> int:
    if not os.path.exists(_state_path(args.dir)):
        print(f"mwcomms is not up ({_state_path(args.dir)} missing): nothing to do.")
        return 0
    return _down(args.dir)


def run_env(state: dict) -> dict:
    """The environment of a program run through the backbone."""
    try:
        from mwcomms import shim_path
        shim = shim_path()
    except (ImportError, OSError) as exc:
        raise CliError(f"tcp_ip_wrapper.so is not in this installation ({exc})") from None
    env = dict(os.environ)
    env["LD_PRELOAD"] = shim + (" " + env["LD_PRELOAD"] if env.get("LD_PRELOAD") else "")
    env["MWCOMMS_SOCKET"] = state["control"]
    return env


def _static_elf(path: str) -> bool:
    """True when path is an ELF executable without a program interpreter (statically linked):
    the dynamic loader never runs, so LD_PRELOAD, and with it the shim, has no effect."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] not in (1, 2):
                return False
            end = "<" if head[5] == 1 else ">"
            if head[4] == 2:
                phoff, = struct.unpack_from(end + "Q", head, 32)
                phentsize, phnum = struct.unpack_from(end + "HH", head, 54)
            else:
                phoff, = struct.unpack_from(end + "I", head, 28)
                phentsize, phnum = struct.unpack_from(end + "HH", head, 42)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    types = [struct.unpack_from(end + "I", table, i * phentsize)[0] for i in range(phnum)
             if (i + 1) * phentsize <= len(table)]
    return 3 not in types                # PT_INTERP


def _preload_ignored(path: str, euid: int) -> str:
    """Why the dynamic loader would ignore LD_PRELOAD for path run by euid ("" if it would
    not): a static binary never runs the loader; a set-user/group-ID or file-capability
    program run by anyone but root starts in secure-execution mode."""
    if _static_elf(path):
        return "is statically linked"
    if euid == 0:
        return ""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return ""
    if mode & 0o6000:
        return "is set-user/group-ID"
    try:
        os.getxattr(path, "security.capability")
        return "has file capabilities"
    except OSError:
        return ""


def cmd_run(args) -> int:
    if not args.command:
        raise CliError("nothing to run: mwcomms run [--isolate] -- CMD ARGS...", EXIT_USAGE)
    state = load_state(args.dir)
    stopped = _stopped(state)
    if stopped:
        print(f"mwcomms run: warning: {stopped}", file=sys.stderr)
    env = run_env(state)
    cmd = list(args.command)
    exe = shutil.which(cmd[0])
    why = _preload_ignored(exe, os.geteuid()) if exe and not args.isolate else ""
    if why:
        print(f"mwcomms run: warning: {cmd[0]} {why}: the shim cannot see its sockets, which "
              f"would use this host's network; add --isolate to leave it none", file=sys.stderr)
    if args.isolate:
        # A network namespace with no interfaces at all: a program that slips past the shim
        # (a static binary, raw syscalls) has no network instead of the host's.
        if not shutil.which("unshare"):
            raise CliError("--isolate needs unshare(1) (util-linux)")
        if os.geteuid() == 0:
            cmd = ["unshare", "--net", "--"] + cmd
        else:
            cmd = ["unshare", "--net", "--map-root-user", "--"] + cmd
    # Become the program: its signals, its exit status, its process group, as if run directly.
    try:
        os.execvpe(cmd[0], cmd, env)
    except FileNotFoundError:
        raise CliError(f"{cmd[0]}: command not found", 127) from None
    except PermissionError:
        raise CliError(f"{cmd[0]}: permission denied", 126) from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mwcomms", description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=default_run_dir(),
                    help="run directory: state, sockets, logs (default: %(default)s)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start xenstored (sim), the INS and mwcommsd; restart "
                                    "whichever of the INS and mwcommsd died")
    up.add_argument("--backend", default="sim", choices=["sim", "xen"])
    up.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the handshake")
    up.add_argument("--sock-slots", type=int,
                    help="mwcommsd's socket slots (default: xen/area.py's, 32768)")
    up.add_argument("--data-pages", type=int,
                    help="pages of mwcommsd's data area, the byte rings (default: xen/area.py's, "
                         "131072 = 512 MiB, a sparse file on sim)")
    up.add_argument("--spin-us", type=int,
                    help="microseconds mwcommsd and the INS keep polling after work before "
                         "they sleep (default: $MW_SPIN_US, else 50; 0: never poll; at most 1000)")
    sub.add_parser("down", help="stop everything `up` started")
    run = sub.add_parser("run", help="run a program with its sockets in the INS")
    run.add_argument("--isolate", action="store_true",
                     help="also run it in a network namespace without interfaces")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    args = ap.parse_args(argv)
    if args.cmd == "run" and args.command[:1] == ["--"]:
        args.command = args.command[1:]
    try:
        return {"up": cmd_up, "down": cmd_down, "run": cmd_run}[args.cmd](args)
    except CliError as exc:
        print(f"mwcomms {args.cmd}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
