"""The platform layer's C test programs (tests/c/plat_*.c), built against xen/platform*.c with
AddressSanitizer and UBSan and run on the sim backend (and the xen backend on a model of the
Linux devices).

plat_xentest is the program the real-Xen harness runs in dom0 and the domU; here it runs on
sim, as one domain (self) and as two processes with two sim domain ids (offer / map).
"""
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(str(p) for p in (ROOT / "xen").glob("platform*.c"))
SANITIZE = ["-g", "-O1", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all"]
FAKEXEN_WRAP = "-Wl," + ",".join(f"--wrap={f}" for f in
                                 ("open", "access", "ioctl", "mmap", "read", "write", "close"))
SAN_ENV = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """build(name, sanitize=True, fakexen=False) -> path of tests/c/<name>.c compiled with the
    platform; with fakexen, linked with the model of the /dev/xen devices (plat_fakexen.c)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    out = tmp_path_factory.mktemp("plat-bin")

    def _build(name, sanitize=True, fakexen=False):
        exe = out / (name + ("-san" if sanitize else "-O2") + ("-fakexen" if fakexen else ""))
        if not exe.exists():
            flags = SANITIZE if sanitize else ["-O2"]
            extra = [str(ROOT / "tests" / "c" / "plat_fakexen.c"), FAKEXEN_WRAP] if fakexen else []
            cmd = ["gcc", "-std=gnu11", "-Wall", "-Wextra", "-Werror", *flags,
                   "-I", str(ROOT / "xen" / "include"), str(ROOT / "tests" / "c" / f"{name}.c"),
                   *SOURCES, *extra, "-lpthread", "-o", str(exe)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr}"
        return str(exe)

    return _build


def sim_env(sim_dir, domid):
    return {**os.environ, **SAN_ENV, "MW_BACKEND": "sim", "MW_SIM_DIR": str(sim_dir),
            "MW_SIM_DOMID": str(domid)}


def assert_plat_pass(out, err, rc, who):
    fails = [line for line in out.splitlines() if line.startswith("PLAT FAIL")]
    assert not fails, f"{who}: {fails}\n{out}\n{err}"
    assert "PLAT RESULT: PASS" in out, f"{who}: no PASS result\n{out}\n{err}"
    assert "AddressSanitizer" not in err and "runtime error" not in err, f"{who}:\n{err}"
    assert rc == 0, f"{who}: exit {rc}\n{out}\n{err}"


def test_sim_unit(build, tmp_path):
    """Open, grant and event channel semantics of sim, peer death, concurrency, threads."""
    r = subprocess.run([build("plat_sim_test"), str(tmp_path)], capture_output=True, text=True,
                       timeout=120, env={**os.environ, **SAN_ENV})
    assert_plat_pass(r.stdout, r.stderr, r.returncode, "plat_sim_test")
    assert r.stdout.count("PLAT PASS") >= 80


def test_xentest_self_on_sim(build, tmp_path):
    r = subprocess.run([build("plat_xentest"), "self"], capture_output=True, text=True,
                       timeout=60, env=sim_env(tmp_path / "sim", 0))
    assert_plat_pass(r.stdout, r.stderr, r.returncode, "plat_xentest self")
    assert "PLAT PASS: 3 kicks in a row coalesce: 1 event(s)" in r.stdout
    assert "the new binding started with 1 event(s)" in r.stdout
    assert sorted(os.listdir(tmp_path / "sim")) == ["gnt.0.next", "lock"]


def test_xentest_self_on_a_model_of_the_xen_devices(build):
    """platform_xen.c's ioctl/mmap/read/write sequences, against plat_fakexen.c's model of the
    Linux drivers (no /dev/xen here; the real ones are the real-Xen harness's business)."""
    r = subprocess.run([build("plat_xentest", fakexen=True), "self", "0"], capture_output=True,
                       text=True, timeout=60, env={**os.environ, **SAN_ENV, "MW_BACKEND": "xen"})
    assert_plat_pass(r.stdout, r.stderr, r.returncode, "plat_xentest self on fakexen")
    assert "PLAT INFO: backend=xen" in r.stdout
    # Xen re-delivers a kick that came while the port was masked: 3 kicks -> 2 events
    assert "PLAT PASS: 3 kicks in a row coalesce: 2 event(s)" in r.stdout
    assert "the new binding started with 1 event(s)" in r.stdout


def offer(build, tmp_path, npages, offer_dom=1, remote=2):
    """Start `plat_xentest offer` as domain offer_dom; return (process, "REFS PORT" words)."""
    f = tmp_path / "offer.txt"
    proc = subprocess.Popen([build("plat_xentest"), "offer", str(remote), str(f), str(npages)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=sim_env(tmp_path / "sim", offer_dom))
    deadline = time.monotonic() + 30
    while not f.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if not f.exists():
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"offer wrote no file\n{out}\n{err}")
    return proc, f.read_text().split()


@pytest.mark.parametrize("npages", [1, 16])
def test_xentest_offer_map_two_processes(build, tmp_path, npages):
    """The cross-domain exchange of the real-Xen test, between two sim domains."""
    proc, words = offer(build, tmp_path, npages)
    refs, port = words
    assert len(refs.split(",")) == npages
    try:
        m = subprocess.run([build("plat_xentest"), "map", "1", refs, port], capture_output=True,
                           text=True, timeout=60, env=sim_env(tmp_path / "sim", 2))
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert_plat_pass(m.stdout, m.stderr, m.returncode, "map (domain 2)")
    assert_plat_pass(out, err, proc.returncode, "offer (domain 1)")
    assert sorted(os.listdir(tmp_path / "sim")) == ["gnt.1.next", "lock"]


def test_xentest_map_by_the_wrong_domain_fails(build, tmp_path):
    """Domain 3 claims pages granted to domain 2: the mapper reports EPERM and FAIL."""
    proc, (refs, port) = offer(build, tmp_path, 2)
    try:
        m = subprocess.run([build("plat_xentest"), "map", "1", refs, port], capture_output=True,
                           text=True, timeout=60, env=sim_env(tmp_path / "sim", 3))
    finally:
        proc.terminate()
        proc.communicate()
    assert m.returncode == 1
    assert "PLAT RESULT: FAIL" in m.stdout
    assert "PLAT FAIL: map: map 2 pages of domain 1 (rc=-1 Operation not permitted)" in m.stdout


def test_xentest_usage(build):
    r = subprocess.run([build("plat_xentest"), "map", "1"], capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr


def test_doorbell_rtt(build, tmp_path, capsys):
    """Wake-up latency of the sim doorbell: ping-pong between two processes (no sanitizers)."""
    rounds = 20000
    r = subprocess.run([build("plat_sim_test", sanitize=False), "rtt", str(tmp_path), str(rounds)],
                       capture_output=True, text=True, timeout=120)
    assert_plat_pass(r.stdout, r.stderr, r.returncode, "rtt")
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("PLAT-RATE")]
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    rtt_us = float(lines[0].split("doorbell_rtt_us=")[1].split()[0])
    assert 0 < rtt_us < 1000, lines


def test_spin_unit(tmp_path):
    """The engines' poll-before-sleep helper (xen/include/mwcomms/spin.h), under ASan/UBSan."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    exe = tmp_path / "spin_unit"
    cmd = ["gcc", "-std=gnu11", "-Wall", "-Wextra", "-Werror", *SANITIZE,
           "-I", str(ROOT / "xen" / "include"), str(ROOT / "tests" / "c" / "spin_unit.c"),
           "-lpthread", "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr}"
    p = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, **SAN_ENV})
    assert "SPIN FAIL" not in p.stdout and "SPIN RESULT: PASS" in p.stdout, p.stdout + p.stderr
    assert p.returncode == 0 and "runtime error" not in p.stderr, p.stderr
