"""The link probe over a connection set up by the real handshake on the sim backend: the two
sides agree on every PING and on the stream's hash, and a probe without a peer times out."""
import threading

import pytest

from mwcomms.xen import area, connection, probe, xenbus, xenstored
from mwcomms.xen.platform import Platform
from mwcomms.xen.xenbus import BackendDriver, FrontendDriver, XenbusState as S

FRONT, INS = 1, 2


@pytest.fixture
def links(tmp_path):
    with xenstored.running() as daemon:
        clients = []

        def client(path):
            clients.append(xenbus.connect_xenstore(path))
            return clients[-1]

        tool = client(daemon.socket_path)
        for dom in (FRONT, INS):
            tool.introduce_domain(dom, 1000 + dom, 10 + dom)
            xenbus.write_txn(tool, {f"/local/domain/{dom}": ""},
                             perms={f"/local/domain/{dom}": [f"n{dom}"]})
        fp, bp = xenbus.attach(tool, FRONT, INS)
        simdir = str(tmp_path / "sim")
        fplat = Platform("sim", sim_dir=simdir, domid=FRONT)
        bplat = Platform("sim", sim_dir=simdir, domid=INS)
        front = connection.FrontLink(fplat, INS, area.AreaLayout(cmd_ring_pages=1, sock_slots=32,
                                                                 data_pages=64))
        back = connection.BackLink(bplat, FRONT)
        fd = FrontendDriver(client(daemon.domain_socket(FRONT)), fp, setup=front.setup,
                            teardown=front.teardown)
        bd = BackendDriver(client(daemon.domain_socket(INS)), bp, advertise=back.advertise,
                           connect=back.connect, teardown=back.teardown)
        stops = [threading.Event(), threading.Event()]
        threads = [threading.Thread(target=d.run, args=(s,), daemon=True)
                   for d, s in zip((fd, bd), stops)]
        for t in threads:
            t.start()
        assert fd.wait_for(S.CONNECTED, 10) and bd.wait_for(S.CONNECTED, 10)
        yield front, back
        for s, t in zip(stops, threads):
            s.set()
            t.join(10)
        for c in clients:
            c.close()
        fplat.close()
        bplat.close()


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
