"""Fixtures shared by the tests of xen/: a sim XenStore with a protected domain and an INS
domain introduced and an mwcomms device attached between them, as the toolstack leaves it."""
import threading
from dataclasses import dataclass, field

import pytest

from mwcomms.xen import xenbus, xenstored
from mwcomms.xen.platform import Platform

FRONT, INS = 1, 2


@dataclass
class World:
    daemon: object
    tool: object                      # dom0's XenStore connection (the toolstack)
    fp: str                           # the frontend's device directory
    bp: str                           # the backend's
    sim_dir: str
    clients: list = field(default_factory=list)
    threads: list = field(default_factory=list)

    def client(self, domid=None):
        """A XenStore connection as domain `domid` (None: dom0), closed at the end."""
        path = self.daemon.socket_path if domid is None else self.daemon.domain_socket(domid)
        self.clients.append(xenbus.connect_xenstore(path))
        return self.clients[-1]

    def platform(self, domid):
        plat = Platform("sim", sim_dir=self.sim_dir, domid=domid)
        self.clients.append(plat)
        return plat

    def run(self, driver):
        """Run a handshake driver in a thread until the end of the test; returns its stop."""
        stop = threading.Event()
        t = threading.Thread(target=driver.run, args=(stop,), daemon=True)
        t.start()
        self.threads.append((stop, t))
        return stop, t


@pytest.fixture
def world(tmp_path):
    with xenstored.running() as daemon:
        tool = xenbus.connect_xenstore(daemon.socket_path)
        for dom in (FRONT, INS):
            xenbus.introduce(tool, dom)
        fp, bp = xenbus.attach(tool, FRONT, INS)
        w = World(daemon, tool, fp, bp, str(tmp_path / "sim"), [tool])
        yield w
        for stop, t in w.threads:
            stop.set()
        for stop, t in w.threads:
            t.join(10)
        for c in reversed(w.clients):
            c.close()
