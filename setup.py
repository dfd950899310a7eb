"""Build glue that pyproject.toml cannot express: the cffi extension mwcomms._native, and
tcp_ip_wrapper.so (the LD_PRELOAD shim, no Python in it) installed as mwcomms/lib/."""
import os
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

SHIM_SOURCES = ["shim/tcp_ip_wrapper.c"]
SHIM_MAP = "shim/tcp_ip_wrapper.map"


class build_py_with_shim(build_py):
    """build_py, then gcc builds the shim into the package's lib/ folder."""

    def run(self):
        super().run()
        out = os.path.join(self.build_lib, "mwcomms", "lib", "tcp_ip_wrapper.so")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        cc = os.environ.get("CC", "gcc")
        cmd = [cc, "-O2", "-g", "-Wall", "-Wextra", "-fPIC", "-shared", "-fvisibility=hidden",
               "-Ixen/include", "-Imwcomms/include", f"-Wl,--version-script={SHIM_MAP}",
               "-o", out, *SHIM_SOURCES, "-ldl", "-lpthread"]
        self.announce(" ".join(cmd), level=2)
        subprocess.run(cmd, check=True)


setup(cffi_modules=["mwcomms/_native_build.py:ffibuilder"],
      cmdclass={"build_py": build_py_with_shim})
