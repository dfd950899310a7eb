"""The handshake tables, run as two processes over an in-memory pair of `state` nodes.

Hypothesis picks the schedule: which side moves next, when a side leaves cleanly, when it
crashes (its state node stays behind, stale) and when a new process starts. Whatever the
schedule, once both sides run undisturbed they must both reach Connected, with the frontend
set up exactly once per connection and the backend connected exactly while the frontend is.
"""
from hypothesis import given, settings, strategies as st

from mwcomms.xen._xenbus_state import (Act, XenbusState as S, backend_step, frontend_step,
                                       stale_start)


class Side:
    def __init__(self, name, table):
        self.name, self.table = name, table
        self.alive, self.want, self.resources = True, True, False
        self.resetting = False

    def step(self, store, peer_name):
        if not self.alive:
            return False
        me, peer = store[self.name], store[peer_name]
        want = self.want and not self.resetting
        step = self.table(me, peer, want=want)
        if step.act is Act.NOTHING and step.state is None:
            if self.resetting and me in (S.CLOSED, S.UNKNOWN, S.INITIALISING):
                self.resetting = False
                return True
            return False
        if step.act in (Act.SETUP, Act.CONNECT):
            assert not self.resources or step.act is Act.SETUP, "connect while connected"
            self.resources = True
        elif step.act is Act.TEARDOWN:
            self.resources = False
        if step.state is not None:
            store[self.name] = step.state
        return True

    def start(self, store):
        """A new process: it owns nothing; a stale state makes it close first."""
        self.alive, self.want, self.resources = True, True, False
        self.resetting = stale_start(store[self.name])


def run_until_quiet(front, back, store, limit=100):
    for _ in range(limit):
        moved = front.step(store, "B") | back.step(store, "F")
        if not moved:
            return True
    return False


events = st.lists(st.sampled_from(["F", "B", "crash-F", "crash-B", "leave-F", "leave-B",
                                    "start-F", "start-B"]), max_size=40)


@settings(max_examples=1000, deadline=None)
@given(first=st.sampled_from(["F", "B"]), schedule=events)
def test_any_schedule_reaches_connected(first, schedule):
    store = {"F": S.INITIALISING, "B": S.INITIALISING}   # as the toolstack creates them
    front, back = Side("F", frontend_step), Side("B", backend_step)
    # Only the first side runs at first: the other starts later (either order).
    (back if first == "F" else front).alive = False
    for ev in schedule:
        side = front if ev.endswith("F") else back
        other = "B" if side is front else "F"
        if ev in ("F", "B"):
            side.step(store, other)
        elif ev.startswith("crash"):
            side.alive = False          # dies without a word: its state stays as it was
            side.resources = False
        elif ev.startswith("leave"):
            side.want = False
        elif ev.startswith("start") and not side.alive:
            side.start(store)
    # Whatever happened, restart the dead and let both run.
    for side in (front, back):
        if not side.alive or not side.want:
            side.alive = False
            side.start(store)
    assert run_until_quiet(front, back, store), f"no quiescence: {store}"
    assert store == {"F": S.CONNECTED, "B": S.CONNECTED}, store
    assert front.resources and back.resources


@settings(max_examples=300, deadline=None)
@given(schedule=st.lists(st.sampled_from(["F", "B"]), max_size=30))
def test_front_leave_ends_closed_and_backend_waits(schedule):
    store = {"F": S.INITIALISING, "B": S.INITIALISING}
    front, back = Side("F", frontend_step), Side("B", backend_step)
    assert run_until_quiet(front, back, store)
    front.want = False
    for ev in schedule:
        (front if ev == "F" else back).step(store, "B" if ev == "F" else "F")
    assert run_until_quiet(front, back, store)
    assert store["F"] == S.CLOSED and not front.resources
    assert store["B"] == S.INITWAIT and not back.resources   # ready for the next frontend


def test_garbage_state_reads_as_unknown():
    assert S.parse(b"4") is S.CONNECTED
    for raw in (None, b"", b"x", b"99", b"-1", b"4 4", "\u00e9".encode(), b"0004"):
        assert S.parse(raw) is S.UNKNOWN, raw


def test_backend_in_initwait_ignores_closed_frontend():
    # A frontend passes through Closed between teardown and setup: the backend must not
    # cycle through Closing/Closed for it.
    step = backend_step(S.INITWAIT, S.CLOSED)
    assert step.act is Act.NOTHING and step.state is None
