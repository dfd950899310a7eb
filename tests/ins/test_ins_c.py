"""tests/c/ins_front.c: a test frontend in C and the INS engine in one program, built with
AddressSanitizer + UBSan, run over sim shared areas: PING, TCP both ways with checksums, ACCEPT,
UDP with addresses, GETADDRINFO, errors, hostile frontends that must be disconnected alone
while another frontend is still served, and frontends that scribble random bytes over their
whole area while they have live sockets."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ([ROOT / "tests" / "c" / "ins_front.c"] + sorted((ROOT / "ins" / "engine").glob("*.c"))
           + [ROOT / "xen" / n for n in ("ring.c", "codec.c", "platform.c", "platform_sim.c",
                                        "platform_xen.c")])
SANITIZE = ["-g", "-O1", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all"]
CASES = ["ping", "tcp", "accept", "udp", "dns", "errors", "hostile", "chaos"]
HOSTILE = ["slot out of range", "slot not open", "ring offsets", "request index", "tx index",
           "rx consumer index", "fq event", "out-of-line buffer"]


def _build(out, flags):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    cmd = ["gcc", "-std=gnu11", "-Wall", "-Wextra", "-Werror", *flags,
           "-I", str(ROOT / "xen" / "include"), "-I", str(ROOT / "ins" / "engine"),
           *map(str, SOURCES), "-lpthread", "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr}"
    return str(out)


@pytest.fixture(scope="module")
def ins_front(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("ins-c") / "ins_front", SANITIZE)


def test_ins_front_under_sanitizers(ins_front, tmp_path):
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    r = subprocess.run([ins_front, str(tmp_path / "sim")], capture_output=True, text=True,
                       timeout=180, env=env)
    out = r.stdout + r.stderr
    assert "AddressSanitizer" not in out and "runtime error" not in out, out
    assert r.returncode == 0 and "INS-FRONT OK" in r.stdout, out
    oks = set(re.findall(r"^ok (.+?)(?: \(|$)", r.stdout, re.M))
    assert set(CASES) <= oks, out
    assert {f"hostile {h}" for h in HOSTILE} <= oks, out


def test_ins_throughput(tmp_path, record_property):
    """256 MiB each way through the engine and a loopback TCP connection, 256 KiB rings, at -O2
    (printed as INS-RATE; run pytest with -s to see it)."""
    exe = _build(tmp_path / "ins_front_o2", ["-O2", "-g"])
    r = subprocess.run([exe, str(tmp_path / "sim"), "bench"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "INS-FRONT OK" in r.stdout, r.stdout + r.stderr
    line = re.search(r"^INS-RATE .*$", r.stdout, re.M).group(0)
    print(line)
    rates = dict(kv.split("=") for kv in line.split()[1:])
    for k, v in rates.items():
        record_property(k, v)
    assert float(rates["up_mb_s"]) > 0 and float(rates["down_mb_s"]) > 0
