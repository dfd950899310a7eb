"""`mwcomms` as a user meets it before and around the backbone: clear errors, exit codes."""
import os
import subprocess
import sys

import pytest

MWCOMMS = os.path.join(os.path.dirname(sys.executable), "mwcomms")


def mwcomms(*args, run_dir):
    return subprocess.run([MWCOMMS, "--dir", str(run_dir), *args], capture_output=True, text=True,
                          timeout=60)


def test_run_when_not_up_says_so(tmp_path):
    r = mwcomms("run", "--", "true", run_dir=tmp_path)
    assert r.returncode == 3
    assert "the backbone is not up" in r.stderr and "mwcomms up" in r.stderr


def test_run_without_command_is_a_usage_error(tmp_path):
    r = mwcomms("run", run_dir=tmp_path)
    assert r.returncode == 2 and "nothing to run" in r.stderr


def test_down_when_not_up_is_harmless(tmp_path):
    r = mwcomms("down", run_dir=tmp_path)
    assert r.returncode == 0 and "not up" in r.stdout


def test_stale_state_is_reported_as_broken(tmp_path):
    (tmp_path / "state.json").write_text('{"pids": {"mwcommsd": 999999999}, "control": "x"}')
    r = mwcomms("run", "--", "true", run_dir=tmp_path)
    assert r.returncode == 3 and "mwcommsd not running" in r.stderr


def test_xen_backend_is_not_started_on_one_host(tmp_path):
    r = mwcomms("up", "--backend", "xen", run_dir=tmp_path)
    assert r.returncode == 2 and "docs/xen.md" in r.stderr


def test_negative_spin_budget_is_a_usage_error(tmp_path):
    r = mwcomms("up", "--spin-us", "-5", run_dir=tmp_path)
    assert r.returncode == 2 and "--spin-us -5" in r.stderr
    assert not (tmp_path / "state.json").exists()      # nothing was started


def test_run_is_the_program_itself(tmp_path):
    """`mwcomms run` execs the program: same pid for signals, its exit status."""
    import json
    state = {"pids": {}, "control": str(tmp_path / "control.sock")}
    (tmp_path / "state.json").write_text(json.dumps(state))
    p = subprocess.Popen([MWCOMMS, "--dir", str(tmp_path), "run", "--", "sh", "-c",
                          "echo $$; exec sleep 30"], stdout=subprocess.PIPE, text=True)
    child_pid = int(p.stdout.readline())
    assert child_pid == p.pid
    p.terminate()
    assert p.wait(10) == -15


def test_run_reports_a_missing_command(tmp_path):
    import json
    (tmp_path / "state.json").write_text(json.dumps({"pids": {}, "control": "x"}))
    r = mwcomms("run", "--", "no-such-command-xyz", run_dir=tmp_path)
    assert r.returncode == 127 and "command not found" in r.stderr


def test_run_warns_about_a_static_binary(tmp_path):
    """LD_PRELOAD cannot reach a statically linked program: `mwcomms run` says so (and that
    --isolate is the answer) instead of letting it use this host's network unnoticed."""
    import json
    import shutil
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    (tmp_path / "main.c").write_text("int main(void) { return 7; }\n")
    built = subprocess.run(["gcc", "-static", "-o", str(tmp_path / "static"),
                            str(tmp_path / "main.c")], capture_output=True, text=True)
    if built.returncode != 0:
        pytest.skip(f"cannot link statically here (no libc.a?): {built.stderr[-300:]}")
    (tmp_path / "state.json").write_text(json.dumps({"pids": {}, "control": "x"}))
    r = mwcomms("run", "--", str(tmp_path / "static"), run_dir=tmp_path)
    assert r.returncode == 7 and "statically linked" in r.stderr and "--isolate" in r.stderr
    r = mwcomms("run", "--", "true", run_dir=tmp_path)
    assert r.returncode == 0 and r.stderr == ""


def test_set_user_id_programs_are_named_for_users_but_root(tmp_path):
    """The loader ignores LD_PRELOAD for a set-user-ID program run by a user (secure
    execution), not for root: the warning follows that."""
    import shutil
    from mwcomms.cli import _preload_ignored
    prog = tmp_path / "suid-true"
    shutil.copy(shutil.which("true"), prog)
    assert _preload_ignored(str(prog), 1000) == ""
    prog.chmod(0o4755)
    assert _preload_ignored(str(prog), 1000) == "is set-user/group-ID"
    assert _preload_ignored(str(prog), 0) == ""
