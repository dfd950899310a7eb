"""The XenbusState handshake of one mwcomms device, as data.

Everything that decides a state change of the handshake lives here: the two tables below, one
per side. This module does no I/O: the driver in xenbus.py reads both states from XenStore,
asks `frontend_step` / `backend_step` what to do, and does it. The tables are level-triggered:
they look only at the two current states, never at how they got there, so a missed or merged
watch event cannot wedge the handshake.

Rules (the frontend F is mwcommsd, the backend B is the INS; "absent" reads as Unknown):

  Connecting
  1. B advertises: when B is Unknown/Initialising/Closed and F is not Closing, B writes its
     versions, features and limits and switches to InitWait.
  2. F sets up: when F is Unknown/Initialising/Closed and B is InitWait, F shares the area,
     allocates the event channel, writes its keys and switches to Initialised (keys and state
     in one transaction).
  3. B connects: when B is InitWait and F is Initialised, B reads F's keys, maps the area,
     binds the event channel and switches to Connected.
  4. F connects: when F is Initialised and B is Connected, F switches to Connected.

  Going away (either side, cleanly or not)
  5. F leaves: F switches to Closing, waits for B to be Closed, Unknown or InitWait, then
     switches to Closed. A new F that finds a stale Initialised/Connected left by a dead one
     starts with this rule.
  6. B follows F down: when B is Connected and F is Closing/Closed/Unknown/Initialising, B
     disconnects and goes Closing, then Closed (and rule 1 re-advertises). A B in InitWait has
     nothing to undo and simply stays there for the next F.
  7. B leaves: B switches to Closing, disconnects, then Closed. A new B that finds a stale
     InitWait/Connected left by a dead one starts with this rule.
  8. F follows B down: when F is Initialised/Connected and B is Closing/Closed/Unknown/
     Initialising, or F is Connected and B is InitWait (a new B that did not close the old one),
     F tears down and switches to Closed; rule 2 then sets up again once B is back in InitWait.

A device that the toolstack removed (its directory is gone) is not a state: the driver tears
down and writes nothing until the directory is back.

Setup failures (rule 2 or 3 failing) make that side write an `error` key and behave as in
rules 5 / 7; the driver waits before retrying so that a persistent failure does not spin.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class XenbusState(enum.IntEnum):
    """The states of xen/include/public/io/xenbus.h."""

    UNKNOWN = 0
    INITIALISING = 1
    INITWAIT = 2
    INITIALISED = 3
    CONNECTED = 4
    CLOSING = 5
    CLOSED = 6
    RECONFIGURING = 7
    RECONFIGURED = 8

    @classmethod
    def parse(cls, raw: bytes | str | None) -> "XenbusState":
        """Decode a `state` node written by the other side. Absent or malformed reads as
        UNKNOWN: a peer that writes garbage is treated as a peer that is not there."""
        if raw is None:
            return cls.UNKNOWN
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("ascii")
            except UnicodeDecodeError:
                return cls.UNKNOWN
        raw = raw.strip()
        if not raw.isdigit() or len(raw) > 2:
            return cls.UNKNOWN
        value = int(raw)
        return cls(value) if value in cls._value2member_map_ else cls.UNKNOWN


S = XenbusState


class Act(enum.Enum):
    """What a side must do before writing its next state."""

    ADVERTISE = "advertise"    # backend: write versions/features/limits
    SETUP = "setup"            # frontend: share area, event channel, write keys
    CONNECT = "connect"        # backend: map area, bind event channel
    TEARDOWN = "teardown"      # either: stop the engine, unmap/unshare, unbind
    NOTHING = "nothing"


@dataclass(frozen=True)
class Step:
    """The answer of a table: an action, then the state to write (None: leave it)."""

    act: Act
    state: XenbusState | None


WAIT = Step(Act.NOTHING, None)

_GONE = {S.UNKNOWN, S.CLOSING, S.CLOSED}
_FRESH = {S.UNKNOWN, S.INITIALISING, S.CLOSED}

# (my states, peer states, step): the first matching row wins. want=True rows apply while the
# side wants to be connected; want=False rows while it is leaving.
_FRONT_CONNECT = [
    ({S.INITIALISED, S.CONNECTED}, _GONE | {S.INITIALISING}, Step(Act.TEARDOWN, S.CLOSED)),  # 8
    ({S.CONNECTED}, {S.INITWAIT}, Step(Act.TEARDOWN, S.CLOSED)),                              # 8
    (_FRESH, {S.INITWAIT}, Step(Act.SETUP, S.INITIALISED)),                                  # 2
    ({S.INITIALISED}, {S.CONNECTED}, Step(Act.NOTHING, S.CONNECTED)),                        # 4
    ({S.CLOSING}, _GONE | {S.INITWAIT, S.INITIALISING}, Step(Act.NOTHING, S.CLOSED)),        # 5
]

_FRONT_LEAVE = [
    ({S.INITIALISED, S.CONNECTED}, set(S), Step(Act.TEARDOWN, S.CLOSING)),                   # 5
    ({S.CLOSING}, _GONE | {S.INITWAIT, S.INITIALISING}, Step(Act.NOTHING, S.CLOSED)),        # 5
]

_BACK_CONNECT = [
    ({S.CONNECTED}, _GONE | {S.INITIALISING}, Step(Act.TEARDOWN, S.CLOSING)),               # 6
    ({S.CLOSING}, set(S), Step(Act.NOTHING, S.CLOSED)),                                      # 6
    (_FRESH, set(S) - {S.CLOSING}, Step(Act.ADVERTISE, S.INITWAIT)),                         # 1
    ({S.INITWAIT}, {S.INITIALISED}, Step(Act.CONNECT, S.CONNECTED)),                         # 3
]

_BACK_LEAVE = [
    ({S.INITWAIT, S.CONNECTED, S.INITIALISING}, set(S), Step(Act.TEARDOWN, S.CLOSING)),      # 7
    ({S.CLOSING}, set(S), Step(Act.NOTHING, S.CLOSED)),                                      # 7
]


def _lookup(table, me: XenbusState, peer: XenbusState) -> Step:
    for mine, theirs, step in table:
        if me in mine and peer in theirs:
            return step
    return WAIT


def frontend_step(me: XenbusState, peer: XenbusState, *, want: bool = True) -> Step:
    """What the frontend does next, given its own state and the backend's."""
    return _lookup(_FRONT_CONNECT if want else _FRONT_LEAVE, me, peer)


def backend_step(me: XenbusState, peer: XenbusState, *, want: bool = True) -> Step:
    """What the backend does next, given its own state and the frontend's."""
    return _lookup(_BACK_CONNECT if want else _BACK_LEAVE, me, peer)


def stale_start(me: XenbusState) -> bool:
    """True when a side that just started finds a state its dead predecessor left behind and
    must first go through Closing (rules 5 and 7)."""
    return me in {S.INITWAIT, S.INITIALISED, S.CONNECTED}
