"""The XenStore wire format (xen/include/public/io/xs_wire.h), sans-IO.

Every message in either direction is a 16-byte header, four native-endian uint32 (type,
req_id, tx_id, len), followed by `len` bytes of payload: NUL-terminated strings, except for
the value of a WRITE and of a READ reply, which are raw bytes. A payload may not exceed
XENSTORE_PAYLOAD_MAX; a client that announces more is a broken client and is dropped, as the
C xenstored does. An error reply has type ERROR and the errno *name* as payload ("ENOENT\\0").
"""
from __future__ import annotations

import enum
import errno
import struct
from typing import Iterator, NamedTuple

__all__ = ["Op", "HEADER", "PAYLOAD_MAX", "ABS_PATH_MAX", "REL_PATH_MAX", "DOMID_SELF",
           "DOMID_FIRST_RESERVED", "Message", "FrameError", "Reader", "encode", "error_payload"]

HEADER = struct.Struct("=IIII")
PAYLOAD_MAX = 4096          # XENSTORE_PAYLOAD_MAX: a longer message kills the connection
ABS_PATH_MAX = 3072         # XENSTORE_ABS_PATH_MAX
REL_PATH_MAX = 2048         # XENSTORE_REL_PATH_MAX
DOMID_FIRST_RESERVED = 0x7FF0
DOMID_SELF = 0x7FF0


class Op(enum.IntEnum):
    """enum xsd_sockmsg_type. 20 (XS_RESTRICT) was removed from the protocol."""
    CONTROL = 0
    DIRECTORY = 1
    READ = 2
    GET_PERMS = 3
    WATCH = 4
    UNWATCH = 5
    TRANSACTION_START = 6
    TRANSACTION_END = 7
    INTRODUCE = 8
    RELEASE = 9
    GET_DOMAIN_PATH = 10
    WRITE = 11
    MKDIR = 12
    RM = 13
    SET_PERMS = 14
    WATCH_EVENT = 15
    ERROR = 16
    IS_DOMAIN_INTRODUCED = 17
    RESUME = 18
    SET_TARGET = 19
    RESET_WATCHES = 21
    DIRECTORY_PART = 22


# The errors a reply may name (xsd_errors[] in xs_wire.h); anything else is sent as EINVAL.
WIRE_ERRORS = frozenset({
    errno.EINVAL, errno.EACCES, errno.EEXIST, errno.EISDIR, errno.ENOENT, errno.ENOMEM,
    errno.ENOSPC, errno.EIO, errno.ENOTEMPTY, errno.ENOSYS, errno.EROFS, errno.EBUSY,
    errno.EAGAIN, errno.EISCONN, errno.E2BIG, errno.EPERM,
})


class Message(NamedTuple):
    type: int
    req_id: int
    tx_id: int
    payload: bytes


class FrameError(Exception):
    """The peer broke the framing (a length beyond PAYLOAD_MAX): drop the connection."""


class Reader:
    """Cut a byte stream into messages. feed() returns the complete ones, in order."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[Message]:
        self._buf += data
        while len(self._buf) >= HEADER.size:
            mtype, req_id, tx_id, length = HEADER.unpack_from(self._buf)
            if length > PAYLOAD_MAX:
                raise FrameError(f"payload length {length} > {PAYLOAD_MAX}")
            end = HEADER.size + length
            if len(self._buf) < end:
                return
            payload = bytes(self._buf[HEADER.size:end])
            del self._buf[:end]
            yield Message(mtype, req_id, tx_id, payload)

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete message."""
        return len(self._buf)


def encode(msg: Message) -> bytes:
    return HEADER.pack(msg.type, msg.req_id, msg.tx_id, len(msg.payload)) + msg.payload


def error_payload(err: int) -> bytes:
    """The payload of an ERROR reply: the errno's name, NUL-terminated."""
    if err not in WIRE_ERRORS:
        err = errno.EINVAL
    return errno.errorcode[err].encode() + b"\0"
