"""Fixtures of the end-to-end tests: a backbone of their own (`mwcomms --dir D up` in a
temporary run directory, taken down afterwards whatever happened) and helpers that run
programs through it (`mwcomms run`), natively in the INS's network namespace, or plainly.

Tests that need root, unshare(1) or ip(8) skip with the reason printed.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

MWCOMMS = os.path.join(os.path.dirname(sys.executable), "mwcomms")


def clean_env(**extra):
    env = dict(os.environ, PYTHONSAFEPATH="1", PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    env.pop("LD_PRELOAD", None)
    env.pop("MWCOMMS_SOCKET", None)
    env.update(extra)
    return env


class Backbone:
    """A backbone brought up by `mwcomms --dir D up`, and ways to run programs around it."""

    def __init__(self, run_dir: str):
        self.dir = run_dir

    @property
    def state(self) -> dict:
        with open(os.path.join(self.dir, "state.json")) as f:
            return json.load(f)

    def cli(self, *args, timeout=120):
        return subprocess.run([MWCOMMS, "--dir", self.dir, *args], capture_output=True, text=True,
                              timeout=timeout, env=clean_env(), stdin=subprocess.DEVNULL)

    def argv(self, argv, isolate=False):
        """The command line that runs argv under the shim (`mwcomms run`)."""
        return [MWCOMMS, "--dir", self.dir, "run"] + (["--isolate"] if isolate else []) + \
            ["--", *argv]

    def run(self, argv, isolate=False, timeout=60):
        return subprocess.run(self.argv(argv, isolate), capture_output=True, text=True,
                              timeout=timeout, env=clean_env(), stdin=subprocess.DEVNULL)

    def netns_argv(self, argv):
        """The command line that runs argv natively (no shim) in the INS's network namespace."""
        return ["ip", "netns", "exec", self.state["netns"], *argv]

    def logs(self) -> str:
        logs = os.path.join(self.dir, "logs")
        out = ""
        for name in sorted(os.listdir(logs)) if os.path.isdir(logs) else []:
            with open(os.path.join(logs, name), errors="replace") as f:
                out += f"\n--- {name}\n" + "".join(f.readlines()[-20:])
        return out


class Program:
    """A long-running program (a server) in a process group of its own, its output in a file;
    `line(prefix)` waits for a line it printed."""

    def __init__(self, argv, out_path, env=None):
        self.out_path = out_path
        self.out = open(out_path, "w")
        self.proc = subprocess.Popen(argv, stdout=self.out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env or clean_env(),
                                     start_new_session=True)

    def text(self) -> str:
        with open(self.out_path, errors="replace") as f:
            return f.read()

    def line(self, prefix, timeout=20.0) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for ln in self.text().splitlines():
                if ln.startswith(prefix):
                    return ln
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no line {prefix!r} from {self.proc.args} "
                             f"(exit {self.proc.poll()}):\n{self.text()[-3000:]}")

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        self.out.close()


def take_down(run_dir: str) -> None:
    """`mwcomms down`; if that cannot run (a concurrent reinstall may have removed the console
    script or half the package), stop what state.json records by hand: no daemon outlives
    its test."""
    try:
        subprocess.run([MWCOMMS, "--dir", run_dir, "down"], capture_output=True, timeout=120,
                       env=clean_env())
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        with open(os.path.join(run_dir, "state.json")) as f:
            state = json.load(f)
    except (OSError, ValueError):
        return                          # down did its job (or nothing was up)
    pids = [state["pids"][n] for n in ("mwcommsd", "ins", "xenstored") if n in state["pids"]]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(1.0)
    if state.get("netns"):
        subprocess.run(["ip", "netns", "del", state["netns"]], capture_output=True)
    os.unlink(os.path.join(run_dir, "state.json"))


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """A backbone of this test module's own."""
    if not os.path.exists(MWCOMMS):
        pytest.skip("the mwcomms CLI is not installed")
    missing = [t for t in ("unshare", "ip") if not shutil.which(t)]
    if os.geteuid() != 0 or missing:
        pytest.skip("needs root, unshare(1) and ip(8) (missing: " + (", ".join(missing) or "root") +
                    "): the INS and isolated programs get network namespaces of their own")
    run_dir = str(tmp_path_factory.mktemp("mwc"))
    bb = Backbone(run_dir)
    try:
        try:
            up = bb.cli("up")
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"mwcomms up did not return within 120 s: {exc.stdout}")
        if up.returncode != 0:
            pytest.fail(f"mwcomms up failed: {up.stdout}{up.stderr}{bb.logs()}")
        yield bb
    finally:
        # Always: an `up` that failed half-way may have left daemons running.
        take_down(run_dir)


def _starter(out_dir):
    started = []

    def start(argv, name, env=None):
        p = Program(argv, os.path.join(out_dir, f"{name}.out"), env)
        started.append(p)
        return p

    return start, started


@pytest.fixture
def programs(tmp_path):
    """Start Programs; every one still running is stopped at the end of the test."""
    start, started = _starter(str(tmp_path))
    yield start
    for p in started:
        p.stop()


@pytest.fixture(scope="module")
def module_programs(tmp_path_factory):
    """The same, stopped at the end of the test module."""
    start, started = _starter(str(tmp_path_factory.mktemp("programs")))
    yield start
    for p in started:
        p.stop()
