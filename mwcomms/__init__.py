"""mwcomms: forward the sockets of unmodified Linux programs to an isolated network stack."""

from mwcomms._shim import shim_path

__all__ = ["shim_path"]
