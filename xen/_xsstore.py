"""The XenStore database and its rules, sans-IO: requests in, replies and watch events out.

Everything that decides what XenStore answers lives here; xenstored.py only moves bytes. The
reference is the C xenstored of Xen 4.17 (tools/xenstore/xenstored_*.c) and
docs/misc/xenstore.txt; where they differ, the C daemon wins. Its rules, as kept here:

Nodes and paths
  - A path is absolute ("/a/b") or relative to the caller's home, /local/domain/<domid> (the
    privileged Unix socket counts as domain 0). Valid: starts with "/", no "//", no trailing
    "/" except "/" itself, characters [A-Za-z0-9-/_@], at most 2048 characters after a
    "/local/domain/<id>/" prefix. Anything else is EINVAL.
  - WRITE and MKDIR create missing parents with empty values; RM removes a subtree, is fine on
    a missing node whose parent exists, ENOENT when the parent is missing too, EINVAL on "/".
  - A node's children are listed in creation order. DIRECTORY of a list beyond 4096 bytes is
    E2BIG; DIRECTORY_PART pages through it.

Permissions (xs_permissions: "n"/"r"/"w"/"b" + domid; the first entry is the owner and also
the access everyone not listed gets)
  - The privileged caller (domain 0) and the owner have full access; otherwise the first later
    entry naming the caller decides, else the owner entry's access letter.
  - A new node copies its parent's permissions; an unprivileged creator becomes its owner.
  - An entry naming a domain that does not exist is kept but ignored; so is one naming a
    domain introduced after the node was last written (a new domain with a recycled id must
    not inherit). An owner that does not exist is ENOENT. In the simulation a domain exists
    from its INTRODUCE to its RELEASE; domain 0 always exists.
  - Failures leak nothing: a missing node whose first existing ancestor denies the access is
    EACCES, not ENOENT.
  - Only the owner (or domain 0) may SET_PERMS (else EACCES); an unprivileged owner may not
    give the node away (EPERM).

Watches
  - Registering fires one event at once, with the watch's own path. A change to a node fires
    every watch on it or on an ancestor, with the changed path; RM fires the removed root
    this way and each removed descendant only for watches set exactly on it. MKDIR of an
    existing node and RM of a missing one fire nothing. A relative watch gets relative paths.
  - A watcher only hears about nodes it could read (node or parent, before or after).
  - "@introduceDomain" and "@releaseDomain" fire on INTRODUCE and RELEASE, for domain 0 and
    for domains given read access with SET_PERMS on the special path.

Transactions (optimistic, per connection, ids from 1)
  - A node read or written inside a transaction is copied into it on first access; later
    accesses see the copy (own writes included). Watches fire only at commit.
  - Commit fails with EAGAIN when any node the transaction accessed has changed (or appeared,
    or vanished) globally since its first access. The transaction is gone after END either way.

Quotas (unprivileged domains only; same defaults and errors as the C daemon)
  - nodes owned: 1000 (ENOSPC), watches per domain: 128 (the 130th WATCH is E2BIG: the check
    is "more than", as in C), open transactions per connection: 10 (the 12th START is ENOSPC,
    likewise), node record size 2048 bytes including permissions and child names (ENOSPC),
    permission entries per node 5 (ENOSPC), nodes touched per transaction 1024 (ENOSPC).
    Not simulated: the memory quota, the outstanding-request quota, write rate limiting.

Generations (DIRECTORY_PART shows them, so they count exactly as in C): every write or
removal of a node takes the next number, a failed write included; so does a transaction's
start and each node its commit writes; removing a subtree also rewrites each removed node's
parent on the way up.

Domains
  - Connections of the main socket are domain 0. INTRODUCE (domain 0 only) of a new domain
    opens its socket and fires @introduceDomain; of an introduced one it drops that domain's
    watches and transactions; of domain 0 it does nothing. RELEASE drops the domain's
    connections, removes the nodes it owns (their watches fire), strips it from the special
    paths' permissions, then fires @releaseDomain.

Where the C daemon answers with a stale errno (a single-argument request that is not exactly
one string; SET_PERMS refused on a special path), the sim answers what it meant: EINVAL, or
EACCES for a caller without rights on the special path.
"""
from __future__ import annotations

import dataclasses
import errno
import re
from typing import Callable, Iterator

from ._xswire import (DOMID_FIRST_RESERVED, DOMID_SELF, PAYLOAD_MAX, REL_PATH_MAX, Op,
                      error_payload)

__all__ = ["Quotas", "Store", "Connection", "XsError"]

