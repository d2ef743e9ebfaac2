#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Merges kg-bench JSON files into one table of medians and ratios (bench/run.sh calls it).

usage: report.py [--json OUT] [--mode NAME] [--check] FILE...

The runs of one (kernel, target, scenario) found in several files are pooled and the median
of every metric is taken over all of them. Ratios: kernelgate/direct and
JupyterServer/kernelgate, for every metric both sides have. Then the targets of issue 4 are
checked against the medians (a report, not a test). --check (the smoke test) exits non-zero
when a scenario failed or one of the ten scenarios is missing for kernelgate; it asserts
nothing about time.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import re
import statistics
import sys
from pathlib import Path

SCENARIOS = ["start", "kernel_info", "execute", "flood", "iopub_flood", "stream", "fanout",
             "idle_ws", "broadcast", "idle_kernels"]
TARGETS = ["direct", "kernelgate", "kernelgate-legacy", "kernelgate-sleep", "kernelgate-busy-poll",
           "kernelgate-warm", "kernelgate-tls", "jupyter-server", "jupyter-server-nodelay",
           "jupyter-server-tls", "front-kernelgate", "front-jupyter-server"]
SHORT = {"direct": "direct", "kernelgate": "kg", "kernelgate-legacy": "kg-legacy",
         "kernelgate-sleep": "kg-sleep", "kernelgate-busy-poll": "kg-poll",
         "kernelgate-warm": "kg-warm", "kernelgate-tls": "kg-tls", "jupyter-server": "JS",
         "jupyter-server-nodelay": "JS-nodelay", "jupyter-server-tls": "JS-tls",
         "front-kernelgate": "JS>kg", "front-jupyter-server": "JS>JS"}
# kernelgate in another configuration than its default, beside it for the latency and fan-out
# scenarios: (target, how the targets list names its flags).
VARIANTS = [("kernelgate-sleep", "--predictive-poll 0"), ("kernelgate-busy-poll", "--busy-poll")]
JS_NAMES = {"jupyter-server": "JS(default)", "jupyter-server-nodelay": "JS-nodelay"}
# Metrics shown in the table, in order (a pattern with "\\d" matches every fan-out level).
# gw_cpu_* is the gateway's own CPU time per unit of work (from /proc/PID/task/*/schedstat):
# unlike rates and latencies it does not depend on what else runs on the machine.
# total_cpu_* adds the kernels' and the client's (kernel_cpu_*, client_cpu_* in the JSON), and
# cores_busy is that total over the measurement's length: where it is near the machine's
# core count, a target's rate is bound by its total CPU per unit of work.
ROWS = [
    ("start", ["kernel_info_ms", "ready_ms", "post_ms", "after_post_ms",
               "pair_direct_kernel_info_ms", "pair_diff_ms", "pair_post_diff_ms"]),
    ("kernel_info", ["p50_us", "p99_us", "gw_cpu_us_per_rt"]),
    ("execute", ["p50_us", "p99_us", "gw_cpu_us_per_rt"]),
    ("flood", ["req_per_s", "msgs_per_s", "gw_cpu_us_per_msg", "total_cpu_us_per_msg",
               "cores_busy"]),
    ("iopub_flood", ["msgs_per_s", "complete", "gw_cpu_us_per_msg", "total_cpu_us_per_msg",
                     "cores_busy"]),
    ("stream", ["mb_per_s", "first_mb_per_s", "complete", "gw_cpu_us_per_mb",
                "total_cpu_us_per_mb", "cores_busy"]),
    ("fanout", [r"k\d+_rt_per_s", r"k\d+_gw_cpu_us_per_rt", "start_failures"]),
    ("idle_ws", ["kib_per_conn", "connections", "rt_after_us"]),
    ("broadcast", ["delivered_per_s", "complete", "gw_cpu_us_per_msg"]),
    ("idle_kernels", ["kib_per_kernel", "kernels"]),
]


def lower_is_better(metric: str) -> bool:
    if "_cpu_" in metric or "runq" in metric or metric in ("kib_per_conn", "kib_per_kernel"):
        return True
    return metric.endswith(("_ms", "_us", "_s")) and not metric.endswith("_per_s")


def fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    a = abs(v)
    if a >= 1e5 or (float(v).is_integer() and a < 1e15):
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:,.1f}"
    return f"{v:.3g}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def load(files):
    """{kernel: {label: {scenario: {"runs": [...], "errors": [...], "skipped": str}}}}"""
    pooled: dict = {}
    docs = []
    for f in files:
        try:
            doc = json.loads(Path(f).read_text())
        except (OSError, ValueError) as e:
            print(f"report.py: cannot read {f}: {e}", file=sys.stderr)
            continue
        docs.append(doc)
        k = pooled.setdefault(doc.get("kernel", "?"), {}).setdefault(doc.get("label", "?"), {})
        for name, res in doc.get("scenarios", {}).items():
            slot = k.setdefault(name, {"runs": [], "errors": [], "skipped": None})
            slot["runs"].extend(res.get("runs", []))
            if res.get("error"):
                slot["errors"].append(res["error"])
            if res.get("skipped"):
                slot["skipped"] = res["skipped"]
    return docs, pooled


def medians(pooled):
    out: dict = {}
    for kernel, labels in pooled.items():
        for label, scen in labels.items():
            for name, slot in scen.items():
                keys: dict = {}
                for run in slot["runs"]:
                    for m, v in run.items():
                        if v is not None:
                            keys.setdefault(m, []).append(v)
                out.setdefault(kernel, {}).setdefault(label, {})[name] = {
                    m: statistics.median(v) for m, v in keys.items()}
    return out


def expand(wanted, found):
    """A metric name, or a pattern (with "\\d") as every fan-out level found, lowest first."""
    if "\\" not in wanted:
        return [wanted]
    return sorted((m for m in found if re.fullmatch(wanted, m)),
                  key=lambda m: int(re.match(r"k(\d+)", m).group(1)))


def render(lines):
    """Rows of cells as aligned text, the first row a heading."""
    widths = [max(len(r[i]) for r in lines) for i in range(len(lines[0]))]
    text = []
    for i, r in enumerate(lines):
        text.append("  ".join(c.ljust(widths[j]) if j == 0 else c.rjust(widths[j])
                              for j, c in enumerate(r)))
        if i == 0:
            text.append("  ".join("-" * w for w in widths))
    return text


def get(med, kernel, label, scenario, metric):
    return med.get(kernel, {}).get(label, {}).get(scenario, {}).get(metric)


def table(med, pooled, kernel, docs_by):
    labels = [t for t in TARGETS if t in med.get(kernel, {})]
    labels += sorted(t for t in med.get(kernel, {}) if t not in TARGETS)
    rows = []
    for scenario, wanted in ROWS:
        found = set()
        for lab in labels:
            found |= set(med[kernel].get(lab, {}).get(scenario, {}))
        for m in (m for w in wanted for m in expand(w, found)):
            vals = {lab: get(med, kernel, lab, scenario, m) for lab in labels}
            if all(v is None for v in vals.values()):
                continue
            rows.append((scenario, m, vals))
    variants = [v for v, _ in VARIANTS if v in labels]
    head = ["scenario.metric"] + [SHORT.get(lab, lab) for lab in labels] + \
        ["kg/direct"] + [f"{SHORT[v]}/direct" for v in variants] + ["JS/kg", "JS-nodelay/kg"]
    lines = [head]
    for scenario, m, vals in rows:
        kg = vals.get("kernelgate")
        lines.append([f"{scenario}.{m}"] + [fmt(vals[lab]) for lab in labels] + [
            fmt(ratio(kg, vals.get("direct")))] +
            [fmt(ratio(vals.get(v), vals.get("direct"))) for v in variants] + [
            fmt(ratio(vals.get("jupyter-server"), kg)),
            fmt(ratio(vals.get("jupyter-server-nodelay"), kg))])
    text = render(lines)
    loads = []
    for lab in labels:
        la = [x for d in docs_by.get((kernel, lab), []) for x in
              (d.get("loadavg", {}).get("start"), d.get("loadavg", {}).get("end")) if x is not None]
        if la:
            loads.append(f"{SHORT.get(lab, lab)} {min(la):.1f}-{max(la):.1f}")
    if loads:
        text.append("load average (1 min) during the runs: " + ", ".join(loads))
    problems = []
    for lab in labels:
        for name, slot in pooled[kernel].get(lab, {}).items():
            for e in slot["errors"]:
                problems.append(f"  {SHORT.get(lab, lab)} {name}: ERROR {e}")
    return "\n".join(text), rows, problems


