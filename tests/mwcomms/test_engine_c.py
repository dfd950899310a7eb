"""mwcommsd's engine pieces in C, under AddressSanitizer + UBSan: tests/c/front_*.c."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ENGINE = os.path.join(ROOT, "mwcomms", "engine")
SANITIZE = ["-g", "-O1", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all"]


def test_buddy_allocator_under_sanitizers(tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    exe = str(tmp_path / "front_buddy")
    subprocess.run(["gcc", "-std=gnu11", "-Wall", "-Wextra", "-Werror", *SANITIZE, "-I", ENGINE,
                    "-o", exe, os.path.join(ROOT, "tests", "c", "front_buddy.c"),
                    os.path.join(ENGINE, "fe_buddy.c")], check=True)
    r = subprocess.run([exe], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "OK buddy 21"
