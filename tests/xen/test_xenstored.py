"""The sim xenstored as a daemon: start-up, command line, hostile input, quotas, domain
sockets, introduce/release, concurrent clients. (What XenStore answers is the conformance
suite's job: test_xsconform.py.)"""
import errno
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pyxs
import pytest

from mwcomms.tools import xsconform
from mwcomms.xen import xenstored
from mwcomms.xen._xsstore import Quotas, Store
from mwcomms.xen._xswire import FrameError, Message, Op, Reader, encode

ENV = dict(os.environ, PYTHONSAFEPATH="1")


def client(path):
    c = pyxs.Client(unix_socket_path=path)
    c.connect()
    return c


def raw_sock(path, timeout=2.0):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.settimeout(timeout)
    return s


def send(s, mtype, payload, req_id=1, tx_id=0):
    s.sendall(struct.pack("=IIII", mtype, req_id, tx_id, len(payload)) + payload)


def recv(s):
    def exact(n):
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise EOFError("closed")
            buf += chunk
        return buf
    mtype, req_id, tx_id, length = struct.unpack("=IIII", exact(16))
    return mtype, req_id, tx_id, exact(length)


def closed(s, timeout=2.0):
    """True once the daemon has closed the connection (EOF or reset)."""
    s.settimeout(timeout)
    try:
        while True:
            if not s.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def introduce(c, domid):
    xenstored.introduce_domain(c, domid)
    c.mkdir(f"/local/domain/{domid}".encode())
    c.set_perms(f"/local/domain/{domid}".encode(), [f"n{domid}".encode()])


# -- start-up and command line ----------------------------------------------------------

def test_process_mode_starts_in_well_under_a_second():
    t0 = time.monotonic()
    with xenstored.running(mode="process") as xs:
        ready = time.monotonic() - t0
        with client(xs.socket_path) as c:
            assert c.read(b"/tool/xenstored") == b""
        pid = xs.pid
    print(f"sim xenstored process ready after {ready * 1000:.0f} ms")
    assert ready < 0.8
    assert not os.path.exists(xs.socket_path)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_thread_mode_and_initial_tree():
    with xenstored.running() as xs:
        with client(xs.socket_path) as c:
            assert c.list(b"/") == [b"tool"]
            assert c.list(b"/tool") == [b"xenstored"]
            assert c.get_perms(b"/") == [b"n0"]
            assert not c.exists(b"/local")       # the toolstack creates it, not xenstored
    assert not os.path.exists(xs.socket_path)


def test_cli_detaches_with_pid_file_and_log(tmp_path):
    d = tmp_path / "xs"
    short = f"/tmp/xsd{os.getpid()}"
    os.makedirs(short, exist_ok=True)
    try:
        pid_file, log_file = f"{short}/pid", str(tmp_path / "log")
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "mwcomms.xen.xenstored", "--dir", short,
                               "--pid-file", pid_file, "--log", log_file],
                              env=ENV, capture_output=True, timeout=10)
        assert proc.returncode == 0, proc.stderr
        assert time.monotonic() - t0 < 2
        pid = int(open(pid_file).read())
        try:
            with client(f"{short}/socket") as c:      # ready when the command returned
                c.write(b"/x", b"1")
                introduce(c, 3)
            assert os.path.exists(f"{short}/domain/3.sock")
        finally:
            os.kill(pid, signal.SIGTERM)
        for _ in range(200):
            if not os.path.exists(pid_file):
                break
            time.sleep(0.01)
        assert not os.path.exists(pid_file)
        assert not os.path.exists(f"{short}/socket")
        assert not os.path.exists(f"{short}/domain/3.sock")
        log = open(log_file).read()
        assert "listening on" in log and "domain 3 introduced" in log
    finally:
        subprocess.run(["rm", "-rf", short])
    assert not d.exists()