# Jupyter Server (nodelay) in front of a gateway, against the same server with its own local
# kernels: (scenario, metric). No kernel start: Jupyter Server 1.23's gateway mode loses a
# message a client sends right after its WebSocket opens (it queues it on a future that its
# connection to the gateway then replaces), so the first kernel_info is answered only when
# kg-bench resends it after 1 s, whichever gateway is behind the front.
FRONT_ROWS = [("kernel_info", "p50_us"), ("kernel_info", "p99_us"),
              ("execute", "p50_us"), ("execute", "p99_us"), ("flood", "msgs_per_s"),
              ("iopub_flood", "msgs_per_s"), ("stream", "mb_per_s"), ("fanout", r"k\d+_rt_per_s"),
              ("broadcast", "delivered_per_s")]
FRONT_LOCAL, FRONT_KG, FRONT_JS = "jupyter-server-nodelay", "front-kernelgate", "front-jupyter-server"


def times_better(a, b, metric):
    """How many times a is better than b (above 1: a is better)."""
    return ratio(b, a) if lower_is_better(metric) else ratio(a, b)


def side_rows(med, kernel, spec, labels, measured):
    """Targets side by side: (scenario, metric, *medians in the order of labels) for each
    (scenario, metric or pattern) of spec that one of the targets in measured has."""
    labs = med.get(kernel, {})
    rows = []
    for scenario, want in spec:
        found = set()
        for lab in labels:
            found |= set(labs.get(lab, {}).get(scenario, {}))
        for m in expand(want, found):
            v = {lab: get(med, kernel, lab, scenario, m) for lab in labels}
            if any(v[lab] is not None for lab in measured):
                rows.append((scenario, m, *(v[lab] for lab in labels)))
    return rows


def print_sections(pooled, med, table_fn, heading, to_json):
    """Prints table_fn's table for each kernel that has one; {kernel: {"scenario.metric":
    to_json(metric, *medians)}} for the JSON."""
    out: dict = {}
    for kernel in sorted(pooled, key=lambda k: (k != "echo", k)):
        text, rows = table_fn(med, kernel)
        if not rows:
            continue
        print(f"\n== kernel {kernel}: {heading}")
        print(text)
        out[kernel] = {f"{r[0]}.{r[1]}": to_json(r[1], *r[2:]) for r in rows}
    return out


def front_table(med, kernel):
    """The fronts' section: (text, rows), rows as (scenario, metric, local, via kg, via JS)."""
    rows = side_rows(med, kernel, FRONT_ROWS, (FRONT_LOCAL, FRONT_KG, FRONT_JS),
                     (FRONT_KG, FRONT_JS))
    head = ["scenario.metric", "JS local kernels", "JS>kernelgate", "JS>Jupyter Server",
            "kg over JS as gateway", "JS>kg over local"]
    lines = [head] + [[f"{s}.{m}", fmt(loc), fmt(kg), fmt(js), fmt(times_better(kg, js, m)),
                       fmt(times_better(kg, loc, m))] for s, m, loc, kg, js in rows]
    return ("\n".join(render(lines)) if rows else ""), rows


