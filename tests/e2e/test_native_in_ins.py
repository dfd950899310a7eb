"""Programs whose behaviour depends on a server's state, run twice against a server started
natively in the INS's network namespace: once natively in that namespace (`ip netns exec`),
once through the backbone (`mwcomms run`); both must print the same lines.

- full_backlog.py: a listener whose accept queue is full drops SYNs, so connect() waits:
  SO_SNDTIMEO bounds a blocking connect (EINPROGRESS), a second connect says EALREADY, a
  non-blocking connect stays unwritable.
"""
import sys
from pathlib import Path

PROG = str(Path(__file__).resolve().parent / "programs" / "full_backlog.py")
PY = sys.executable


def _probe(backbone, programs, argv_of, name):
    srv = programs(backbone.netns_argv([PY, PROG, "serve"]), f"server-{name}")
    port = srv.line("PORT ").split()[1]
    p = programs(argv_of([PY, PROG, "probe", port]), f"probe-{name}")
    p.proc.wait(30)
    srv.stop()
    return [ln for ln in p.text().splitlines() if not ln.startswith(("tcp_ip_wrapper", "mwcomms"))]


def test_connect_to_a_full_backlog_same_as_native(backbone, programs):
    native = _probe(backbone, programs, backbone.netns_argv, "native")
    assert native[:2] == ["first-connect ok",
                          "blocking-connect-sndtimeo EINPROGRESS waited-the-timeout True"], native
    forwarded = _probe(backbone, programs, backbone.argv, "forwarded")
    assert forwarded == native
