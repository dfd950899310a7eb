"""The mwcommsd engine under AddressSanitizer + UBSan, end to end: the cffi extension is built
again with the sanitizers into a private copy of the installed package, and the end-to-end
tests of test_mwcommsd.py run against daemons (mwcommsd and the INS) that load it. Any
sanitizer report in their logs fails the test."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_end_to_end_under_sanitizers(tmp_path, sanitized_package):
    env = {**os.environ, "PYTHONPATH": sanitized_package.overlay, "PYTHONSAFEPATH": "1",
           "LD_PRELOAD": sanitized_package.preload,
           "ASAN_OPTIONS": "detect_leaks=0:verify_asan_link_order=0",
           "UBSAN_OPTIONS": "print_stacktrace=1"}
    base = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "--basetemp", str(base), "-k", "not shim and not sanitizers",
                        str(ROOT / "tests" / "mwcomms" / "test_mwcommsd.py")],
                       env=env, cwd="/", capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-5000:]
    reports = [p for p in base.rglob("*.err")
               if any(m in p.read_text(errors="replace")
                      for m in sanitized_package.reports)]
    assert not reports, "\n".join(p.read_text(errors="replace")[-3000:] for p in reports)
    assert " passed" in r.stdout
