#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Compares two bench/profile.sh output directories (say, two builds of kernelgate).

For each scenario profiled in both: the gateway's instructions per request under callgrind
(user space, every thread), the native run's result, and the top entries by self cost of each
side, with C++ signatures shortened to their function names.

usage: bench/profile_compare.py BEFORE_DIR AFTER_DIR [--top N] [--names before,after]
"""
import argparse
import pathlib
import re
import sys

CG_LINE = re.compile(r"^\s*([\d,]+) \(\s*([\d.]+)%\)\s+(.*)$")
PERF_LINE = re.compile(r"^\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)$")


def short_name(fn: str, has_file: bool = True) -> str:
    """kernelgate::x::f<T>(args) const [dso] -> kernelgate::x::f, library code keeps its dso."""
    dso = ""
    m = re.search(r" \[([^\]]+)\]$", fn)
    if m:
        dso = pathlib.Path(m.group(1)).name
        fn = fn[: m.start()]
    fn = fn.replace("[abi:cxx11]", "")
    if has_file:  # callgrind's "file:function": the file ends at the first single colon
        m = re.search(r"(?<!:):(?!:)", fn)
        if m:
            fn = fn[m.end():]
    fn = fn.replace("(anonymous namespace)", "anon")
    fn = re.sub(r"\{lambda\([^{}]*\)#\d+\}", "lambda", fn)
    prev = None
    while prev != fn:  # drop template arguments, innermost first
        prev = fn
        fn = re.sub(r"<[^<>]*>", "", fn)
    fn = fn.split("(", 1)[0].strip()
    if fn.startswith("0x") or fn == "???":
        fn = "(no symbol)"
    if dso and not dso.startswith("kernelgate"):
        fn = f"{fn} [{dso}]"
    return fn


def bench_value(path: pathlib.Path, metric: str):
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == metric:
            return float(parts[2])
    return None


def callgrind(out: pathlib.Path, scenario: str, top: int):
    self_txt = out / f"{scenario}.self.txt"
    if not self_txt.exists():
        return None
    total = None
    crypto = 0
    rows = []
    in_table = False  # past PROGRAM TOTALS: the function table
    entries = 0
    for line in self_txt.read_text().splitlines():
        m = CG_LINE.match(line)
        if not m:
            if entries and line.startswith("--"):
                break  # the table ended; annotated source follows
            continue
        ir = int(m.group(1).replace(",", ""))
        what = m.group(3)
        if "PROGRAM TOTALS" in what:
            total = ir
            in_table = True
            continue
        entries += in_table
        if in_table and "libcrypto" in what:
            crypto += ir
        if in_table and len(rows) < top:
            rows.append((float(m.group(2)), short_name(what)))
    bench = out / f"{scenario}.bench.txt"
    n = bench_value(bench, "n") or bench_value(bench, "requests")
    return {"total": total, "crypto": crypto, "n": n, "rows": rows}


def perf(out: pathlib.Path, scenario: str, top: int):
    p = out / f"perf.{scenario}.self.txt"
    if not p.exists():
        return None
    rows = []
    for line in p.read_text().splitlines():
        m = PERF_LINE.match(line)
        if m and len(rows) < top:
            rows.append((float(m.group(1)),
                         f"{m.group(2):<18} {short_name(m.group(4), has_file=False)}"))
    native = out / f"{scenario}.native.bench.txt"
    result = {}
    for metric in ("p50_us", "msgs_per_s", "req_per_s"):
        v = bench_value(native, metric)
        if v is not None:
            result[metric] = v
    return {"rows": rows, "result": result}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=pathlib.Path)
    ap.add_argument("after", type=pathlib.Path)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--names", default="before,after")
    a = ap.parse_args()
    names = a.names.split(",")
    if len(names) != 2:
        ap.error("--names takes two comma-separated labels")

    def profiled(d: pathlib.Path) -> set:
        return {p.name.split(".")[0] for p in d.glob("*.self.txt") if not p.name.startswith("perf.")}

    scenarios = sorted(profiled(a.before) & profiled(a.after))
    if not scenarios:
        print("profile_compare: no scenario profiled in both directories", file=sys.stderr)
        return 2
    for sc in scenarios:
        print(f"== {sc}")
        cg = [callgrind(d, sc, a.top) for d in (a.before, a.after)]
        # Valgrind hides SHA-NI, so OpenSSL's HMAC counts several times what it costs
        # natively: the figure without libcrypto is the one that compares code.
        for name, c in zip(names, cg):
            if c and c["total"] and c["n"]:
                print(f"{name:>8}: {c['total'] / c['n']:,.0f} instructions per request, "
                      f"{(c['total'] - c['crypto']) / c['n']:,.0f} outside libcrypto "
                      f"(callgrind, {c['n']:.0f} requests)")
        if all(c and c["total"] and c["n"] for c in cg):
            r_all = (cg[1]["total"] / cg[1]["n"]) / (cg[0]["total"] / cg[0]["n"])
            r_own = ((cg[1]["total"] - cg[1]["crypto"]) / cg[1]["n"]) / (
                (cg[0]["total"] - cg[0]["crypto"]) / cg[0]["n"])
            print(f"{'':>8}  {names[1]}/{names[0]}: {r_all:.2f}, outside libcrypto {r_own:.2f}")
        pf = [perf(d, sc, a.top) for d in (a.before, a.after)]
        for name, p in zip(names, pf):
            if p and p["result"]:
                print(f"{name:>8}: native " +
                      ", ".join(f"{k} {v:g}" for k, v in p["result"].items()))
        for what, profiles in (("callgrind self", cg), ("perf cpu-clock self", pf)):
            for name, prof in zip(names, profiles):
                if not prof:
                    continue
                print(f"-- {name}, {what}, top {a.top}")
                for pct, label in prof["rows"]:
                    print(f"  {pct:6.2f}%  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
