"""mwcommsd's introspection (mwcomms/engine/introspect.c: INFO, SOCKETS, TRACE and the hooks
that feed them) under AddressSanitizer + UBSan: the cffi extension is rebuilt with the
sanitizers into a private copy of the installed package, and the live-backbone tests of
test_backbone.py that drive those ops run against daemons that load it. A sanitizer report in
any daemon's log fails the test."""
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_introspection_under_sanitizers(tmp_path, sanitized_package):
    # run directories outside pytest's 0700 tree (the rights test acts as another user)
    runs = pathlib.Path(tempfile.mkdtemp(prefix="mwctl-asan-"))
    runs.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": sanitized_package.overlay, "PYTHONSAFEPATH": "1",
           "MWCTL_TEST_DAEMON_PRELOAD": sanitized_package.preload, "MWCTL_TEST_RUN_BASE": str(runs),
           "ASAN_OPTIONS": "detect_leaks=0:verify_asan_link_order=0",
           "UBSAN_OPTIONS": "print_stacktrace=1"}
    env.pop("LD_PRELOAD", None)
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "--basetemp", str(tmp_path / "inner"), "-k",
                            "status or sockets or stats or trace or rights",
                            str(ROOT / "tests" / "mwctl" / "test_backbone.py")],
                           env=env, cwd="/", capture_output=True, text=True, timeout=900)
        logs = {p: p.read_text(errors="replace") for p in runs.rglob("*.log")}
    finally:
        shutil.rmtree(runs, ignore_errors=True)
    assert r.returncode == 0, r.stdout[-5000:]
    assert " passed" in r.stdout
    assert any(p.name == "mwcommsd.log" for p in logs), "the daemons left no logs"
    bad = [text for text in logs.values() if any(m in text for m in sanitized_package.reports)]
    assert not bad, "\n".join(text[-3000:] for text in bad)
