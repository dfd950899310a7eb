"""The link probe from Python: run one side of mw_probe_* (xen/include/mwcomms/probe.h) over a
connection that the handshake has set up (a connection.FrontLink or connection.BackLink).

The C side does all the work and touches every shared index; Python only passes the area,
its geometry and the event channel in, and the figures out. The call releases the GIL.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from mwcomms._native import ffi, lib

__all__ = ["ProbeResult", "run_front", "run_back"]


@dataclass(frozen=True)
class ProbeResult:
    round_trips: int
    rtt_us: float            # mean round trip of one PING at a time
    pings: int
    msgs_per_s: float        # pipelined PINGs (request + response) per second
    bytes: int
    gb_per_s: float          # stream bytes per second / 1e9
    hash: int                # FNV-1a-64 of the stream as sent / received
    kicks: int
    sleeps: int


def _cfg(link, *, round_trips=0, pings=0, nbytes=0, order=20, spin_ns=0, timeout_ms=10000):
    cfg = ffi.new("struct mw_probe_cfg *")
    layout = link.layout
    cfg.area = ffi.cast("void *", link.area.address)
    cfg.area_size = link.area.npages * 4096
    cfg.geom.cmd_pages = layout.cmd_ring_pages
    cfg.geom.evq_pages = layout.evq_pages
    cfg.geom.sock_slots = layout.sock_slots
    cfg.geom.data_pages = layout.data_pages
    cfg.evtchn = link.evtchn._live()
    cfg.port = link.port
    cfg.round_trips, cfg.pings, cfg.bytes = round_trips, pings, nbytes
    cfg.order, cfg.spin_ns, cfg.timeout_ms = order, spin_ns, timeout_ms
    return cfg


def _result(res) -> ProbeResult:
    def rate(n, secs):
        return n / secs if secs > 0 else 0.0

    return ProbeResult(
        round_trips=res.round_trips,
        rtt_us=1e6 * res.rtt_secs / res.round_trips if res.round_trips else 0.0,
        pings=res.pings, msgs_per_s=rate(res.pings, res.ping_secs),
        bytes=res.bytes, gb_per_s=rate(res.bytes, res.byte_secs) / 1e9,
        hash=res.hash, kicks=res.kicks, sleeps=res.sleeps)


def _run(fn, cfg) -> ProbeResult:
    res = ffi.new("struct mw_probe_result *")
    rc = fn(cfg, res)
    if rc < 0:
        why = ffi.string(res.why).decode(errors="replace")
        raise OSError(-rc, f"link probe: {why or os.strerror(-rc)}")
    return _result(res)


def run_front(link, **kw) -> ProbeResult:
    """Frontend: round_trips, pings, nbytes (stream), order, spin_ns, timeout_ms."""
    return _run(lib.mw_probe_front, _cfg(link, **kw))


def run_back(link, **kw) -> ProbeResult:
    """INS: nbytes and order must match the frontend's; serves until its last PING."""
    return _run(lib.mw_probe_back, _cfg(link, **kw))