PERM_NONE, PERM_READ, PERM_WRITE, PERM_OWNER, PERM_IGNORE = 0x00, 0x01, 0x02, 0x08, 0x10
_PERM_MASK = PERM_READ | PERM_WRITE | PERM_OWNER
_LETTER = {"n": PERM_NONE, "r": PERM_READ, "w": PERM_WRITE, "b": PERM_READ | PERM_WRITE}
_LETTER_OF = {v: k for k, v in _LETTER.items()}
_RECORD_HEADER = 24         # struct xs_tdb_record_hdr, padded
_PERM_SIZE = 8              # struct xs_permissions
_VALID_CHARS = re.compile(r"[A-Za-z0-9\-/_@]*\Z")
_LOCAL_PREFIX = re.compile(r"/local/domain/-?[0-9]+/")
_SPECIAL = ("@introduceDomain", "@releaseDomain")


class XsError(Exception):
    """A request failed; the reply is an ERROR naming this errno."""

    def __init__(self, err: int):
        super().__init__(err, errno.errorcode.get(err, str(err)))
        self.errno = err


@dataclasses.dataclass
class Quotas:
    """Limits for unprivileged domains (0 disables one). Defaults are the C daemon's."""
    nodes: int = 1000           # -E: nodes a domain may own
    watches: int = 128          # -W: watches per domain
    transactions: int = 10      # -t: open transactions per connection
    node_size: int = 2048       # -S: bytes of one node record
    perms: int = 5              # -A: entries of one permission list
    transaction_nodes: int = 1024
    path_max: int = REL_PATH_MAX


Perms = list  # of [domid, flags]; entry 0 is the owner


@dataclasses.dataclass
class Node:
    value: bytes
    perms: Perms
    children: list
    generation: int

    def copy(self) -> "Node":
        return Node(self.value, [list(p) for p in self.perms], list(self.children),
                    self.generation)

    def record_size(self) -> int:
        return (_RECORD_HEADER + _PERM_SIZE * len(self.perms) + len(self.value)
                + sum(len(c) + 1 for c in self.children))


@dataclasses.dataclass
class _Access:
    """A node as a transaction first saw it, and what the transaction made of it."""
    generation: int | None      # global generation at first access; None: did not exist
    node: Node | None           # the transaction's copy; None: missing or deleted
    perms: Perms | None         # permissions at first access, for watch filtering
    modified: bool = False
    fire: bool = False
    exact: bool = True


@dataclasses.dataclass
class _Transaction:
    id: int
    generation: int
    accessed: dict = dataclasses.field(default_factory=dict)   # path -> _Access, in order
    node_created: bool = False
    fail: bool = False


@dataclasses.dataclass
class _Watch:
    node: str                   # canonical path or "@special"
    token: bytes
    relative: str | None        # home path stripped from events, for relative watches


@dataclasses.dataclass
class _Domain:
    domid: int
    generation: int
    target: int | None = None
    watches: int = 0


class Connection:
    """One client connection as the store sees it: who it is, its watches and transactions,
    and the messages queued for it (type, req_id, tx_id, payload), in the order to send."""

    def __init__(self, domid: int):
        self.domid = domid
        self.privileged = domid == 0
        self.home = f"/local/domain/{domid}"
        self.watches: list[_Watch] = []
        self.transactions: dict[int, _Transaction] = {}
        self.next_tx_id = 0
        self.out: list[tuple[int, int, int, bytes]] = []
        self.tx: _Transaction | None = None     # the transaction of the request being handled
        self.closed = False


def _strings(payload: bytes) -> list[bytes]:
    """The NUL-terminated strings of a payload (get_strings): bytes after the last NUL are
    ignored."""
    parts = payload.split(b"\0")
    return parts[:-1]


def _onearg(payload: bytes) -> str | None:
    """The argument of a payload that is exactly one NUL-terminated string, else None."""
    if payload and payload.find(b"\0") == len(payload) - 1:
        return payload[:-1].decode("latin-1")
    return None


def _strtol(text: str, base: int) -> tuple[int, str] | None:
    """C strtol: (value, rest), or None when no digits were consumed. Clamped to 64 bits."""
    s = text.lstrip(" \t\n\v\f\r")
    neg = False
    if s[:1] in ("+", "-"):
        neg, s = s[0] == "-", s[1:]
    if base == 0:
        if s[:2].lower() == "0x" and s[2:3] and s[2:3] in "0123456789abcdefABCDEF":
            base, s = 16, s[2:]
        elif s[:1] == "0":
            base = 8
        else:
            base = 10
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"[:base]
    n = 0
    while n < len(s) and s[n].lower() in digits:
        n += 1
    if n == 0:
        return None
    value = int(s[:n], base)
    value = -value if neg else value
    value = max(-(1 << 63), min((1 << 63) - 1, value))
    return value, s[n:]