# kernelgate and Jupyter Server (nodelay) serving https/wss, beside the same servers in plain
# TCP: (scenario, metric). The gateway's CPU per unit of work shows what TLS costs it.
TLS_ROWS = [("start", "kernel_info_ms"), ("kernel_info", "p50_us"), ("kernel_info", "p99_us"),
            ("kernel_info", "gw_cpu_us_per_rt"), ("execute", "p50_us"), ("execute", "p99_us"),
            ("flood", "msgs_per_s"), ("flood", "gw_cpu_us_per_msg"), ("iopub_flood", "msgs_per_s"),
            ("stream", "mb_per_s"), ("stream", "gw_cpu_us_per_mb"), ("fanout", r"k\d+_rt_per_s"),
            ("broadcast", "delivered_per_s"), ("idle_ws", "kib_per_conn")]
TLS_LABELS = ("kernelgate", "kernelgate-tls", "jupyter-server-nodelay", "jupyter-server-tls")


def tls_table(med, kernel):
    """The TLS section: (text, rows), rows as (scenario, metric, kg, kg-tls, JS, JS-tls)."""
    rows = side_rows(med, kernel, TLS_ROWS, TLS_LABELS, ("kernelgate-tls", "jupyter-server-tls"))
    head = ["scenario.metric", "kg", "kg-tls", "JS-nodelay", "JS-tls", "kg-tls over kg",
            "JS-tls over JS", "kg-tls over JS-tls"]
    lines = [head] + [[f"{s}.{m}", fmt(kg), fmt(kgt), fmt(js), fmt(jst),
                       fmt(times_better(kgt, kg, m)), fmt(times_better(jst, js, m)),
                       fmt(times_better(kgt, jst, m))] for s, m, kg, kgt, js, jst in rows]
    return ("\n".join(render(lines)) if rows else ""), rows


def per_repeat(pooled, kernel, num, den, scenario, metric):
    """num/den for each repeat: run.sh makes the targets take turns, so run i of one target
    ran beside run i of the other. None unless both have the same number of runs."""
    def runs(label):
        slot = pooled.get(kernel, {}).get(label, {}).get(scenario, {})
        return [r.get(metric) for r in slot.get("runs", [])]
    a, b = runs(num), runs(den)
    if not a or len(a) != len(b) or None in a + b:
        return None
    return [ratio(x, y) for x, y in zip(a, b)]


