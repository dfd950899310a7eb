"""Real Xen 4.17 under QEMU: one boot per session, one test per payload step (steps.py).

The module-scoped fixture runs the harness once; each step of guest/steps.py is a test that
passes when its XENT line says PASS, is skipped when it says SKIP (e.g. "not yet built"), and
fails on FAIL or when the step printed nothing. Every XENT line is written to the terminal so
CI logs show them. Where QEMU cannot run (not installed and not installable, or no TCG), every
test here skips with the reason.
"""
import importlib.util
import os

import pytest

pytestmark = pytest.mark.realxen

_spec = importlib.util.spec_from_file_location(
    "realxen_harness", os.path.join(os.path.dirname(os.path.abspath(__file__)), "harness.py"))
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)


@pytest.fixture(scope="module")
def realxen(pytestconfig):
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")

    def out(line):
        """Straight to the terminal, past pytest's capture, so CI logs show the run live."""
        if reporter is None or capture is None:
            print(line)
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)

    out("")
    cfg = harness.Config(log=out, echo_logs=False)   # results live; their context on failure
    try:
        result = harness.run(cfg)
    except harness.NoQemu as e:
        out("realxen: SKIPPED: %s" % e)
        pytest.skip(str(e))
    out("realxen: exit %d: %s" % (result.exit_code, result.summary))
    return result


def test_realxen_boot(realxen):
    """The images were built, Xen and dom0 came up, and the payload ran to its end."""
    assert realxen.exit_code != harness.EXIT_SETUP, realxen.summary
    assert realxen.booted, realxen.summary
    assert realxen.finished, realxen.summary


@pytest.mark.parametrize("step", harness.STEP_NAMES)
def test_realxen_step(realxen, step):
    if realxen.exit_code == harness.EXIT_SETUP or not realxen.booted:
        pytest.fail("no real-Xen run: %s" % realxen.summary)
    status = realxen.status.get(step)
    why = realxen.reason.get(step, "")
    if status is None:
        pytest.fail("step %s printed no XENT line (%s)" % (step, realxen.summary))
    if status == "SKIP":
        pytest.skip("%s: %s" % (step, why))
    # what explains a failure: the failed sub-results (<step>/<case>), else the step's log lines
    subfails = [l for l in realxen.lines if l.startswith("XENT FAIL %s/" % step)]
    context = "\n".join(subfails or realxen.context.get(step, []))
    assert status == "PASS", "%s: %s\n%s\n(whole console: %s)" % (step, why, context, realxen.serial_log)
