"""What `make bench` shows: the spread of a set of runs, the ratio table, the PNG chart.

Sans-IO apart from the chart's file: everything works on the results dict that bench.py
writes as results.json (so a saved results.json can be re-rendered).
"""
from __future__ import annotations

import statistics

__all__ = ["spread", "table", "chart"]


def spread(values: list[float]) -> dict | None:
    """min, max and (max - min) / median of a set of runs; None without runs."""
    if not values:
        return None
    med = statistics.median(values)
    return {"min": min(values), "max": max(values),
            "relative": (max(values) - min(values)) / med if med else None}


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _pm(row: dict, side: str) -> str:
    s = row["spread"].get(side) if row.get("spread") else None
    if not s or s.get("relative") is None:
        return ""
    return f" ±{50 * s['relative']:.0f}%"


def _verdict(row: dict) -> str:
    t = row.get("target")
    if not t:
        return ""
    if t["met"] is None:
        return f"{t['text']}: no result"
    word = "met" if t["met"] else "MISSED"
    if not t["met"] and t.get("must_met") is not None:
        word += " (must: met)" if t["must_met"] else " (must: MISSED)"
    return f"{t['text']}: {word}"


def table(result: dict) -> str:
    """The ratio table: one line per case, median of the repeats, half the relative spread
    (max - min) as ±, forwarded/native, and the target with met/missed."""
    m, load = result["machine"], result["load_average"]
    head = (f"machine: {m['cpu']}, {m['cores']} cores, kernel {m['kernel']}; load average "
            f"during the run {load['min']:.2f}..{load['max']:.2f} (median {load['median']:.2f}); "
            f"{result['repeats']} repeats per side, {result['mode']} mode, {result['backend']} backend"
            + (f", {result['hogs']} CPU-bound busy loops running (--hog)" if result.get("hogs") else "")
            + (f", tree {result['revision']}" if result.get("revision") else ""))
    cols = ("case", "unit", "native", "forwarded", "fwd/nat", "target")
    lines = []
    for r in result["cases"]:
        ratio = f"{r['ratio']:.2f}x" if r.get("ratio") is not None else "-"
        lines.append((r["title"], r["unit"], _num(r["native"]) + _pm(r, "native"),
                      _num(r["forwarded"]) + _pm(r, "forwarded"), ratio, _verdict(r)))
    widths = [max(len(c), *(len(l[i]) for l in lines)) if lines else len(c)
              for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:{'<' if i in (0, 1, 5) else '>'}{w}}}" for i, w in enumerate(widths))
    out = [head, "", fmt.format(*cols).rstrip(), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*l).rstrip() for l in lines]
    notes = []
    for r in result["cases"]:
        for e in r.get("errors", [])[:2]:
            notes.append(f"{r['case']}: {e}")
        d = r.get("detail")
        if d and r["case"] == "conn_memory":
            parts = [f"{d['conns']} of {d['wanted']} connections opened"
                     + (f" (then: {d['stopped_by']})" if d.get("stopped_by") else "")
                     + " with the client under the shim and the server native in the INS's "
                     "namespace"]
            for k in ("mwcommsd", "ins"):
                if f"{k}_pss_per_conn" in d:
                    parts.append(f"{k} {d[f'{k}_pss_per_conn'] / 1024:.1f} KiB Pss/conn")
            parts.append(f"apps {d['apps_rss_per_conn'] / 1024:.1f} KiB Rss/conn")
            parts.append(f"kernel slab {d['kernel_slab_per_conn'] / 1024:.1f} KiB/conn (host-wide)")
            notes.append("conn_memory: " + ", ".join(parts))
    cpu, labels = [], set()
    for r in result["cases"]:
        c = r.get("per_op") or {}
        label = r["case"].removesuffix("_p50").removesuffix("_p99").removesuffix(
            "_set").removesuffix("_get")       # one line per case, not per metric
        if "native" in c and "forwarded" in c and label not in labels:
            labels.add(label)
            n, f = c["native"], c["forwarded"]
            cpu.append(f"  {label:<11} {c['op']:<11} {n['apps_cpu_us']:8.1f} us {n['apps_switches']:5.1f} sw"
                       f" | {f['apps_cpu_us']:8.1f} us {f['apps_switches']:5.1f} sw"
                       f" | {f.get('mwcommsd_cpu_us', 0):8.1f} us {f.get('mwcommsd_switches', 0):5.1f} sw"
                       f" | {f.get('ins_cpu_us', 0):8.1f} us {f.get('ins_switches', 0):5.1f} sw"
                       f" | {_cpu_ratio(n, f)}")
    if cpu:
        notes += ["", "Cost per operation (median of runs): CPU time and context switches",
                  f"  {'case':<11} {'op':<11} {'native programs':>20} | {'forwarded programs':>20}"
                  f" | {'mwcommsd':>20} | {'INS':>20} | CPU nat/fwd"] + cpu
        notes.append("  (CPU nat/fwd: native CPU per operation over the forwarded CPU of every "
                     "process: when both sides keep every core busy, their rates compare about so)")
    ref = result.get("reference") or {}
    if "ring_rtt_sleep_us" in ref:
        notes += ["", "Reference, this machine now (make demo's link probe, no sockets): one ring "
                  f"round trip {ref['ring_rtt_sleep_us']:.2f} us with both sides sleeping on the "
                  f"doorbell, {ref.get('ring_rtt_spin20us_us', float('nan')):.2f} us spinning 20 us "
                  "first; a forwarded round trip crosses two ring round trips and four socketpair "
                  "hops."]
    if notes:
        out += [""] + notes
    return "\n".join(out)