def _atoi(text: str) -> int:
    """C atoi, as an int32."""
    parsed = _strtol(text, 10)
    value = parsed[0] if parsed else 0
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _parent(path: str) -> str:
    cut = path.rfind("/", 1)
    return path[:cut] if cut > 0 else "/"


def _join(parent: str, child: str) -> str:
    return f"/{child}" if parent == "/" else f"{parent}/{child}"


def _perm_string(domid: int, flags: int) -> str:
    signed = domid - (1 << 32) if domid & 0x80000000 else domid
    return f"{_LETTER_OF[flags & (PERM_READ | PERM_WRITE)]}{signed}"


class Store:
    """The database. `request()` handles one message of one connection and queues the reply
    (and any watch events, on any connection) on the connections' `out` lists.

    @param on_introduce called with a domid when a new domain is introduced
    @param on_release   called with a domid when a domain is released (after its connections
                        were detached from the store)
    """

    def __init__(self, quotas: Quotas | None = None,
                 on_introduce: Callable[[int], None] | None = None,
                 on_release: Callable[[int], None] | None = None):
        self.quotas = quotas or Quotas()
        self.on_introduce = on_introduce or (lambda domid: None)
        self.on_release = on_release or (lambda domid: None)
        self.generation = 0
        self.nodes: dict[str, Node] = {}
        self.domains: dict[int, _Domain] = {0: _Domain(0, 0)}
        self.entries: dict[int, int] = {}           # nodes owned, per domain
        self.special: dict[str, Perms] = {name: [[0, PERM_NONE]] for name in _SPECIAL}
        self.connections: list[Connection] = []
        # The initial tree of the C daemon, written in this order (generations 1 to 3).
        for path, children in (("/", ["tool"]), ("/tool", ["xenstored"]), ("/tool/xenstored", [])):
            self._put(None, path, Node(b"", [[0, PERM_NONE]], children, 0))

    # -- connections --------------------------------------------------------------------
    def connect(self, domid: int) -> Connection:
        conn = Connection(domid)
        self.connections.append(conn)
        return conn

    def disconnect(self, conn: Connection) -> None:
        if conn.closed:
            return
        self._drop_watches(conn)
        conn.transactions.clear()
        conn.closed = True
        self.connections.remove(conn)

    # -- requests -----------------------------------------------------------------------
    _PRIVILEGED = frozenset({Op.CONTROL, Op.INTRODUCE, Op.RELEASE, Op.IS_DOMAIN_INTRODUCED,
                             Op.RESUME, Op.SET_TARGET})
    _NO_TX = frozenset({Op.WATCH, Op.UNWATCH})

    def request(self, conn: Connection, mtype: int, req_id: int, tx_id: int,
                payload: bytes) -> None:
        handler = self._HANDLERS.get(mtype)
        try:
            if handler is None:
                raise XsError(errno.ENOSYS)
            if mtype in self._PRIVILEGED and not conn.privileged:
                raise XsError(errno.EACCES)
            conn.tx = None
            if mtype not in self._NO_TX and tx_id:
                conn.tx = conn.transactions.get(tx_id)
                if conn.tx is None:
                    raise XsError(errno.ENOENT)
            reply = handler(self, conn, payload)
        except XsError as exc:
            conn.out.append((Op.ERROR, req_id, tx_id, error_payload(exc.errno)))
            return
        finally:
            conn.tx = None
        if reply is None:
            return
        if len(reply) > PAYLOAD_MAX:
            conn.out.append((Op.ERROR, req_id, tx_id, error_payload(errno.E2BIG)))
        else:
            conn.out.append((mtype, req_id, tx_id, reply))
        if mtype == Op.WATCH:
            watch = conn.watches[-1]
            self._event(conn, self._event_path(watch, watch.node), watch.token)

    # -- node access, transaction-aware -------------------------------------------------
    def _get(self, conn: Connection | None, path: str) -> Node | None:
        """read_node: the node as `conn` sees it (its transaction's copy if any)."""
        tx = conn.tx if conn else None
        if tx is None:
            node = self.nodes.get(path)
            if node is not None:
                self._adjust(node)
            return node
        acc = tx.accessed.get(path)
        if acc is None:
            if (self.quotas.transaction_nodes and not conn.privileged
                    and len(tx.accessed) >= self.quotas.transaction_nodes):
                tx.fail = True
                raise XsError(errno.ENOSPC)
            glob = self.nodes.get(path)
            if glob is not None:
                self._adjust(glob)
                acc = _Access(glob.generation, glob.copy(), [list(p) for p in glob.perms])
            else:
                acc = _Access(None, None, None)
            tx.accessed[path] = acc
        return acc.node

    def _stamp(self, node: Node) -> None:
        """access_node for a write: every write, even one that then fails, takes the next
        generation (DIRECTORY_PART shows generations, so the count must match the C one)."""
        self.generation += 1
        node.generation = self.generation

    def _put(self, conn: Connection | None, path: str, node: Node, stamp: bool = True) -> None:
        """Write a node (new or changed); the caller has read it (or its absence) first."""
        if stamp:
            self._stamp(node)
        tx = conn.tx if conn else None
        if tx is not None:
            acc = tx.accessed[path]
            acc.node, acc.modified = node, True
            return
        old = self.nodes.get(path)
        if old is not None:
            self._count(old.perms[0][0], -1)
        self._count(node.perms[0][0], +1)
        self.nodes[path] = node

    def _delete(self, conn: Connection | None, path: str, commit: bool = False) -> None:
        """Remove a node; a commit applying a transaction's removal takes no generation."""
        if not commit:
            self.generation += 1
        tx = conn.tx if conn else None
        if tx is not None:
            acc = tx.accessed[path]
            acc.node, acc.modified = None, True
            return
        old = self.nodes.pop(path, None)
        if old is not None:
            self._count(old.perms[0][0], -1)

    def _count(self, domid: int, delta: int) -> None:
        self.entries[domid] = self.entries.get(domid, 0) + delta

    def _adjust(self, node: Node) -> None:
        """domain_adjust_node_perms: ignore entries of domains gone or younger than the node."""
        for entry in node.perms[1:]:
            if entry[1] & PERM_IGNORE:
                continue
            dom = self.domains.get(entry[0])
            if dom is None or dom.generation > node.generation:
                entry[1] |= PERM_IGNORE

    # -- permissions ---------------------------------------------------------------------
    def _perm_for(self, conn: Connection, perms: Perms) -> int:
        if conn.privileged:
            return _PERM_MASK
        target = self.domains[conn.domid].target if conn.domid in self.domains else None
        if perms[0][0] == conn.domid or (target is not None and perms[0][0] == target):
            return _PERM_MASK
        for domid, flags in perms[1:]:
            if not flags & PERM_IGNORE and (domid == conn.domid or domid == target):
                return flags & _PERM_MASK
        return perms[0][1] & _PERM_MASK

    def _canonical(self, conn: Connection, name: str) -> str:
        if name.startswith("/") or name.startswith("@"):
            return name
        return f"{conn.home}/{name}"

    def _valid(self, path: str) -> bool:
        if not path.startswith("/") or (path.endswith("/") and path != "/") or "//" in path:
            return False
        m = _LOCAL_PREFIX.match(path)
        local_off = m.end() if m and len(m.group(0)) - len("/local/domain//") <= 5 else 0
        if len(path) > local_off + self.quotas.path_max:
            return False
        return _VALID_CHARS.match(path) is not None

    def _get_node(self, conn: Connection, name: str | None, perm: int) -> tuple[str, Node]:
        """get_node_canonicalized: the node, or XsError (EINVAL, ENOENT, EACCES, ...)."""
        if name is None:
            raise XsError(errno.EINVAL)
        path = self._canonical(conn, name)
        if not self._valid(path):
            raise XsError(errno.EINVAL)
        node = self._get(conn, path)
        if node is not None and (self._perm_for(conn, node.perms) & perm) == perm:
            return path, node
        err = errno.EACCES if node is not None else errno.ENOENT
        raise _NodeError(path, self._errno_from_parents(conn, path, err, perm))

    def _errno_from_parents(self, conn: Connection, path: str, err: int, perm: int) -> int:
        """Report `err` only if the first existing ancestor grants `perm`; else EACCES."""
        name, node = path, None
        while name != "/":
            name = _parent(name)
            node = self._get(conn, name)
            if node is not None:
                break
        if node is None:
            return errno.EACCES
        return err if self._perm_for(conn, node.perms) & perm else errno.EACCES

    def _check_size(self, conn: Connection, node: Node) -> None:
        if (not conn.privileged and self.quotas.node_size
                and node.record_size() >= self.quotas.node_size):
            raise XsError(errno.ENOSPC)

    # -- database operations -------------------------------------------------------------
    def _read(self, conn, payload):
        return self._get_node(conn, _onearg(payload), PERM_READ)[1].value

    def _get_perms(self, conn, payload):
        node = self._get_node(conn, _onearg(payload), PERM_READ)[1]
        return b"".join(_perm_string(d, f).encode() + b"\0" for d, f in node.perms)

    def _directory(self, conn, payload):
        node = self._get_node(conn, _onearg(payload), PERM_READ)[1]
        return b"".join(c.encode("latin-1") + b"\0" for c in node.children)

    def _directory_part(self, conn, payload):
        strings = _strings(payload)
        if len(strings) != 2:
            raise XsError(errno.EINVAL)
        node = self._get_node(conn, strings[0].decode("latin-1"), PERM_READ)[1]
        offset = _atoi(strings[1].decode("latin-1")) & 0xFFFFFFFF
        gen = str(node.generation).encode() + b"\0"
        blob = b"".join(c.encode("latin-1") + b"\0" for c in node.children)
        if offset >= len(blob):
            return gen + b"\0"
        maxlen, length, pos = PAYLOAD_MAX - len(gen) - 1, 0, offset
        while True:
            nul = blob.index(b"\0", pos)
            if length + (nul - pos) >= maxlen:
                break
            length += nul - pos + 1
            pos = nul + 1
            if offset + length == len(blob):
                break
        chunk = blob[offset:offset + length]
        if offset + length == len(blob):
            chunk += b"\0"
        return gen + chunk

    def _write(self, conn, payload):
        strings = _strings(payload)
        if not strings:
            raise XsError(errno.EINVAL)
        name = strings[0].decode("latin-1")
        value = payload[len(strings[0]) + 1:]
        try:
            path, node = self._get_node(conn, name, PERM_WRITE)
        except _NodeError as exc:
            if exc.errno != errno.ENOENT:
                raise
            path, node = exc.path, self._create(conn, exc.path, value)
        else:
            node = node.copy()
            node.value = value
            self._write_node(conn, path, node)
        self._fire(conn, path, node, exact=False)
        return b"OK\0"

    def _mkdir(self, conn, payload):
        try:
            self._get_node(conn, _onearg(payload), PERM_WRITE)
        except _NodeError as exc:
            if exc.errno != errno.ENOENT:
                raise
            node = self._create(conn, exc.path, b"")
            self._fire(conn, exc.path, node, exact=False)
        return b"OK\0"

    def _write_node(self, conn, path, node):
        self._stamp(node)
        self._check_size_or_fail(conn, node)
        self._put(conn, path, node, stamp=False)

    def _check_size_or_fail(self, conn, node):
        """write_node_raw's size quota; a failed write dooms the transaction it is in."""
        try:
            self._check_size(conn, node)
        except XsError:
            if conn.tx is not None:
                conn.tx.fail = True
            raise

    def _create(self, conn: Connection, path: str, value: bytes) -> Node:
        """construct_node + create_node: make `path` and its missing ancestors."""
        missing, parent_path = [path], _parent(path)
        parent = self._get(conn, parent_path)
        while parent is None:
            if parent_path == "/":
                raise XsError(errno.ENOENT)
            missing.append(parent_path)
            parent_path = _parent(parent_path)
            parent = self._get(conn, parent_path)
        parent = parent.copy()
        chain = []                          # (path, node), top-down
        up = parent
        for name in reversed(missing):
            up.children.append(name[name.rfind("/") + 1:])
            perms = [list(p) for p in up.perms]
            if not conn.privileged:
                perms[0][0] = conn.domid
            node = Node(b"", perms, [], 0)
            chain.append((name, node))
            up = node
        chain[-1][1].value = value
        # The C daemon writes bottom-up, each new node checked against the node quota, and
        # undoes what it wrote on failure; here nothing is stored unless everything passes
        # (the generations taken on the way are kept, as in C). Inside a transaction the
        # count is the global one, so only the first node can fail.
        if conn.tx is not None:
            conn.tx.node_created = True
        count = self.entries.get(conn.domid, 0)
        for k, (name, node) in enumerate(reversed(chain)):
            if self.quotas.nodes and not conn.privileged and count >= self.quotas.nodes:
                if conn.tx is not None and k > 0:
                    conn.tx.fail = True
                raise XsError(errno.ENOSPC)
            if conn.tx is None:
                count += 1
            self._stamp(node)
            self._check_size_or_fail(conn, node)
        self._stamp(parent)
        self._check_size_or_fail(conn, parent)
        for name, node in reversed(chain):
            self._put(conn, name, node, stamp=False)
        self._put(conn, parent_path, parent, stamp=False)
        return chain[-1][1]

    def _rm(self, conn, payload):
        try:
            path, node = self._get_node(conn, _onearg(payload), PERM_WRITE)
        except _NodeError as exc:
            if exc.errno == errno.ENOENT and self._get(conn, _parent(exc.path)) is not None:
                return b"OK\0"
            raise
        if path == "/":
            raise XsError(errno.EINVAL)
        self._rm_node(conn, path)
        return b"OK\0"

    def _rm_node(self, conn: Connection | None, path: str) -> None:
        """rm_node: remove the subtree bottom-up, then unlink it from its parent."""
        parent = self._get(conn, _parent(path))
        if parent is None:
            raise XsError(errno.EINVAL)
        self._rm_walk(conn, path, path)
        parent = parent.copy()
        base = path[path.rfind("/") + 1:]
        if base not in parent.children:
            # A transaction's copy of the parent predates the node (created outside since):
            # the C daemon calls this corruption, answers EIO and leaves the removals made.
            raise XsError(errno.EIO)
        parent.children.remove(base)
        self._put(conn, _parent(path), parent)

    def _rm_walk(self, conn: Connection | None, path: str, root: str) -> None:
        """Depth-first, children in order, each removed after its own children. A listed
        child that is missing (a transaction's stale copy) stops the walk with EIO, with what
        was removed so far left removed, as the C daemon's walk_node_tree does."""
        node = self._get(conn, path)
        if node is None:
            raise XsError(errno.EIO)
        for child in list(node.children):
            self._rm_walk(conn, _join(path, child), root)
        self._delete(conn, path)
        self._fire(conn, path, node, exact=path != root)
        if path != root:
            self.generation += 1    # C rewrites the parent's child list, doomed as it is

    def _set_perms(self, conn, payload):
        strings = _strings(payload)
        if len(strings) < 2:
            raise XsError(errno.EINVAL)
        if not conn.privileged and self.quotas.perms and len(strings) - 1 > self.quotas.perms:
            raise XsError(errno.ENOSPC)
        perms = []
        for raw in strings[1:]:
            text = raw.decode("latin-1")
            if text[:1] not in _LETTER or not text[1:]:
                raise XsError(errno.EINVAL)
            parsed = _strtol(text[1:], 0)
            if parsed is None or parsed[1]:
                raise XsError(errno.EINVAL)
            domid = parsed[0] & 0xFFFFFFFF
            flags = _LETTER[text[0]]
            if domid not in self.domains:
                flags |= PERM_IGNORE
            perms.append([domid, flags])
        if perms[0][1] & PERM_IGNORE:
            raise XsError(errno.ENOENT)
        name = strings[0].decode("latin-1")
        if name.startswith("@"):
            current = self.special.get(name)
            if current is None:
                raise XsError(errno.EINVAL)
            need = PERM_WRITE | PERM_OWNER
            if self._perm_for(conn, current) & need != need:
                raise XsError(errno.EACCES)
            self.special[name] = perms
            return b"OK\0"
        path, node = self._get_node(conn, name, PERM_WRITE | PERM_OWNER)
        if not conn.privileged and perms[0][0] != node.perms[0][0]:
            raise XsError(errno.EPERM)
        old = [list(p) for p in node.perms]
        node = node.copy()
        node.perms = perms
        self._write_node(conn, path, node)
        self._fire(conn, path, node, exact=False, old_perms=old)
        return b"OK\0"

    # -- watches -------------------------------------------------------------------------
    def _watch(self, conn, payload):
        strings = _strings(payload)
        if len(strings) != 2:
            raise XsError(errno.EINVAL)
        name, token = strings[0].decode("latin-1"), strings[1]
        if name.startswith("@"):
            relative = None
            if len(name) > REL_PATH_MAX:
                raise XsError(errno.EINVAL)
        else:
            relative = None if name.startswith("/") else conn.home
            name = self._canonical(conn, name)
            if not self._valid(name):
                raise XsError(errno.EINVAL)
        if any(w.node == name and w.token == token for w in conn.watches):
            raise XsError(errno.EEXIST)
        dom = self.domains.get(conn.domid)
        if (not conn.privileged and dom is not None and self.quotas.watches
                and dom.watches > self.quotas.watches):
            raise XsError(errno.E2BIG)
        conn.watches.append(_Watch(name, token, relative))
        if dom is not None:
            dom.watches += 1
        return b"OK\0"      # request() then fires the initial event

    def _unwatch(self, conn, payload):
        strings = _strings(payload)
        if len(strings) != 2:
            raise XsError(errno.EINVAL)
        name = self._canonical(conn, strings[0].decode("latin-1"))
        for watch in conn.watches:
            if watch.node == name and watch.token == strings[1]:
                conn.watches.remove(watch)
                dom = self.domains.get(conn.domid)
                if dom is not None and dom.watches:
                    dom.watches -= 1
                return b"OK\0"
        raise XsError(errno.ENOENT)

    def _drop_watches(self, conn: Connection) -> None:
        dom = self.domains.get(conn.domid)
        if dom is not None:
            dom.watches = max(0, dom.watches - len(conn.watches))
        conn.watches.clear()

    def _reset_watches(self, conn, payload):
        self._drop_watches(conn)
        conn.transactions.clear()
        return b"OK\0"

    @staticmethod
    def _event_path(watch: _Watch, path: str) -> str:
        if watch.relative is not None and path.startswith(watch.relative):
            path = path[len(watch.relative):]
            if path.startswith("/"):
                path = path[1:]
        return path

    def _event(self, conn: Connection, path: str, token: bytes) -> None:
        payload = path.encode("latin-1") + b"\0" + token + b"\0"
        if len(payload) > PAYLOAD_MAX:
            return
        if not path.startswith("@") and any(
                m[0] == Op.WATCH_EVENT and m[3] == payload for m in conn.out):
            return      # an identical event is still queued: the C daemon drops it too
        conn.out.append((Op.WATCH_EVENT, 0, 0, payload))

    def _watch_permitted(self, conn: Connection, path: str, node: Node | None,
                         old_perms: Perms | None) -> bool:
        if old_perms is not None and self._perm_for(conn, old_perms) & PERM_READ:
            return True
        if node is None:
            node = self.nodes.get(path)
            if node is None:
                return False
        if self._perm_for(conn, node.perms) & PERM_READ:
            return True
        parent = self.nodes.get(_parent(path))
        return parent is not None and bool(self._perm_for(conn, parent.perms) & PERM_READ)

    def _fire(self, conn: Connection | None, path: str, node: Node | None, exact: bool,
              old_perms: Perms | None = None) -> None:
        tx = conn.tx if conn else None
        if tx is not None:
            acc = tx.accessed.get(path)
            if acc is None:
                tx.fail = True
            elif not acc.fire:
                acc.fire, acc.exact = True, exact
            elif not exact:
                acc.exact = False
            return
        special = path.startswith("@")
        for other in list(self.connections):
            if special:
                perms = self.special.get(path)
                if perms is None or not self._perm_for(other, perms) & PERM_READ:
                    continue
            elif not self._watch_permitted(other, path, node, old_perms):
                continue
            for watch in other.watches:
                hit = (watch.node == path) if exact else _is_child(path, watch.node)
                if hit:
                    self._event(other, self._event_path(watch, path), watch.token)

    # -- transactions --------------------------------------------------------------------
    def _transaction_start(self, conn, payload):
        if conn.tx is not None:
            raise XsError(errno.EBUSY)
        if (not conn.privileged and self.quotas.transactions
                and len(conn.transactions) > self.quotas.transactions):
            raise XsError(errno.ENOSPC)
        self.generation += 1
        while True:
            tx_id = conn.next_tx_id
            conn.next_tx_id = (conn.next_tx_id + 1) & 0xFFFFFFFF
            if tx_id and tx_id not in conn.transactions:
                break
        conn.transactions[tx_id] = _Transaction(tx_id, self.generation)
        return str(tx_id).encode() + b"\0"

    def _transaction_end(self, conn, payload):
        arg = _onearg(payload)
        if arg not in ("T", "F"):
            raise XsError(errno.EINVAL)
        tx = conn.tx
        if tx is None:
            raise XsError(errno.ENOENT)
        del conn.transactions[tx.id]
        conn.tx = None
        if arg == "T":
            self._commit(conn, tx)
        return b"OK\0"

    def _commit(self, conn: Connection, tx: _Transaction) -> None:
        if tx.fail:
            raise XsError(errno.ENOMEM)
        modified = [(path, acc) for path, acc in tx.accessed.items() if acc.modified]
        if tx.node_created and not conn.privileged and self.quotas.nodes:
            delta: dict[int, int] = {}
            for path, acc in modified:
                old = self.nodes.get(path)
                if old is not None:
                    delta[old.perms[0][0]] = delta.get(old.perms[0][0], 0) - 1
                if acc.node is not None:
                    delta[acc.node.perms[0][0]] = delta.get(acc.node.perms[0][0], 0) + 1
            for domid, d in delta.items():
                if domid != 0 and d and self.entries.get(domid, 0) + d >= self.quotas.nodes:
                    raise XsError(errno.ENOSPC)
        for path, acc in tx.accessed.items():
            glob = self.nodes.get(path)
            if (glob.generation if glob is not None else None) != acc.generation:
                raise XsError(errno.EAGAIN)
        for path, acc in modified:
            if acc.node is not None:
                self._put(None, path, acc.node)
            else:
                self._delete(None, path, commit=True)
        for path, acc in modified:
            if acc.fire:
                self._fire(None, path, None, acc.exact, acc.perms)

    # -- domains -------------------------------------------------------------------------
    def _introduce(self, conn, payload):
        strings = _strings(payload)
        if len(strings) < 3:
            raise XsError(errno.EINVAL)
        domid = _atoi(strings[0].decode("latin-1")) & 0xFFFFFFFF
        port = _atoi(strings[2].decode("latin-1")) & 0xFFFFFFFF
        if port == 0 or domid >= DOMID_FIRST_RESERVED:
            raise XsError(errno.EINVAL)
        if domid == 0:
            return b"OK\0"     # rebinds dom0's ring in the C daemon; no socket changes
        if domid in self.domains:
            for other in self.connections:       # re-introduction resets the connection
                if other.domid == domid:
                    self._drop_watches(other)
                    other.transactions.clear()
            return b"OK\0"
        try:
            self.on_introduce(domid)
        except OSError as exc:      # e.g. no room for its socket: refused, nothing changed
            raise XsError(exc.errno or errno.EIO) from None
        self.domains[domid] = _Domain(domid, self.generation)
        self._fire(None, "@introduceDomain", None, exact=True)
        return b"OK\0"

    def _domain_arg(self, payload) -> int:
        arg = _onearg(payload)
        if arg is None:
            raise XsError(errno.EINVAL)
        domid = _atoi(arg) & 0xFFFFFFFF
        if domid == 0:
            raise XsError(errno.EINVAL)
        if domid not in self.domains:
            raise XsError(errno.ENOENT)
        return domid

    def _release(self, conn, payload):
        self.release(self._domain_arg(payload))
        return b"OK\0"

    def release(self, domid: int) -> None:
        """Forget domain `domid`: drop its connections, remove the nodes it owns (firing their
        watches), strip it from the special permissions, fire @releaseDomain."""
        for other in [c for c in self.connections if c.domid == domid]:
            self.disconnect(other)
        self.on_release(domid)
        if self.entries.get(domid, 0) > 0:
            self._remove_owned(domid, "/")
        del self.domains[domid]
        for name, perms in self.special.items():
            if perms[0][0] == domid:
                perms[0][0] = 0
            self.special[name] = [perms[0]] + [p for p in perms[1:] if p[0] != domid]
        self._fire(None, "@releaseDomain", None, exact=True)

    def _remove_owned(self, domid: int, path: str) -> None:
        node = self.nodes.get(path)
        if node is None:
            return
        if node.perms[0][0] == domid and path != "/":
            self._rm_node(None, path)
            return
        for child in list(node.children):
            self._remove_owned(domid, _join(path, child))

    def _is_domain_introduced(self, conn, payload):
        arg = _onearg(payload)
        if arg is None:
            raise XsError(errno.EINVAL)
        domid = _atoi(arg) & 0xFFFFFFFF
        return b"T\0" if domid == DOMID_SELF or domid in self.domains else b"F\0"

    def _get_domain_path(self, conn, payload):
        arg = _onearg(payload)
        if arg is None:
            raise XsError(errno.EINVAL)
        return f"/local/domain/{_atoi(arg) & 0xFFFFFFFF}".encode() + b"\0"

    def _resume(self, conn, payload):
        self._domain_arg(payload)
        return b"OK\0"

    def _set_target(self, conn, payload):
        strings = _strings(payload)
        if len(strings) < 2:
            raise XsError(errno.EINVAL)
        domid, target = (_atoi(s.decode("latin-1")) & 0xFFFFFFFF for s in strings[:2])
        if domid not in self.domains or target not in self.domains:
            raise XsError(errno.ENOENT)
        self.domains[domid].target = target
        return b"OK\0"

    def _control(self, conn, payload):
        strings = _strings(payload)
        if not strings:
            raise XsError(errno.EINVAL)
        cmd = strings[0]
        if cmd == b"check" or cmd == b"print":
            return b"OK\0"
        if cmd == b"help":
            return b"check\nhelp\nprint\n\0"
        raise XsError(errno.EINVAL)

    _HANDLERS = {
        Op.CONTROL: _control, Op.DIRECTORY: _directory, Op.READ: _read,
        Op.GET_PERMS: _get_perms, Op.WATCH: _watch, Op.UNWATCH: _unwatch,
        Op.TRANSACTION_START: _transaction_start, Op.TRANSACTION_END: _transaction_end,
        Op.INTRODUCE: _introduce, Op.RELEASE: _release, Op.GET_DOMAIN_PATH: _get_domain_path,
        Op.WRITE: _write, Op.MKDIR: _mkdir, Op.RM: _rm, Op.SET_PERMS: _set_perms,
        Op.IS_DOMAIN_INTRODUCED: _is_domain_introduced, Op.RESUME: _resume,
        Op.SET_TARGET: _set_target, Op.RESET_WATCHES: _reset_watches,
        Op.DIRECTORY_PART: _directory_part,
    }


class _NodeError(XsError):
    """A failed node lookup, remembering the canonical path (WRITE/MKDIR/RM go on from it)."""

    def __init__(self, path: str, err: int):
        super().__init__(err)
        self.path = path


def _is_child(child: str, parent: str) -> bool:
    if parent == "/":
        return True
    return child == parent or child.startswith(parent + "/")