def test_directory_too_long_for_a_unix_socket_is_a_clear_error(tmp_path):
    long_dir = tmp_path / ("d" * 120)
    with pytest.raises(OSError) as exc:
        xenstored.start(str(long_dir))
    assert exc.value.errno == errno.ENAMETOOLONG


# -- hostile input ----------------------------------------------------------------------

def test_oversized_length_disconnects_only_that_client():
    with xenstored.running() as xs, client(xs.socket_path) as good:
        bad = raw_sock(xs.socket_path)
        bad.sendall(struct.pack("=IIII", Op.WRITE, 1, 0, 4097) + b"x" * 100)
        assert closed(bad)
        good.write(b"/still", b"alive")
        assert good.read(b"/still") == b"alive"


def test_unknown_types_get_enosys_and_the_connection_stays():
    with xenstored.running() as xs:
        s = raw_sock(xs.socket_path)
        for i, mtype in enumerate((20, 23, 128, 0xFFFF, 0xFFFFFFFF, Op.ERROR, Op.WATCH_EVENT)):
            send(s, mtype, b"junk\0", req_id=i)
            assert recv(s) == (Op.ERROR, i, 0, b"ENOSYS\0")
        send(s, Op.READ, b"/tool\0", req_id=99)
        assert recv(s) == (Op.READ, 99, 0, b"")


def test_random_garbage_never_kills_the_daemon():
    rng = random.Random(1234)
    with xenstored.running() as xs, client(xs.socket_path) as c:
        introduce(c, 9)
        paths = [xs.socket_path, xs.domain_socket(9)]
        dropped = 0
        for round_ in range(60):
            s = raw_sock(rng.choice(paths), timeout=0.5)
            try:
                for _ in range(rng.randrange(1, 20)):
                    kind = rng.random()
                    if kind < 0.6:      # well framed, random type and payload
                        mtype = rng.choice([rng.randrange(0, 25), rng.randrange(0, 1 << 32)])
                        if mtype in (Op.INTRODUCE, Op.RELEASE):
                            continue    # would tear down the domain under test
                        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(300)))
                        send(s, mtype, payload, req_id=rng.randrange(1 << 32),
                             tx_id=rng.choice([0, 1, rng.randrange(1 << 32)]))
                    elif kind < 0.8:    # a header with a wild length
                        s.sendall(struct.pack("=IIII", rng.randrange(25), 1, 0,
                                              rng.randrange(4097, 1 << 32)))
                        dropped += closed(s)
                        break
                    else:               # raw bytes
                        s.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))))
            except (BrokenPipeError, ConnectionResetError):
                dropped += 1            # the daemon hung up on a framing error: fine
            finally:
                s.close()
            assert c.get_domain_path(round_) == f"/local/domain/{round_}".encode()
        assert dropped > 5
        assert c.is_domain_introduced(9)


def test_partial_message_then_close_is_forgotten():
    with xenstored.running() as xs:
        s = raw_sock(xs.socket_path)
        s.sendall(struct.pack("=IIII", Op.WRITE, 1, 0, 100) + b"/half")
        s.close()
        with client(xs.socket_path) as c:
            assert not c.exists(b"/half")


def test_client_that_never_reads_is_dropped_and_others_are_served():
    with xenstored.running() as xs:
        xs._daemon.max_output = 64 * 1024
        with client(xs.socket_path) as c:
            c.write(b"/big", b"B" * 4000)
            hog = raw_sock(xs.socket_path)
            req = struct.pack("=IIII", Op.READ, 1, 0, 5) + b"/big\0"
            dropped = False
            hog.settimeout(0.05)
            for _ in range(2000):
                try:
                    hog.sendall(req * 10)
                except (BrokenPipeError, ConnectionResetError, socket.timeout):
                    dropped = True
                    break
                assert c.read(b"/tool") == b""          # the daemon keeps answering others
            assert dropped or closed(hog, 0.5)


# -- framing (sans-IO) --------------------------------------------------------------------

