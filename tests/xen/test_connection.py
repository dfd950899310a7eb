"""A whole connection on the sim backend: the handshake shares the area and binds the event
channel, and afterwards both sides see the same pages and can kick each other."""
import select
import time

import pytest

from mwcomms.xen import area, connection, xenbus
from mwcomms.xen.xenbus import BackendDriver, FrontendDriver, XenbusState as S

FRONT, INS = 1, 2


def drivers(world, front, back):
    fd = FrontendDriver(world.client(FRONT), world.fp, setup=front.setup,
                        teardown=front.teardown, retry_delay=0.05)
    bd = BackendDriver(world.client(INS), world.bp, advertise=back.advertise,
                       connect=back.connect, teardown=back.teardown, retry_delay=0.05)
    return fd, bd


def test_handshake_shares_area_and_event_channel(world):
    layout = area.AreaLayout(cmd_ring_pages=2, evq_pages=1, sock_slots=64, data_pages=300)
    front = connection.FrontLink(world.platform(FRONT), INS, layout)
    back = connection.BackLink(world.platform(INS), FRONT, connection.Limits(max_area_pages=4096))
    fd, bd = drivers(world, front, back)
    (sf, tf), (sb, tb) = world.run(fd), world.run(bd)
    try:
        assert fd.wait_for(S.CONNECTED, 10) and bd.wait_for(S.CONNECTED, 10)
        assert back.layout == layout and back.version == front.version == 1
        assert back.features == front.features == ("ipv6", "udp", "dns")
        # The same pages on both sides: the first and the last page of the area.
        n = layout.area_pages * area.PAGE
        front.area.buffer[0:5] = b"hello"
        front.area.buffer[n - 5:n] = b"world"
        assert bytes(back.area.buffer[0:5]) == b"hello"
        assert bytes(back.area.buffer[n - 5:n]) == b"world"
        back.area.buffer[100:103] = b"ack"
        assert bytes(front.area.buffer[100:103]) == b"ack"
        # Kicks both ways through the bound event channel.
        front.evtchn.notify(front.port)
        assert select.select([back.evtchn.fileno()], [], [], 5)[0]
        assert back.evtchn.pending() == back.port
        back.evtchn.notify(back.port)
        assert select.select([front.evtchn.fileno()], [], [], 5)[0]
        assert front.evtchn.pending() == front.port
    finally:
        sf.set(); tf.join(10)
        sb.set(); tb.join(10)
    assert front.area is None and back.area is None   # both torn down on the way out


def test_ins_refuses_an_area_larger_than_its_limit(world):
    front = connection.FrontLink(world.platform(FRONT), INS, area.AreaLayout(data_pages=5000))
    back = connection.BackLink(world.platform(INS), FRONT, connection.Limits(max_area_pages=1000))
    fd, bd = drivers(world, front, back)
    (sf, tf), (sb, tb) = world.run(fd), world.run(bd)
    try:
        # The frontend itself checks the INS's limits before sharing anything.
        deadline = time.monotonic() + 10
        while xenbus.read_opt(world.tool, f"{world.fp}/error") is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert b"exceeds the limit" in xenbus.read_opt(world.tool, f"{world.fp}/error")
        assert front.area is None and back.area is None
        assert fd.state != S.CONNECTED
    finally:
        sf.set(); tf.join(10)
        sb.set(); tb.join(10)


@pytest.mark.parametrize("key,value,why", [
    ("version", "2", "not offered"),
    ("features", "ipv6 raw", "not offered"),
    ("features", "IPV6", "bad token"),
    ("event-channel", "0", "port 0"),
    ("event-channel", "x", "not a number"),
    ("data-pages", "100000", "exceeds"),
    ("ref-pages", "7", "ref-pages"),
    ("ref-0", "-1", "grant reference"),
])
def test_ins_refuses_hostile_frontend_keys(world, key, value, why):
    bplat = world.platform(INS)
    front = connection.FrontLink(world.platform(FRONT), INS, area.AreaLayout(data_pages=100))
    keys = front.setup(connection.BackLink(bplat, FRONT).advertise())
    try:
        keys[key] = value
        back = connection.BackLink(bplat, FRONT, connection.Limits(max_area_pages=4096))
        with pytest.raises(OSError, match=why):
            back.connect(keys)
        assert back.area is None and back.evtchn is None
    finally:
        front.teardown()