def check_targets(med, pooled=None):
    """The targets of issue 4, evaluated on the medians: (name, value, goal, met), and for
    ratios of two targets the ratio in each repeat (how much the machine moved it)."""
    out = []
    pooled = pooled or {}

    def add(name, value, goal, ok, pair=None, direct=None, work=None):
        """direct: for a target against Jupyter Server, the same ratio with direct ZeroMQ in
        kernelgate's place. A gateway adds a hop, so that is as far as it can get (short of
        beating direct): a goal direct ZeroMQ misses is out of any gateway's reach here."""
        t = {"target": name, "value": value, "goal": goal,
             "met": None if value is None else bool(ok(value))}
        reps = per_repeat(pooled, kernel, *pair) if pair else None
        if reps and len(reps) > 1 and None not in reps:
            t["per_repeat"] = reps
        if direct is not None:
            t["direct"] = direct
            t["direct_met"] = bool(ok(direct))
        if work is not None:
            t["work"] = work
        out.append(t)

    def work_of(scenario, unit):
        """For a throughput target: the whole machine's CPU per unit of work through
        kernelgate over direct ZeroMQ's (gateway, kernels and client), and the cores each
        kept busy. When both keep the machine's cores busy, the rate ratio can be no better
        than the inverse of the CPU ratio."""
        total = f"total_cpu_us_per_{unit}"
        w = {"cpu_kg_over_direct": ratio(g("kernelgate", scenario, total),
                                         g("direct", scenario, total)),
             "cores_busy_kg": g("kernelgate", scenario, "cores_busy"),
             "cores_busy_direct": g("direct", scenario, "cores_busy")}
        return w if w["cpu_kg_over_direct"] is not None else None

    for kernel in sorted(med):
        g = lambda lab, s, m: get(med, kernel, lab, s, m)  # noqa: E731
        for s in ("kernel_info", "execute"):
            add(f"[{kernel}] {s} round trip p50 kg/direct", ratio(g("kernelgate", s, "p50_us"),
                g("direct", s, "p50_us")), "<= 1.15", lambda v: v <= 1.15,
                ("kernelgate", "direct", s, "p50_us"))
            add(f"[{kernel}] {s} round trip p99 kg/direct", ratio(g("kernelgate", s, "p99_us"),
                g("direct", s, "p99_us")), "<= 1.5", lambda v: v <= 1.5,
                ("kernelgate", "direct", s, "p99_us"))
            for v, flags in VARIANTS:
                if g(v, s, "p50_us") is None:
                    continue
                add(f"[{kernel}] {s} round trip p50 kg {flags}/direct",
                    ratio(g(v, s, "p50_us"), g("direct", s, "p50_us")), "<= 1.15",
                    lambda x: x <= 1.15, (v, "direct", s, "p50_us"))
                add(f"[{kernel}] {s} round trip p99 kg {flags}/direct",
                    ratio(g(v, s, "p99_us"), g("direct", s, "p99_us")), "<= 1.5",
                    lambda x: x <= 1.5, (v, "direct", s, "p99_us"))
            for js, goal in (("jupyter-server-nodelay", 5), ("jupyter-server", 100)):
                add(f"[{kernel}] {s} p50 {JS_NAMES[js]}/kg", ratio(g(js, s, "p50_us"),
                    g("kernelgate", s, "p50_us")), f">= {goal}", lambda v, x=goal: v >= x,
                    direct=ratio(g(js, s, "p50_us"), g("direct", s, "p50_us")))
        for s, m, unit in (("flood", "msgs_per_s", "msg"), ("iopub_flood", "msgs_per_s", "msg"),
                           ("stream", "mb_per_s", "mb"), ("broadcast", "delivered_per_s", None)):
            add(f"[{kernel}] {s} {m} kg/direct", ratio(g("kernelgate", s, m), g("direct", s, m)),
                ">= 0.9", lambda v: v >= 0.9, ("kernelgate", "direct", s, m),
                work=work_of(s, unit) if unit else None)
            if s == "stream" and g("kernelgate", s, "first_mb_per_s") is not None:
                # The first stream on a fresh kernel (cold heaps), not only the median of
                # --stream-n in a row.
                add(f"[{kernel}] stream, the first on a kernel, mb_per_s kg/direct",
                    ratio(g("kernelgate", s, "first_mb_per_s"), g("direct", s, "first_mb_per_s")),
                    ">= 0.9", lambda v: v >= 0.9, ("kernelgate", "direct", s, "first_mb_per_s"))
        if kernel == "echo":
            for s in ("flood", "iopub_flood"):
                add(f"[echo] {s} msgs/s through kernelgate", g("kernelgate", s, "msgs_per_s"),
                    ">= 100000", lambda v: v >= 100000)
        kmax = None
        for lab in ("kernelgate", "direct"):
            ks = [int(m[1:].split("_")[0]) for m in med.get(kernel, {}).get(lab, {})
                  .get("fanout", {}) if re.fullmatch(r"k\d+_rt_per_s", m)]
            if ks:
                kmax = max(ks) if kmax is None else min(kmax, max(ks))
        if kmax:
            m = f"k{kmax}_rt_per_s"
            add(f"[{kernel}] fan-out {kmax} kernels kg/direct",
                ratio(g("kernelgate", "fanout", m), g("direct", "fanout", m)), ">= 0.9",
                lambda v: v >= 0.9, ("kernelgate", "direct", "fanout", m))
            for v, flags in VARIANTS:
                if g(v, "fanout", m) is not None:
                    add(f"[{kernel}] fan-out {kmax} kernels kg {flags}/direct",
                        ratio(g(v, "fanout", m), g("direct", "fanout", m)), ">= 0.9",
                        lambda x: x >= 0.9, (v, "direct", "fanout", m))
            for js in ("jupyter-server", "jupyter-server-nodelay"):
                add(f"[{kernel}] fan-out {kmax} kernels kg/{JS_NAMES[js]}",
                    ratio(g("kernelgate", "fanout", m), g(js, "fanout", m)), ">= 10",
                    lambda v: v >= 10, direct=ratio(g("direct", "fanout", m), g(js, "fanout", m)))
        ki_kg = g("kernelgate", "start", "kernel_info_ms")
        ki_direct = g("direct", "start", "kernel_info_ms")
        paired = g("kernelgate", "start", "pair_diff_ms")
        if paired is not None:
            # Starts in pairs (a direct start beside each of kernelgate's): the median of
            # the differences within the pairs. Where the time goes: the POST against the
            # direct start, and the client's WebSocket and first round trip after the POST.
            post = g("kernelgate", "start", "pair_post_diff_ms")
            after = g("kernelgate", "start", "after_post_ms")
            split = ""
            if post is not None and after is not None:
                split = f"; POST alone {fmt(post)}, WebSocket and first reply after it {fmt(after)}"
            add(f"[{kernel}] kernel start kg - direct, in pairs (ms{split})", paired, "<= 5",
                lambda v: v <= 5)
        else:
            add(f"[{kernel}] kernel start kg - direct (ms)",
                None if ki_kg is None or ki_direct is None else ki_kg - ki_direct, "<= 5",
                lambda v: v <= 5)
        warm = g("kernelgate-warm", "start", "kernel_info_ms")
        if warm is not None:
            # --warm-pool: a kernel started ahead, handed out and set up; the client's first
            # kernel_info_reply in tens of ms, where a cold start takes the kernel's own time.
            add(f"[{kernel}] kernel start from a warm pool (ms; cold: "
                f"{fmt(g('kernelgate', 'start', 'kernel_info_ms'))})", warm, "<= 50",
                lambda v: v <= 50)
        if g("kernelgate", "idle_ws", "connections") is not None:
            add(f"[{kernel}] idle WebSockets held", g("kernelgate", "idle_ws", "connections"),
                ">= 10000", lambda v: v >= 10000)
            add(f"[{kernel}] gateway KiB per idle WebSocket", g("kernelgate", "idle_ws",
                "kib_per_conn"), "<= 20", lambda v: v <= 20)
    return out