def test_reader_cuts_any_split_and_refuses_long_lengths():
    msgs = [Message(Op.WRITE, i, i * 3, b"/p\0" + bytes([i]) * i) for i in range(50)]
    stream = b"".join(encode(m) for m in msgs)
    rng = random.Random(7)
    reader, got, pos = Reader(), [], 0
    while pos < len(stream):
        n = rng.randrange(1, 40)
        got += list(reader.feed(stream[pos:pos + n]))
        pos += n
    assert got == msgs and reader.pending == 0
    with pytest.raises(FrameError):
        list(Reader().feed(struct.pack("=IIII", Op.READ, 1, 0, 4097)))
    assert list(Reader().feed(encode(Message(Op.WRITE, 1, 0, b"x" * 4096))))


# -- quotas -------------------------------------------------------------------------------

def test_quotas_are_configurable_and_give_the_c_daemons_errors():
    q = Quotas(nodes=5, watches=3, transactions=2, node_size=200, perms=2)
    with xenstored.running(quotas=q) as xs, client(xs.socket_path) as c:
        introduce(c, 4)                           # /local/domain/4 owned by 4: node 1
        with client(xs.domain_socket(4)) as d:
            for name in (b"a", b"b", b"c", b"d"):    # nodes 2..5
                d.write(name, b"1")
            with pytest.raises(pyxs.PyXSError) as exc:
                d.write(b"e", b"1")
            assert exc.value.args[0] == errno.ENOSPC
            c.write(b"/local/domain/4/by-dom0", b"x")      # dom0 creates: owner stays
            with pytest.raises(pyxs.PyXSError) as exc:
                d.write(b"a", b"v" * 200)                   # node record >= 200 bytes
            assert exc.value.args[0] == errno.ENOSPC
            with pytest.raises(pyxs.PyXSError) as exc:
                d.set_perms(b"a", [b"n4", b"r0", b"r0"])
            assert exc.value.args[0] == errno.ENOSPC
            m = d.monitor()
            for i in range(4):                      # "more than 3" fails: 4 fit
                m.watch(b"a", f"t{i}".encode())
            with pytest.raises(pyxs.PyXSError) as exc:
                m.watch(b"a", b"t4")
            assert exc.value.args[0] == errno.E2BIG
            d2 = client(xs.domain_socket(4))        # watches count per domain
            with pytest.raises(pyxs.PyXSError) as exc:
                d2.monitor().watch(b"b", b"x")
            assert exc.value.args[0] == errno.E2BIG
            d2.close()
            ids = []
            for _ in range(3):                      # per connection, "more than 2"
                ids.append(raw_tx_start(d))
            with pytest.raises(pyxs.PyXSError) as exc:
                raw_tx_start(d)
            assert exc.value.args[0] == errno.ENOSPC


def raw_tx_start(c):
    import copy
    return copy.copy(c).transaction()


def test_privileged_socket_has_no_quotas():
    q = Quotas(nodes=2, watches=1, transactions=1, node_size=100, perms=1)
    with xenstored.running(quotas=q) as xs, client(xs.socket_path) as c:
        for i in range(10):
            c.write(f"/n{i}".encode(), b"v" * 500)
        c.set_perms(b"/n0", [b"n0", b"r0", b"r0", b"r0"])
        m = c.monitor()
        for i in range(5):
            m.watch(b"/n0", f"t{i}".encode())


# -- domains ------------------------------------------------------------------------------

