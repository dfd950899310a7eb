"""The bench harness works (not how fast anything is): a smoke run with tiny counts brings the
backbone up, runs every case natively and forwarded, and writes a results.json whose objects
carry native, forwarded, ratio, units, repeats and spread; the report's arithmetic (medians,
spread, target verdicts) is checked on made-up runs.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from mwcomms.tools import bench, bench_report


def _case(better="lower", target=bench.ROUND_TRIP):
    return bench.Case("x", [bench.Metric("x", "X", "us", "v", better, target)], run=None)


def test_summarise_median_ratio_and_verdict():
    runs = {"native": [{"v": 10.0}, {"v": 12.0}, {"v": 11.0}],
            "forwarded": [{"v": 30.0}, {"v": 14.0}, {"v": 16.0}]}
    row, = bench.summarise(_case(), runs, [], 3)
    assert (row["native"], row["forwarded"]) == (11.0, 16.0)
    assert row["ratio"] == pytest.approx(16 / 11)
    assert row["spread"]["forwarded"] == {"min": 14.0, "max": 30.0, "relative": 1.0}
    assert row["target"]["met"] is True and row["target"]["must_met"] is True
    row, = bench.summarise(_case(), {"native": [{"v": 10.0}], "forwarded": [{"v": 25.0}]}, [], 1)
    assert row["target"]["met"] is False and row["target"]["must_met"] is False
    assert "MISSED (must: MISSED)" in bench_report.table(
        {"machine": bench.machine(), "load_average": {"min": 0, "median": 0, "max": 0},
         "repeats": 1, "mode": "test", "backend": "sim", "cases": [row]})


def test_summarise_throughput_and_absolute_targets():
    row, = bench.summarise(_case("higher", bench.THROUGHPUT),
                           {"native": [{"v": 100.0}], "forwarded": [{"v": 55.0}]}, [], 1)
    assert row["target"]["met"] is False and row["target"]["must_met"] is True
    row, = bench.summarise(_case("lower", bench.MEMORY),
                           {"native": [{"v": 1.0}], "forwarded": [{"v": 20.0}]}, [], 1)
    assert row["target"]["met"] is False       # 20 > 16, whatever the ratio
    row, = bench.summarise(_case(), {}, ["skipped: x not installed"], 0)
    assert row["native"] is None and row["ratio"] is None and row["target"]["met"] is None
    assert row["errors"] == ["skipped: x not installed"]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("gcc"),
                    reason="needs root, unshare(1) and gcc: native runs get a network namespace "
                           "of their own and the load programs are compiled")
def test_smoke_run_writes_results(tmp_path):
    """Smoke run: every case, both sides, 2 repeats, tiny counts (about 30 s)."""
    out = tmp_path / "bench"
    env = dict(os.environ, PYTHONSAFEPATH="1")
    p = subprocess.run([sys.executable, "-m", "mwcomms.tools.bench", "--smoke", "--no-chart",
                        "--out", str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["machine"]["cores"] >= 1 and res["machine"]["kernel"]
    assert res["load_average"]["max"] >= res["load_average"]["min"] >= 0
    by_name = {r["case"]: r for r in res["cases"]}
    always = ["tcp_rr_p50", "tcp_rr_p99", "udp_rr_p50", "udp_rr_p99", "bulk_1", "bulk_8",
              "conn_rate", "conn_memory"]
    # skipped without their packages; the "2" rows (both ends forwarded) have no target
    optional = ["redis_set", "redis_get", "http", "redis2_set", "redis2_get", "http2"]
    assert sorted(by_name) == sorted(always + optional)
    for name in always + [n for n in optional if by_name[n]["repeats"]]:
        r = by_name[name]
        assert r["repeats"] == 2 and r["unit"], r
        assert not r.get("errors"), r["errors"]
        assert len(r["native_runs"]) == 2 and len(r["forwarded_runs"]) == 2, r
        if name != "conn_memory":       # memory deltas of a few connections may be ~0 natively
            assert r["native"] > 0 and r["forwarded"] > 0, r
            assert r["ratio"] == pytest.approx(r["forwarded"] / r["native"])
        assert set(r["spread"]) == {"native", "forwarded"}
        if name in ("redis2_set", "redis2_get", "http2"):
            assert "target" not in r, r
        else:
            assert r["target"]["met"] in (True, False)
    assert by_name["conn_memory"]["detail"]["conns"] == 50
    # where the time went: CPU and context switches per operation, both sides
    cost = by_name["tcp_rr_p50"]["per_op"]
    assert cost["op"] == "round trip"
    assert cost["native"]["apps_switches"] > 0 and cost["forwarded"]["mwcommsd_cpu_us"] >= 0
    # the table names every case and a verdict for each
    for r in res["cases"]:
        assert r["title"] in p.stdout
    assert "fwd/nat" in p.stdout


def test_profile_parses_perf_trace_summary():
    from mwcomms.tools import bench_profile

    text = """
 Summary of events:

 python (14712), 20 events, 0.0%

   syscall            calls  errors  total       min       avg       max       stddev
                                     (msec)    (msec)    (msec)    (msec)        (%)
   --------------- --------  ------ -------- --------- --------- ---------     ------
   futex                 10     10  4505.010     0.000   450.501   504.208     11.11%

 python (14724), 105454 events, 98.7%

   syscall            calls  errors  total       min       avg       max       stddev
   --------------- --------  ------ -------- --------- --------- ---------     ------
   epoll_wait         19143      0  3000.000     0.000     0.100     1.000      1.00%
   futex                  4      1     0.010     0.001     0.002     0.003      1.00%
"""
    got = bench_profile.parse_trace(text)
    assert got == {"python": {"futex": [14, 11], "epoll_wait": [19143, 0]}}
    lines = bench_profile._show("x", got["python"], 100)
    assert lines[0] == "  x: 191.6 system calls per operation"
    assert "epoll_wait" in lines[1] and "(0.11 failed)" in lines[2]


def test_hogs_run_for_the_bench_and_are_gone_after():
    """--hog N: N busy loops while the bench runs, none left behind."""
    with bench.Hogs(2) as hogs:
        assert len(hogs.procs) == 2 and all(p.poll() is None for p in hogs.procs)
    assert all(p.returncode is not None for p in hogs.procs)
