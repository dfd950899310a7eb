"""C programs run natively (own network namespace, loopback only) and through the backbone:
the same lines.

- fortified.c, built as distributions build programs (-O2 -D_FORTIFY_SOURCE=2): its read(),
  recv() and recvfrom() are the checked forms __read_chk, __recv_chk, __recvfrom_chk;
- resolver.c: gethostbyname(_r), gethostbyname2(_r), gethostbyaddr(_r) and their h_errno,
  getaddrinfo flags, getnameinfo (EAI_OVERFLOW, NI_NAMEREQD).
"""
import shutil
import subprocess
from pathlib import Path

import pytest

PROGRAMS = Path(__file__).resolve().parent / "programs"


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    if not shutil.which("gcc") or not shutil.which("nm"):
        pytest.skip("needs gcc and nm (binutils)")
    out = tmp_path_factory.mktemp("cprogs")

    def _build(name, *flags):
        exe = out / name
        subprocess.run(["gcc", "-O2", *flags, "-Wall", "-Wextra", "-Werror", "-o", str(exe),
                        str(PROGRAMS / f"{name}.c")], check=True)
        return str(exe)
    return _build


def same_as_native(backbone, exe):
    native = subprocess.run(["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && "$0"',
                             exe], capture_output=True, text=True, timeout=30)
    assert native.stdout.endswith("DONE\n"), native.stdout + native.stderr
    fwd = backbone.run([exe], timeout=30)
    assert fwd.stdout == native.stdout, fwd.stdout + fwd.stderr


def test_checked_forms_same_as_native(backbone, build):
    exe = build("fortified", "-D_FORTIFY_SOURCE=2")
    syms = subprocess.run(["nm", "-D", exe], capture_output=True, text=True).stdout
    for name in ("__read_chk", "__recv_chk", "__recvfrom_chk"):
        assert name in syms, f"the compiler did not emit {name}: the test proves nothing"
    same_as_native(backbone, exe)


def test_resolver_calls_same_as_native(backbone, build):
    same_as_native(backbone, build("resolver"))