def target_line(t) -> str:
    mark = {True: "met ", False: "MISS", None: "n/a "}[t["met"]]
    reps = t.get("per_repeat")
    extra = f"; per repeat {', '.join(fmt(r) for r in reps)}" if reps else ""
    if "work" in t:
        w = t["work"]
        extra += (f"; machine CPU per unit kg/direct {fmt(w['cpu_kg_over_direct'])}, cores busy "
                  f"{fmt(w['cores_busy_kg'])} / {fmt(w['cores_busy_direct'])}")
    if "direct" in t:
        extra += f"; direct ZeroMQ: {fmt(t['direct'])}"
        if not t["direct_met"]:
            extra += ", beyond any gateway's reach here"
    return f"[{mark}] {t['target']}: {fmt(t['value'])} (goal {t['goal']}{extra})"


def target_summary(targets) -> str:
    met = sum(1 for t in targets if t["met"] is True)
    missed = [t for t in targets if t["met"] is False]
    beyond = sum(1 for t in missed if t.get("direct_met") is False)
    unknown = sum(1 for t in targets if t["met"] is None)
    return (f"targets: {met} met, {len(missed)} missed ({beyond} of them missed by direct "
            f"ZeroMQ too), {unknown} not measured")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--json", help="write the combined results here")
    ap.add_argument("--mode", default="")
    ap.add_argument("--transport", default="", help="how the targets reached their kernels")
    ap.add_argument("--busy-poll", default="", help="kernelgate-busy-poll's window (us)")
    ap.add_argument("--check", action="store_true",
                    help="fail unless every scenario ran without error (smoke test)")
    args = ap.parse_args()

    docs, pooled = load(args.files)
    docs_by: dict = {}
    for d in docs:
        docs_by.setdefault((d.get("kernel"), d.get("label")), []).append(d)
    med = medians(pooled)
    summary_ratios: dict = {}
    all_problems = []
    for kernel in sorted(pooled, key=lambda k: (k != "echo", k)):
        text, rows, problems = table(med, pooled, kernel, docs_by)
        poll = ", kg-sleep = --predictive-poll 0" if "kernelgate-sleep" in pooled[kernel] else ""
        poll += f", kg-poll = --busy-poll {args.busy_poll}" if args.busy_poll else ""
        print(f"\n== kernel {kernel}: medians ({args.mode}, {args.transport or 'tcp'} to the kernels{poll}); lower is better for *_ms, *_us, gw_cpu_*, "
              "kib_per_conn, kib_per_kernel; higher for the rest")
        print(text)
        if problems:
            print("\n".join(problems))
        all_problems += problems
        r = summary_ratios.setdefault(kernel, {})
        for scenario, m, vals in rows:
            kg = vals.get("kernelgate")
            r[f"{scenario}.{m}"] = {
                "kg/direct": ratio(kg, vals.get("direct")),
                "kg-sleep/direct": ratio(vals.get("kernelgate-sleep"), vals.get("direct")),
                "kg-poll/direct": ratio(vals.get("kernelgate-busy-poll"), vals.get("direct")),
                "JS/kg": ratio(vals.get("jupyter-server"), kg),
                "JS-nodelay/kg": ratio(vals.get("jupyter-server-nodelay"), kg),
                "lower_is_better": lower_is_better(m)}
    fronts = print_sections(
        pooled, med, front_table,
        "Jupyter Server 1.23 (TCP_NODELAY, legacy frames) in front of a gateway (--gateway-url), "
        "against its own local kernels; the last two columns: how many times better (above 1: "
        "the first is better)",
        lambda m, loc, kg, js: {"local": loc, "front-kernelgate": kg, "front-jupyter-server": js,
                                "kg_over_js_gateway": times_better(kg, js, m),
                                "kg_front_over_local": times_better(kg, loc, m)})
    tls = print_sections(
        pooled, med, tls_table,
        "TLS (https/wss, a self-signed P-256 certificate) against plain TCP (kernelgate with v1 "
        "frames, Jupyter Server 1.23 with legacy JSON: it refuses v1); the last three columns: "
        "how many times better (above 1: the first is better; \"kg-tls over kg\" under 1 is "
        "what TLS costs)",
        lambda m, kg, kgt, js, jst: {"kernelgate": kg, "kernelgate-tls": kgt,
                                     "jupyter-server-nodelay": js, "jupyter-server-tls": jst,
                                     "kg_tls_over_kg": times_better(kgt, kg, m),
                                     "js_tls_over_js": times_better(jst, js, m),
                                     "kg_tls_over_js_tls": times_better(kgt, jst, m)})
    targets = check_targets(med, pooled)
    print("\n== targets of issue 4 (from the medians above; kg/direct ratios also per repeat, "
          "each kernelgate run against the direct run beside it)")
    for t in targets:
        print("  " + target_line(t))
    print(target_summary(targets))

    missing = []
    for kernel, labels in pooled.items():
        got = set(labels.get("kernelgate", {}))
        if kernel == "echo":
            missing += [f"kernelgate/{kernel}/{s}" for s in SCENARIOS if s not in got]
    for kernel, labels in pooled.items():
        for label, scen in labels.items():
            for name, slot in scen.items():
                if not slot["runs"] and not slot["skipped"] and not slot["errors"]:
                    missing.append(f"{label}/{kernel}/{name} (no runs)")

    if args.json:
        Path(args.json).write_text(json.dumps({
            "tool": "bench/report.py",
            "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "mode": args.mode,
            "transport": args.transport,
            "busy_poll_us": args.busy_poll,
            "medians": med,
            "ratios": summary_ratios,
            "fronts": fronts,
            "tls": tls,
            "targets": targets,
            "errors": all_problems,
            "missing": missing,
            "runs": docs,
        }, indent=1))
        print(f"\nreport.py: wrote {args.json}")
    if args.check:
        if all_problems or missing:
            print("report.py: CHECK FAILED: " + "; ".join(all_problems + missing),
                  file=sys.stderr)
            return 1
        print("report.py: check passed: every scenario produced results (timing not checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