def _cpu_ratio(native: dict, fwd: dict) -> str:
    n = sum(v for k, v in native.items() if k.endswith("_cpu_us"))
    f = sum(v for k, v in fwd.items() if k.endswith("_cpu_us"))
    return f"{n / f:.2f}" if f > 0 else "-"


def _relative_performance(r: dict) -> float | None:
    """Forwarded as a fraction of native, higher is better (latency: native/forwarded)."""
    if r.get("ratio") in (None, 0):
        return None
    return r["ratio"] if r["better"] == "higher" else 1 / r["ratio"]


def chart(result: dict, path: str) -> None:
    """A PNG: forwarded performance relative to native per case (bars, target marks) and the
    memory per idle connection against its budget. ImportError without matplotlib."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["cases"] if not (r.get("target") or {}).get("absolute")]
    mem = [r for r in result["cases"] if (r.get("target") or {}).get("absolute")]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 0.45 * len(rows) + 2.5),
                                  gridspec_kw={"width_ratios": [4, 1]})
    names = [r["title"] for r in rows]
    vals = [_relative_performance(r) or 0 for r in rows]
    colors = []
    for r in rows:
        met = (r.get("target") or {}).get("met")
        colors.append("#4a9a4a" if met else "#c0504d" if met is False else "#999999")
    y = list(range(len(rows)))[::-1]
    ax.barh(y, vals, color=colors)
    for yi, r, v in zip(y, rows, vals):
        t = r.get("target")
        if t and not t["absolute"]:
            goal = t["goal"] if r["better"] == "higher" else 1 / t["goal"]
            ax.plot([goal, goal], [yi - 0.4, yi + 0.4], color="black", lw=2)
        ax.text(v + 0.01, yi, f"{v:.2f}" if v else "no result", va="center", fontsize=8)
    ax.axvline(1.0, color="grey", ls="--", lw=1)
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlabel("forwarded performance / native (1 = native; black mark = target; "
                  "latency as native/forwarded)")
    ax.set_xlim(0, max(1.1, max(vals or [0]) * 1.15))
    m, load = result["machine"], result["load_average"]
    ax.set_title(f"mwcomms bench ({result['backend']} backend, {result['mode']}): {m['cpu']}, "
                 f"{m['cores']} cores, kernel {m['kernel']}, load {load['median']:.2f}", fontsize=9)
    for r in mem:
        t = r["target"]
        vals2 = [r["native"] or 0, r["forwarded"] or 0]
        ax2.bar(["native", "forwarded"], vals2,
                color=["#7f9fbf", "#4a9a4a" if t["met"] else "#c0504d"])
        ax2.axhline(t["goal"], color="black", lw=2)
        ax2.set_ylabel(r["unit"])
        d = r.get("detail") or {}
        ax2.set_title(f"{r['title']}\n({d.get('conns', '?')} of {d.get('wanted', '?')} "
                      "connections opened)", fontsize=8)
    if not mem:
        ax2.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
