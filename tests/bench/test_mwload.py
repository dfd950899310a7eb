"""The bench's C load program, built under AddressSanitizer + UBSan and run natively over this
host's loopback with tiny counts: every mode prints one valid result (numbers that add up),
bad usage prints an error object, and nothing leaks or trips the sanitizers."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "tools" / "bench" / "mwload.c"
ENV = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0", "UBSAN_OPTIONS": "halt_on_error=1",
       "PATH": "/usr/bin:/bin"}

pytestmark = pytest.mark.skipif(not shutil.which("gcc"), reason="needs gcc")


@pytest.fixture(scope="module")
def mwload(tmp_path_factory):
    exe = tmp_path_factory.mktemp("mwload") / "mwload"
    subprocess.run(["gcc", "-g", "-O1", "-Wall", "-Wextra", "-Werror",
                    "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                    "-o", str(exe), str(SRC)], check=True)
    return str(exe)


def run(mwload, *args, stdin=None):
    p = subprocess.run([mwload, *args], input=stdin, capture_output=True, text=True, timeout=60,
                       env=ENV)
    assert "Sanitizer" not in p.stderr, p.stderr
    return p.returncode, [json.loads(line) for line in p.stdout.splitlines()]


@pytest.mark.parametrize("mode", ["rr", "udp"])
def test_round_trips(mwload, mode):
    rc, (res,) = run(mwload, mode, "--count", "300", "--warmup", "20", "--size", "100")
    assert rc == 0 and res["mode"] == mode and res["size"] == 100
    assert res["count"] + res["lost"] == 300
    assert 0 < res["min_us"] <= res["p50_us"] <= res["p90_us"] <= res["p99_us"] <= res["max_us"]


@pytest.mark.parametrize("streams", [1, 3])
def test_bulk(mwload, streams):
    rc, (res,) = run(mwload, "bulk", "--streams", str(streams), "--seconds", "0.2",
                     "--chunk", "8192")
    assert rc == 0 and res["streams"] == streams and res["bytes"] > 0
    assert res["bytes_per_s"] == pytest.approx(res["bytes"] / res["seconds"], rel=1e-3)


def test_connect(mwload):
    rc, (res,) = run(mwload, "connect", "--seconds", "0.2")
    assert rc == 0 and res["count"] > 0
    assert res["per_s"] == pytest.approx(res["count"] / res["seconds"], rel=1e-3)


def test_hold_both_ends(mwload):
    rc, (start, ready) = run(mwload, "hold", "--conns", "40", stdin="go\n")
    assert rc == 0 and start["phase"] == "start" and len(start["pids"]) == 2
    assert ready["conns"] == ready["accepted"] == ready["wanted"] == 40


def test_hold_to_a_separate_acceptor(mwload):
    acc = subprocess.Popen([mwload, "accept"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           text=True, env=ENV)
    try:
        port = json.loads(acc.stdout.readline())["port"]
        rc, (start, ready) = run(mwload, "hold", "--conns", "25", "--port", str(port),
                                 stdin="go\n")
        assert rc == 0 and len(start["pids"]) == 1 and ready["conns"] == 25
        assert ready["accepted"] == -1      # not its own server: it cannot know
    finally:
        acc.stdin.close()
    assert json.loads(acc.stdout.readline())["accepted"] == 25
    assert acc.wait(10) == 0


@pytest.mark.parametrize("args,msg", [(["bogus"], "unknown mode"), (["rr", "--count"], "needs a value"),
                                      (["rr", "--count", "0"], "must be positive"),
                                      (["rr", "--nope", "1"], "unknown option")])
def test_usage_errors(mwload, args, msg):
    rc, (res,) = run(mwload, *args)
    assert rc == 1 and msg in res["error"]
