"""`make demo`: what the backbone can do today, shown on one host with the sim backend.

1. start the project's xenstored (the sim backend's XenStore),
2. as the toolstack (dom0), introduce a protected domain (1) and an INS domain (2) and attach
   an mwcomms device between them,
3. start a frontend process (domain 1) and an INS process (domain 2): they find each other
   through XenStore, run the XenbusState handshake, share and map the area, bind the event
   channel,
4. exercise the connection with the link probe (PING round trips, pipelined PINGs, a hashed
   byte stream) and print the rates,
5. take both down (Closing, Closed) and show the states on the way,
6. bring the whole backbone up with `mwcomms up` and run unmodified programs through it:
   curl against Python's http.server (both under the shim, so both ends live in the INS), a
   UDP exchange, a name lookup, and a raw socket that must be refused; then `mwcomms down`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

FRONT, INS = 1, 2


def _side(args) -> int:
    """One side, run as its own process (its own sim domain)."""
    import logging

    from mwcomms.xen import area, connection, probe, xenbus
    from mwcomms.xen.platform import Platform
    from mwcomms.xen.xenbus import XenbusState as S

    logging.basicConfig(level=logging.INFO, format=f"  [{args.side:5}] %(message)s",
                        stream=sys.stdout)
    domid = FRONT if args.side == "front" else INS
    plat = Platform("sim", sim_dir=args.sim_dir, domid=domid)
    client = xenbus.connect_xenstore(os.path.join(args.xs_dir, "domain", f"{domid}.sock"))
    if args.side == "front":
        link = connection.FrontLink(plat, INS, area.AreaLayout(cmd_ring_pages=4, evq_pages=1,
                                                               sock_slots=1024, data_pages=1024))
        driver = xenbus.FrontendDriver(client, xenbus.front_path(FRONT), setup=link.setup,
                                       teardown=link.teardown)
    else:
        link = connection.BackLink(plat, FRONT)
        driver = xenbus.BackendDriver(client, xenbus.back_path(INS, FRONT), advertise=link.advertise,
                                      connect=link.connect, teardown=link.teardown)
    stop = threading.Event()
    thread = threading.Thread(target=driver.run, args=(stop,), daemon=True)
    thread.start()
    if not driver.wait_for(S.CONNECTED, 30):
        print(f"  [{args.side:5}] did not connect: state {driver.state.name}", flush=True)
        return 1
    kw = dict(nbytes=args.bytes, order=20, spin_ns=args.spin_ns, timeout_ms=20000)
    try:
        if args.side == "front":
            res = probe.run_front(link, round_trips=args.round_trips, pings=args.pings, **kw)
        else:
            res = probe.run_back(link, **kw)
    finally:
        if args.side == "front":
            stop.set()          # the frontend leaves first: the INS follows it down
        else:
            driver.wait_for(S.INITWAIT, 20)
            stop.set()
        thread.join(20)
    print("RESULT " + json.dumps(res.__dict__), flush=True)
    client.close()
    plat.close()
    return 0


def _pump(proc, results: dict, name: str) -> None:
    for line in proc.stdout:
        if line.startswith("RESULT "):
            results[name] = json.loads(line[len("RESULT "):])
        else:
            print(line, end="", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mwcomms.tools.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--round-trips", type=int, default=20000)
    ap.add_argument("--pings", type=int, default=2_000_000)
    ap.add_argument("--bytes", type=int, default=1 << 30)
    ap.add_argument("--spin-ns", type=int, default=5000)
    ap.add_argument("--link-only", action="store_true", help="only the link probe (part one)")
    sub = ap.add_subparsers(dest="cmd")
    side = sub.add_parser("_side")            # internal: one side of the demo
    side.add_argument("side", choices=["front", "back"])
    side.add_argument("--xs-dir", required=True)
    side.add_argument("--sim-dir", required=True)
    args = ap.parse_args(argv)
    if args.cmd == "_side":
        return _side(args)

    from mwcomms.xen import xenbus, xenstored

    print("mwcomms demo: a protected domain and an INS domain on one host (sim backend)\n")
    with tempfile.TemporaryDirectory(prefix="mwdemo", dir="/tmp") as top:
        sim_dir = os.path.join(top, "sim")
        t0 = time.monotonic()
        with xenstored.running(os.path.join(top, "xs"), mode="process") as xs:
            print(f"1. xenstored (the project's own) listening on {xs.socket_path}")
            tool = xenbus.connect_xenstore(xs.socket_path)
            for dom in (FRONT, INS):
                xenbus.introduce(tool, dom)
            fp, bp = xenbus.attach(tool, FRONT, INS)
            print(f"2. toolstack: domains {FRONT} (protected) and {INS} (INS) introduced; device attached\n"
                  f"     {fp}\n     {bp}")
            print("3. frontend and INS processes start and run the handshake:")
            env = dict(os.environ, PYTHONSAFEPATH="1")
            common = [f"--round-trips={args.round_trips}", f"--pings={args.pings}",
                      f"--bytes={args.bytes}", f"--spin-ns={args.spin_ns}"]
            procs, results, pumps = {}, {}, []
            for name in ("back", "front"):
                procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "mwcomms.tools.demo", *common, "_side", name,
                     "--xs-dir", xs.dir, "--sim-dir", sim_dir],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
                pumps.append(threading.Thread(target=_pump, args=(procs[name], results, name)))
                pumps[-1].start()
            rcs = {name: p.wait(120) for name, p in procs.items()}
            for t in pumps:
                t.join()
            print("4. XenStore afterwards:")
            for path in (fp, bp):
                state = xenbus.XenbusState.parse(xenbus.read_opt(tool, f"{path}/state"))
                print(f"     {path}/state = {int(state)} ({state.name})")
            tool.close()
        elapsed = time.monotonic() - t0

    front, back = results.get("front"), results.get("back")
    if any(rcs.values()) or not front or not back:
        print(f"\nFAILED: exit codes {rcs}")
        return 1
    ok = front["hash"] == back["hash"] and back["pings"] == front["pings"] + front["round_trips"]
    print(f"\n5. what went through the connection ({elapsed:.1f} s in all):")
    print(f"     round trip, one PING at a time: {front['rtt_us']:8.2f} us   ({front['round_trips']} PINGs)")
    print(f"     pipelined PINGs:                {front['msgs_per_s'] / 1e6:8.2f} M messages/s"
          f"   ({front['pings']} request/response pairs)")
    print(f"     byte stream:                    {front['gb_per_s']:8.2f} GB/s"
          f"   ({front['bytes'] >> 20} MiB, FNV-1a {front['hash']:#018x} sent,"
          f" {back['hash']:#018x} received)")
    print(f"     event channel kicks: frontend {front['kicks']}, INS {back['kicks']};"
          f" sleeps: {front['sleeps']} / {back['sleeps']}")
    print("\n" + ("OK: every PING answered once, the stream arrived intact." if ok else
                  "FAILED: the two sides disagree."))
    if args.link_only:
        return 0 if ok else 1
    return _programs() or (0 if ok else 1)


UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.settimeout(20)
for _ in range(3):
    data, src = s.recvfrom(2048)
    s.sendto(data.upper(), src)
"""

