"""A C program built as distributions build them (-O2 -D_FORTIFY_SOURCE=2): its read(),
recv() and recvfrom() are the checked forms __read_chk, __recv_chk, __recvfrom_chk. Run
natively (own network namespace, loopback only) and through the backbone: same lines.
"""
import shutil
import subprocess
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent / "programs" / "fortified.c"


@pytest.fixture(scope="module")
def fortified(tmp_path_factory):
    if not shutil.which("gcc") or not shutil.which("nm"):
        pytest.skip("needs gcc and nm (binutils)")
    exe = tmp_path_factory.mktemp("fortified") / "fortified"
    subprocess.run(["gcc", "-O2", "-D_FORTIFY_SOURCE=2", "-Wall", "-Wextra", "-Werror", "-o",
                    str(exe), str(SRC)], check=True)
    return str(exe)


def test_checked_forms_same_as_native(backbone, fortified):
    syms = subprocess.run(["nm", "-D", fortified], capture_output=True, text=True).stdout
    for name in ("__read_chk", "__recv_chk", "__recvfrom_chk"):
        assert name in syms, f"the compiler did not emit {name}: the test proves nothing"
    native = subprocess.run(["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && "$0"',
                             fortified], capture_output=True, text=True, timeout=30)
    assert native.stdout.endswith("DONE\n"), native.stdout + native.stderr
    fwd = backbone.run([fortified], timeout=30)
    assert fwd.stdout == native.stdout, fwd.stdout + fwd.stderr
