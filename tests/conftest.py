"""Fixtures shared across the test folders."""
import os
import pathlib
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SAN_FLAGS = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
SAN_REPORTS = ("runtime error", "AddressSanitizer", "LeakSanitizer")


def _runtime(name):
    out = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True)
    path = out.stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.fixture(scope="session")
def sanitized_package(tmp_path_factory):
    """A private copy of the installed package whose cffi extension is built again with
    AddressSanitizer + UBSan, once per session (the build takes a minute or two): tests run
    daemons with PYTHONPATH=overlay and LD_PRELOAD=preload. Skips without gcc's runtimes."""
    import mwcomms
    asan, ubsan = _runtime("libasan.so"), _runtime("libubsan.so")
    if shutil.which("gcc") is None or not asan or not ubsan:
        pytest.skip("gcc with libasan and libubsan is needed")
    tmp = tmp_path_factory.mktemp("sanitized")
    src = tmp / "src"
    for part in ("xen", "mwcomms", "ins"):
        shutil.copytree(ROOT / part, src / part, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    build = src / "mwcomms" / "_native_build.py"
    text = build.read_text()
    anchor = '"-fvisibility=hidden"]'
    assert anchor in text, "the build script changed: update this fixture"
    flags = ", ".join(f'"{f}"' for f in SAN_FLAGS)
    build.write_text(text.replace(anchor, f'"-fvisibility=hidden", {flags}],\n'
                                  '    extra_link_args=["-fsanitize=address,undefined"]'))
    r = subprocess.run([sys.executable, "-c", "import runpy; runpy.run_path("
                        "'mwcomms/_native_build.py')['ffibuilder'].compile(tmpdir='.')"],
                       cwd=src, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    built = list((src / "mwcomms").glob("_native*.so"))
    assert len(built) == 1
    overlay = tmp / "pkg"
    shutil.copytree(os.path.dirname(mwcomms.__file__), overlay / "mwcomms",
                    ignore=shutil.ignore_patterns("_native*.so", "__pycache__"))
    shutil.copy(built[0], overlay / "mwcomms")
    return SimpleNamespace(overlay=str(overlay), preload=f"{asan} {ubsan}",
                           reports=SAN_REPORTS)
