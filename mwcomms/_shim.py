"""Where tcp_ip_wrapper.so, the LD_PRELOAD library built from shim/, is installed."""
import errno
import os

__all__ = ["shim_path"]


def shim_path() -> str:
    """Return the absolute path of the installed tcp_ip_wrapper.so.

    Raises FileNotFoundError (errno ENOENT) when the package was installed without it.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib", "tcp_ip_wrapper.so")
    if not os.path.isfile(path):
        raise FileNotFoundError(errno.ENOENT, "tcp_ip_wrapper.so is not installed", path)
    return path