UDP_CLIENT = """
import socket, sys
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(5)
for word in (b"ping", b"through", b"the ins"):
    for _ in range(50):
        try:
            c.sendto(word, ("127.0.0.1", int(sys.argv[1])))
            data, src = c.recvfrom(2048)
            break
        except socket.timeout:
            continue
    print(data.decode(), "from", src[0])
"""


HOLD = """
import errno, socket, time
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(1)
c = socket.create_connection(l.getsockname()); a, _ = l.accept()
a.sendall(b"x"); c.recv(1)
print("BLOCKED", flush=True)
try:
    print("EOF" if not c.recv(1) else "DATA", time.time(), flush=True)
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno), time.time(), flush=True)
"""


def _ins_death(mw: str, run_dir: str, env: dict, step) -> None:
    """The INS killed under a program blocked in recv(): the error it gets and when; then
    `mwcomms up` restarts just the INS and a name lookup goes through it again."""
    import json
    import select
    import signal

    hold = subprocess.Popen([mw, "--dir", run_dir, "run", "--", sys.executable, "-c", HOLD],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        if not select.select([hold.stdout], [], [], 20)[0] or \
                hold.stdout.readline().strip() != "BLOCKED":
            step("the INS killed under a blocked recv()", False, "the program did not start")
            return
        time.sleep(0.2)
        with open(os.path.join(run_dir, "state.json")) as f:
            ins = json.load(f)["pids"]["ins"]
        t_kill = time.time()
        os.kill(ins, signal.SIGKILL)
        line = hold.stdout.readline().split() if select.select([hold.stdout], [], [], 10)[0] \
            else []
        ok = len(line) == 2 and line[0] in ("ECONNRESET", "ENETDOWN", "ECONNABORTED")
        step(f"kill -9 the INS (pid {ins}) under a program blocked in recv()", ok,
             f"recv() failed with {line[0]} {float(line[1]) - t_kill:.2f} s later" if ok
             else f"got {line or 'nothing within 10 s'}")
    finally:
        hold.kill()
        hold.wait(10)
    t0 = time.monotonic()
    up = subprocess.run([mw, "--dir", run_dir, "up"], capture_output=True, text=True, timeout=60,
                        env=env)
    got = subprocess.run([mw, "--dir", run_dir, "run", "--", sys.executable, "-c",
                          "import socket; print(socket.gethostbyname('localhost'))"],
                         capture_output=True, text=True, timeout=30, env=env)
    step("`mwcomms up` restarts just the INS; mwcommsd reconnects", up.returncode == 0 and
         got.returncode == 0, (up.stdout.strip().splitlines() or [up.stderr.strip()])[-1]
         .rstrip(".") + f"; a name lookup works again ({time.monotonic() - t0:.2f} s after the restart began)"
         if got.returncode == 0 else (up.stderr + got.stderr)[-300:])


def _programs() -> int:
    """Part two: unmodified programs through the whole backbone (shim, mwcommsd, INS)."""
    import shutil

    mw = os.path.join(os.path.dirname(sys.executable), "mwcomms")
    run_dir = tempfile.mkdtemp(prefix="mwdemo-run", dir="/tmp")
    env = dict(os.environ, PYTHONSAFEPATH="1")
    failures = 0

    def step(title, ok, detail):
        nonlocal failures
        failures += not ok
        print(f"   {'ok  ' if ok else 'FAIL'} {title}: {detail}")

    def run(*cmd, timeout=30, **kw):
        return subprocess.run([mw, "--dir", run_dir, "run", "--", *cmd], capture_output=True,
                              text=True, timeout=timeout, env=env, **kw)

    print("\n6. real programs, unmodified, through the shim, mwcommsd and the INS:")
    up = subprocess.run([mw, "--dir", run_dir, "up"], capture_output=True, text=True, timeout=120,
                        env=env)
    print("   " + "\n   ".join(up.stdout.strip().splitlines() or [up.stderr.strip()]))
    if up.returncode:
        return 1
    server = udp = None
    try:
        try:
            port = 8000 + os.getpid() % 1000
            server = subprocess.Popen([mw, "--dir", run_dir, "run", "--", sys.executable, "-m",
                                       "http.server", str(port), "--bind", "127.0.0.1",
                                       "--directory", os.path.dirname(os.path.abspath(__file__))],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            got = None
            for _ in range(100):
                got = run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                          f"http://127.0.0.1:{port}/demo.py")
                if got.returncode == 0:
                    break
                time.sleep(0.1)
            step("curl -> python3 -m http.server (both under the shim)", got.returncode == 0 and
                 got.stdout.startswith("200"), f"HTTP {got.stdout or got.stderr.strip()}")
            if shutil.which("curl"):
                host = subprocess.run(["curl", "-s", "-m", "2", f"http://127.0.0.1:{port}/"],
                                      capture_output=True, timeout=10)
                step("the same curl without the shim", host.returncode != 0,
                     "cannot reach it (the server lives only in the INS)" if host.returncode else
                     "reached it: the INS shares this host's network namespace (not root?)")
            uport = port + 1
            udp = subprocess.Popen([mw, "--dir", run_dir, "run", "--", sys.executable, "-c", UDP_ECHO,
                                    str(uport)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   env=env)
            got = run(sys.executable, "-c", UDP_CLIENT, str(uport))
            step("UDP echo (client and server under the shim)", got.returncode == 0 and
                 "THE INS" in got.stdout, " | ".join(got.stdout.split("\n")[:3]) or got.stderr[-200:])
            got = run(sys.executable, "-c", "import socket; print(sorted({a[4][0] for a in "
                      "socket.getaddrinfo('localhost', 80)}))")
            step("name lookup by the INS: getaddrinfo('localhost')", got.returncode == 0,
                 got.stdout.strip() or got.stderr[-200:])
            got = run(sys.executable, "-c", "import socket; socket.socket(socket.AF_INET, "
                      "socket.SOCK_RAW, socket.IPPROTO_ICMP)")
            step("a raw socket (would reach the local stack)", got.returncode != 0 and
                 "Operation not permitted" in got.stderr,
                 "refused: " + got.stderr.strip().splitlines()[0] if got.stderr.strip()
                 else "not refused")
        finally:
            for p in (server, udp):
                if p is not None:
                    p.terminate()
                    p.wait(10)
        _ins_death(mw, run_dir, env, step)
    finally:
        down = subprocess.run([mw, "--dir", run_dir, "down"], capture_output=True, text=True,
                              timeout=120, env=env)
        print("   " + down.stdout.strip())
    print("\n" + ("OK: real programs ran with all their networking in the INS." if not failures
                  else f"FAILED: {failures} step(s) above."))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
