"""The link probe over a connection set up by the real handshake on the sim backend: the two
sides agree on every PING and on the stream's hash, and a probe without a peer times out."""
import threading

import pytest

from mwcomms.xen import area, connection, probe
from mwcomms.xen.xenbus import BackendDriver, FrontendDriver, XenbusState as S

FRONT, INS = 1, 2


@pytest.fixture
def links(world):
    front = connection.FrontLink(world.platform(FRONT), INS,
                                 area.AreaLayout(cmd_ring_pages=1, sock_slots=32, data_pages=64))
    back = connection.BackLink(world.platform(INS), FRONT)
    fd = FrontendDriver(world.client(FRONT), world.fp, setup=front.setup, teardown=front.teardown)
    bd = BackendDriver(world.client(INS), world.bp, advertise=back.advertise,
                       connect=back.connect, teardown=back.teardown)
    world.run(fd)
    world.run(bd)
    assert fd.wait_for(S.CONNECTED, 10) and bd.wait_for(S.CONNECTED, 10)
    return front, back


@pytest.mark.parametrize("spin_ns", [0, 20000])
def test_probe_both_sides_agree(links, spin_ns):
    front, back = links
    out = {}

    def serve():
        out["back"] = probe.run_back(back, nbytes=3_000_001, order=16, spin_ns=spin_ns)

    t = threading.Thread(target=serve)
    t.start()
    res = probe.run_front(front, round_trips=500, pings=20000, nbytes=3_000_001, order=16,
                          spin_ns=spin_ns)
    t.join(20)
    assert not t.is_alive()
    got = out["back"]
    assert res.round_trips == 500 and res.pings == 20000
    assert got.pings == 500 + 20000            # every PING answered exactly once
    assert res.bytes == got.bytes == 3_000_001
    assert res.hash == got.hash                 # the stream arrived intact
    assert res.msgs_per_s > 0 and res.gb_per_s > 0 and res.rtt_us > 0


def test_probe_without_peer_times_out(links):
    front, _ = links
    with pytest.raises(OSError) as e:
        probe.run_front(front, round_trips=1, timeout_ms=300)
    assert "no word from the peer" in str(e.value)