def test_domain_socket_lifecycle():
    with xenstored.running() as xs, client(xs.socket_path) as c:
        assert not os.path.exists(xs.domain_socket(5))
        m = c.monitor()
        m.watch(b"@releaseDomain", b"rel")
        m.watch(b"/local/domain/5", b"home")
        assert {m.events.get(timeout=2), m.events.get(timeout=2)}
        introduce(c, 5)
        m.events.get(timeout=2), m.events.get(timeout=2)       # mkdir and set_perms
        assert os.path.exists(xs.domain_socket(5)) and c.is_domain_introduced(5)
        d = client(xs.domain_socket(5))
        assert d.get_domain_path(5) == b"/local/domain/5"
        d.write(b"data/key", b"v")
        assert c.read(b"/local/domain/5/data/key") == b"v"
        assert c.get_perms(b"/local/domain/5/data/key") == [b"n5"]
        c.write(b"/shared", b"s")                    # dom0's node naming domain 5
        c.set_perms(b"/shared", [b"n0", b"r5"])
        assert d.read(b"/shared") == b"s"
        d.close()
        raw = raw_sock(xs.domain_socket(5))
        xenstored.release_domain(c, 5)
        # Release: the domain's connections close, its nodes go (watch fires), then
        # @releaseDomain fires.
        assert closed(raw)
        events = []
        while not events or events[-1].token != b"rel":
            events.append(m.events.get(timeout=2))
        assert events[-2:] == [(b"/local/domain/5", b"home"), (b"@releaseDomain", b"rel")]
        assert not os.path.exists(xs.domain_socket(5))
        assert not c.exists(b"/local/domain/5")
        assert not c.is_domain_introduced(5)
        # A new domain 5 does not inherit what the old one was granted.
        c.introduce_domain(5, 0, 1)
        with client(xs.domain_socket(5)) as d2:
            with pytest.raises(pyxs.PyXSError) as exc:
                d2.read(b"/shared")
            assert exc.value.args[0] == errno.EACCES
        c.set_perms(b"/shared", [b"n0", b"r5"])
        with client(xs.domain_socket(5)) as d2:
            assert d2.read(b"/shared") == b"s"


def test_introduce_rules():
    with xenstored.running() as xs, client(xs.socket_path) as c:
        c.execute_command(Op.INTRODUCE, b"0\0" b"0\0" b"1\0")       # dom0: OK, no socket
        assert not os.path.exists(xs.domain_socket(0))
        for payload, err in ((b"7\0" b"0\0" b"0\0", b"EINVAL"),      # port 0
                             (b"32752\0" b"0\0" b"1\0", b"EINVAL"),  # DOMID_FIRST_RESERVED
                             (b"7\0" b"0\0", b"EINVAL")):            # missing argument
            with pytest.raises(pyxs.PyXSError) as exc:
                c.execute_command(Op.INTRODUCE, payload)
            assert exc.value.args[0] == errno.EINVAL, payload
        for payload, err in ((b"0\0", errno.EINVAL), (b"8\0", errno.ENOENT)):
            with pytest.raises(pyxs.PyXSError) as exc:
                c.execute_command(Op.RELEASE, payload)
            assert exc.value.args[0] == err


def test_reintroduce_resets_the_domains_watches_and_transactions():
    with xenstored.running() as xs, client(xs.socket_path) as c:
        introduce(c, 6)
        with client(xs.domain_socket(6)) as d:
            m = d.monitor()
            m.watch(b"w", b"t")
            assert m.events.get(timeout=2).path == b"w"
            t = raw_tx_start(d)
            c.introduce_domain(6, 0, 1)
            reply = xsconform.raw(d, Op.READ, b"/local/domain/6\0", tx_id=t)
            assert reply == (Op.ERROR, b"ENOENT\0")      # transaction gone
            m.watch(b"sentinel", b"s")
            assert m.events.get(timeout=2).token == b"s"
            c.write(b"/local/domain/6/w", b"1")
            c.write(b"/local/domain/6/sentinel", b"1")
            assert m.events.get(timeout=2).token == b"s"  # nothing for the old watch


