"""Programs whose behaviour depends on a server's state, run twice against a server started
natively in the INS's network namespace: once natively in that namespace (`ip netns exec`),
once through the backbone (`mwcomms run`); both must print the same lines.

- full_backlog.py: a listener whose accept queue is full drops SYNs, so connect() waits:
  SO_SNDTIMEO bounds a blocking connect (EINPROGRESS), a second connect says EALREADY, a
  non-blocking connect stays unwritable; a blocking connect interrupted by a signal goes on
  when the handler has SA_RESTART (and succeeds once the server accepts), fails with EINTR
  when it has not.
"""
import sys
from pathlib import Path

PROG = str(Path(__file__).resolve().parent / "programs" / "full_backlog.py")
PY = sys.executable


def _probe(backbone, programs, argv_of, name, serve="serve", probe="probe"):
    srv = programs(backbone.netns_argv([PY, PROG, serve]), f"server-{name}")
    port = srv.line("PORT ").split()[1]
    p = programs(argv_of([PY, PROG, probe, port]), f"probe-{name}")
    p.proc.wait(30)
    srv.stop()
    return [ln for ln in p.text().splitlines() if not ln.startswith(("tcp_ip_wrapper", "mwcomms"))]


def test_connect_to_a_full_backlog_same_as_native(backbone, programs):
    native = _probe(backbone, programs, backbone.netns_argv, "native")
    assert native[:2] == ["first-connect ok",
                          "blocking-connect-sndtimeo EINPROGRESS waited-the-timeout True"], native
    forwarded = _probe(backbone, programs, backbone.argv, "forwarded")
    assert forwarded == native


def test_connect_interrupted_by_signals_same_as_native(backbone, programs):
    args = {"serve": "serve-slow", "probe": "probe-signals"}
    native = _probe(backbone, programs, backbone.netns_argv, "native", **args)
    assert native == ["connect-sa_restart ok handler-ran True went-on-past-signal True",
                      "connect-no_sa_restart EINTR handler-ran True went-on-past-signal False"], \
        native
    forwarded = _probe(backbone, programs, backbone.argv, "forwarded", **args)
    assert forwarded == native
