"""The mwcommsd engine under AddressSanitizer + UBSan, end to end: the cffi extension is built
again with the sanitizers into a private copy of the installed package, and the end-to-end
tests of test_mwcommsd.py run against daemons (mwcommsd and the INS) that load it. Any
sanitizer report in their logs fails the test."""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FLAGS = '"-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"'


def _lib(name):
    out = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True)
    path = out.stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.mark.slow
def test_end_to_end_under_sanitizers(tmp_path):
    import mwcomms
    asan, ubsan = _lib("libasan.so"), _lib("libubsan.so")
    if shutil.which("gcc") is None or not asan or not ubsan:
        pytest.skip("gcc with libasan and libubsan is needed")
    src = tmp_path / "src"
    for part in ("xen", "mwcomms", "ins"):
        shutil.copytree(ROOT / part, src / part, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    build = src / "mwcomms" / "_native_build.py"
    text = build.read_text()
    assert '"-fvisibility=hidden"]' in text
    build.write_text(text.replace('"-fvisibility=hidden"]',
                                  f'"-fvisibility=hidden", {FLAGS}],\n'
                                  '    extra_link_args=["-fsanitize=address,undefined"]'))
    r = subprocess.run([sys.executable, "-c", "import runpy; runpy.run_path("
                        "'mwcomms/_native_build.py')['ffibuilder'].compile(tmpdir='.')"],
                       cwd=src, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    built = list((src / "mwcomms").glob("_native*.so"))
    assert len(built) == 1
    overlay = tmp_path / "pkg"
    shutil.copytree(os.path.dirname(mwcomms.__file__), overlay / "mwcomms",
                    ignore=shutil.ignore_patterns("_native*.so", "__pycache__"))
    shutil.copy(built[0], overlay / "mwcomms")
    env = {**os.environ, "PYTHONPATH": str(overlay), "PYTHONSAFEPATH": "1",
           "LD_PRELOAD": f"{asan} {ubsan}",
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
                      for m in ("runtime error", "AddressSanitizer", "LeakSanitizer"))]
    assert not reports, "\n".join(p.read_text(errors="replace")[-3000:] for p in reports)
    assert " passed" in r.stdout