def test_domain_watches_special_paths_only_when_allowed():
    with xenstored.running() as xs, client(xs.socket_path) as c:
        introduce(c, 11)
        with client(xs.domain_socket(11)) as d:
            m = d.monitor()
            m.watch(b"@introduceDomain", b"i")
            assert m.events.get(timeout=2).path == b"@introduceDomain"   # initial: always
            m.watch(b"sentinel", b"s")
            m.events.get(timeout=2)
            c.introduce_domain(12, 0, 1)
            c.write(b"/local/domain/11/sentinel", b"1")
            assert m.events.get(timeout=2).token == b"s"
            c.set_perms(b"@introduceDomain", [b"n0", b"r11"])
            c.introduce_domain(13, 0, 1)
            assert m.events.get(timeout=2) == (b"@introduceDomain", b"i")


# -- concurrency --------------------------------------------------------------------------

def test_two_clients_incrementing_in_transactions_lose_nothing():
    with xenstored.running() as xs:
        with client(xs.socket_path) as c:
            c.write(b"/counter", b"0")
        conflicts = []

        def worker(n):
            with client(xs.socket_path) as w:
                for _ in range(n):
                    while True:
                        w.transaction()
                        v = int(w.read(b"/counter"))
                        w.write(b"/counter", str(v + 1).encode())
                        if w.commit():
                            break
                        conflicts.append(1)

        threads = [threading.Thread(target=worker, args=(150,)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        with client(xs.socket_path) as c:
            assert c.read(b"/counter") == b"300"
        print(f"{len(conflicts)} EAGAIN retries over 300 increments")


def test_watch_events_reach_every_client_in_order():
    with xenstored.running() as xs:
        watchers = [client(xs.socket_path) for _ in range(3)]
        monitors = []
        for w in watchers:
            m = w.monitor()
            m.watch(b"/seq", b"t")
            m.events.get(timeout=2)
            monitors.append(m)
        with client(xs.socket_path) as c:
            for i in range(50):
                c.write(f"/seq/{i}".encode(), b"1")
        for m in monitors:
            got = [m.events.get(timeout=2).path for _ in range(50)]
            assert got == [f"/seq/{i}".encode() for i in range(50)]
        for w in watchers:
            w.close()


# -- the store alone (sans-IO) ------------------------------------------------------------

def request(store, conn, op, payload, tx_id=0):
    store.request(conn, op, 1, tx_id, payload)
    reply = conn.out.pop()
    return reply[0], reply[3]


def test_perm_strings_follow_c_strtol():
    store = Store()
    conn = store.connect(0)
    request(store, conn, Op.MKDIR, b"/p\0")
    assert request(store, conn, Op.SET_PERMS, b"/p\0n0\0r0x10\0b010\0w-1\0") == \
        (Op.SET_PERMS, b"OK\0")
    assert request(store, conn, Op.GET_PERMS, b"/p\0") == (Op.GET_PERMS,
                                                           b"n0\0r16\0b8\0w-1\0")


def test_directory_part_pages_like_the_c_daemon():
    store = Store()
    conn = store.connect(0)
    names = [f"{i:02d}" + "x" * 200 for i in range(40)]
    for n in names:
        request(store, conn, Op.MKDIR, f"/d/{n}\0".encode())
    assert request(store, conn, Op.DIRECTORY, b"/d\0") == (Op.ERROR, b"E2BIG\0")
    got, off = [], 0
    while True:
        op, payload = request(store, conn, Op.DIRECTORY_PART, b"/d\0" + str(off).encode() + b"\0")
        assert op == Op.DIRECTORY_PART and len(payload) <= 4096
        gen, _, rest = payload.partition(b"\0")
        end = rest.endswith(b"\0\0") or rest == b"\0"
        chunk = rest[:-1] if end else rest
        got += chunk.split(b"\0")[:-1] if chunk else []
        off += len(chunk)
        if end:
            break
    assert got == [n.encode() for n in names]


def test_store_invariants_hold_under_random_requests():
    """Random (mostly well-formed) requests from dom0 and a domain, in and out of
    transactions, with tight quotas: the tree stays a tree and ownership counts stay exact."""
    rng = random.Random(42)
    paths = [b"/a", b"/a/b", b"/a/b/c", b"/x", b"/local/domain/5", b"/local/domain/5/d", b"d",
             b"d/e", b"@introduceDomain", b"@releaseDomain", b"/", b"", b"/a/", b"//"]
    extras = [b"v", b"x" * 400, b"n0", b"r5", b"b0\0r5", b"T", b"F", b"5", b"tok"]
    types = list(Op) + [20, 99]
    for _ in range(40):
        store = Store(Quotas(nodes=20, watches=3, transactions=2, node_size=300, perms=3))
        conns = [store.connect(0), store.connect(0)]
        store.request(conns[0], Op.INTRODUCE, 1, 0, b"5\0" b"0\0" b"1\0")
        conns += [store.connect(5), store.connect(5)]
        for step in range(200):
            conn = rng.choice([c for c in conns if not c.closed] or [conns[0]])
            r = rng.random()
            if r < 0.5:
                payload = rng.choice(paths) + b"\0"
            elif r < 0.75:
                payload = rng.choice(paths) + b"\0" + rng.choice(extras) + b"\0"
            else:
                payload = bytes(rng.randrange(256) for _ in range(rng.randrange(10)))
            store.request(conn, rng.choice(types), step, rng.choice([0, 0, 1, 2, 3]), payload)
            assert conn.closed or conn.out, "every request gets an answer"
            conn.out.clear()
            if rng.random() < 0.02:
                store.disconnect(conn)
        owners = {}
        for path, node in store.nodes.items():
            if path != "/":
                parent, _, base = path.rpartition("/")
                assert store.nodes[parent or "/"].children.count(base) == 1, path
            for child in node.children:
                assert (path.rstrip("/") + "/" + child) in store.nodes
            owners[node.perms[0][0]] = owners.get(node.perms[0][0], 0) + 1
        assert {d: n for d, n in store.entries.items() if n} == owners


def test_introduce_without_room_for_the_socket_is_refused_cleanly():
    d = f"/tmp/{os.getpid()}".ljust(96, "d")    # <dir>/socket fits, <dir>/domain/N.sock not
    os.makedirs(d, exist_ok=True)
    try:
        with xenstored.running(d) as xs, client(xs.socket_path) as c:
            with pytest.raises(pyxs.PyXSError) as exc:
                xenstored.introduce_domain(c, 12345)
            assert exc.value.args[0] == errno.EINVAL
            assert not c.is_domain_introduced(12345)
            c.write(b"/fine", b"1")
    finally:
        subprocess.run(["rm", "-rf", d])


def test_where_the_c_daemon_answers_a_stale_errno_the_sim_answers_what_it_meant():
    """C xenstored 4.17 returns `errno` unset by the callee for a single-argument request
    that is not one string and for SET_PERMS refused on a special path; after a WATCH errno
    is 0, it sends no reply and aborts. The sim answers EINVAL / EACCES and carries on."""
    with xenstored.running() as xs:
        s = raw_sock(xs.socket_path)
        send(s, Op.WATCH, b"/x\0tok\0", req_id=1)
        assert recv(s)[0] == Op.WATCH and recv(s)[0] == Op.WATCH_EVENT
        for i, mtype in enumerate((Op.READ, Op.DIRECTORY, Op.GET_PERMS, Op.MKDIR, Op.RM)):
            for payload in (b"/tool", b"/tool\0extra\0", b""):
                send(s, mtype, payload, req_id=10 + i)
                assert recv(s) == (Op.ERROR, 10 + i, 0, b"EINVAL\0"), (mtype, payload)
        send(s, Op.SET_PERMS, b"@notspecial\0n0\0", req_id=20)
        assert recv(s) == (Op.ERROR, 20, 0, b"EINVAL\0")
        with client(xs.socket_path) as c:
            introduce(c, 3)
        d = raw_sock(xs.domain_socket(3))
        send(d, Op.SET_PERMS, b"@releaseDomain\0n3\0", req_id=21)
        assert recv(d) == (Op.ERROR, 21, 0, b"EACCES\0")
