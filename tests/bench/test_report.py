# SPDX-License-Identifier: BSD-3-Clause
"""bench/report.py judges the benchmark's targets from kg-bench's JSON files. These tests feed
it files written the way kg-bench writes them, with made-up numbers (they test the judging,
not the speed), and check the verdicts, the ceiling that direct ZeroMQ sets on the targets
against Jupyter Server, and the summary line."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPORT = Path(__file__).resolve().parents[2] / "bench" / "report.py"
spec = importlib.util.spec_from_file_location("report", REPORT)
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def bench_file(tmp_path, label, kernel, scenarios, n=0):
    """One kg-bench JSON file: {scenario: [run metrics, ...]}."""
    doc = {"tool": "kg-bench", "format": 1, "label": label, "kernel": kernel,
           "scenarios": {name: {"runs": runs} for name, runs in scenarios.items()}}
    path = tmp_path / f"{label}-{kernel}-{n}.json"
    path.write_text(json.dumps(doc))
    return path


def files(tmp_path, direct_us, kg_us, js_nodelay_us, js_us):
    """kernel_info p50 for each target, one run each."""
    rt = lambda us: {"kernel_info": [{"p50_us": us, "p99_us": us * 1.2}]}  # noqa: E731
    return [bench_file(tmp_path, "direct", "k", rt(direct_us)),
            bench_file(tmp_path, "kernelgate", "k", rt(kg_us)),
            bench_file(tmp_path, "jupyter-server-nodelay", "k", rt(js_nodelay_us)),
            bench_file(tmp_path, "jupyter-server", "k", rt(js_us))]


def run_report(tmp_path, paths):
    """report.py as run.sh runs it: (its stdout, the JSON it wrote)."""
    out_json = tmp_path / "results.json"
    run = subprocess.run([sys.executable, str(REPORT), "--json", str(out_json), *map(str, paths)],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    return run.stdout, json.loads(out_json.read_text())


def targets_of(paths):
    _, pooled = report.load(paths)
    return {t["target"]: t for t in report.check_targets(report.medians(pooled), pooled)}


def test_a_js_target_missed_by_direct_zeromq_too_is_marked_beyond_reach(tmp_path):
    # Jupyter Server with TCP_NODELAY at 2.6 ms, direct ZeroMQ at 2.0 ms, kernelgate 2.1 ms:
    # 1.24x, and even direct ZeroMQ is only 1.3x, short of the goal of 5x.
    t = targets_of(files(tmp_path, 2000, 2100, 2600, 44000))
    nodelay = t["[k] kernel_info p50 JS-nodelay/kg"]
    assert nodelay["met"] is False
    assert abs(nodelay["value"] - 2600 / 2100) < 1e-9
    assert abs(nodelay["direct"] - 1.3) < 1e-9
    assert nodelay["direct_met"] is False
    line = report.target_line(nodelay)
    assert line.startswith("[MISS] [k] kernel_info p50 JS-nodelay/kg: 1.24")
    assert "direct ZeroMQ: 1.3, beyond any gateway's reach here" in line
    # 44 ms against 2.1: 21x, and direct's 22x is short of 100x as well.
    default = t["[k] kernel_info p50 JS(default)/kg"]
    assert default["met"] is False and default["direct_met"] is False


def test_a_js_target_direct_zeromq_meets_is_a_plain_miss(tmp_path):
    # direct ZeroMQ 100 us is 6x Jupyter Server's 600 us; kernelgate's 200 us is only 3x.
    t = targets_of(files(tmp_path, 100, 200, 600, 44000))
    nodelay = t["[k] kernel_info p50 JS-nodelay/kg"]
    assert nodelay["met"] is False and nodelay["direct_met"] is True
    line = report.target_line(nodelay)
    assert "direct ZeroMQ: 6" in line and "beyond" not in line
    default = t["[k] kernel_info p50 JS(default)/kg"]
    assert default["met"] is True and report.target_line(default).startswith("[met ]")


def test_kg_direct_targets_carry_no_ceiling_and_the_summary_counts(tmp_path):
    paths = files(tmp_path, 2000, 2100, 2600, 44000)
    t = targets_of(paths)
    p50 = t["[k] kernel_info round trip p50 kg/direct"]
    assert p50["met"] is True and "direct" not in p50
    summary = report.target_summary(list(t.values()))
    met = sum(1 for x in t.values() if x["met"] is True)
    missed = sum(1 for x in t.values() if x["met"] is False)
    assert met == 2 and missed == 2  # p50 and p99 kg/direct; the two JS targets
    assert summary.startswith(
        f"targets: {met} met, {missed} missed (2 of them missed by direct ZeroMQ too)")


def test_fan_out_against_jupyter_server_has_direct_zeromq_as_its_ceiling(tmp_path):
    fan = lambda rt: {"fanout": [{"k1_rt_per_s": rt, "k32_rt_per_s": rt}]}  # noqa: E731
    paths = [bench_file(tmp_path, "direct", "k", fan(7000)),
             bench_file(tmp_path, "kernelgate", "k", fan(6500)),
             bench_file(tmp_path, "jupyter-server", "k", fan(780)),
             bench_file(tmp_path, "jupyter-server-nodelay", "k", fan(500))]
    t = targets_of(paths)
    default = t["[k] fan-out 32 kernels kg/JS(default)"]
    assert default["met"] is False and abs(default["direct"] - 7000 / 780) < 1e-9
    assert default["direct_met"] is False
    nodelay = t["[k] fan-out 32 kernels kg/JS-nodelay"]
    assert nodelay["met"] is True and nodelay["direct_met"] is True


def test_the_command_prints_the_ceiling_and_the_summary_and_writes_them_to_json(tmp_path):
    stdout, doc = run_report(tmp_path, files(tmp_path, 2000, 2100, 2600, 44000))
    assert "[MISS] [k] kernel_info p50 JS-nodelay/kg: 1.24" in stdout
    assert "beyond any gateway's reach here" in stdout
    saved = {t["target"]: t for t in doc["targets"]}
    assert saved["[k] kernel_info p50 JS-nodelay/kg"]["direct_met"] is False
    # Only kernel_info was measured: execute, floods, fan-out, start and the rest are n/a.
    unmeasured = sum(1 for t in saved.values() if t["met"] is None)
    assert unmeasured > 0
    assert (f"targets: 2 met, 2 missed (2 of them missed by direct ZeroMQ too), "
            f"{unmeasured} not measured") in stdout


def test_a_throughput_target_shows_the_machines_cpu_per_unit_beside_it(tmp_path):
    # Both keep two cores busy; through kernelgate the whole machine spends 3,000 us per MB
    # against direct ZeroMQ's 2,400: 1.25x, so 0.8x the rate is all the hop allows here.
    stream = lambda mb_s, total, cores: {"stream": [{"mb_per_s": mb_s, "total_cpu_us_per_mb": total,  # noqa: E731
                                                     "cores_busy": cores}]}
    paths = [bench_file(tmp_path, "direct", "k", stream(800, 2400, 1.95)),
             bench_file(tmp_path, "kernelgate", "k", stream(640, 3000, 1.9))]
    t = targets_of(paths)["[k] stream mb_per_s kg/direct"]
    assert t["met"] is False and abs(t["value"] - 0.8) < 1e-9
    assert abs(t["work"]["cpu_kg_over_direct"] - 1.25) < 1e-9
    assert t["work"]["cores_busy_kg"] == 1.9 and t["work"]["cores_busy_direct"] == 1.95
    line = report.target_line(t)
    assert "machine CPU per unit kg/direct 1.25, cores busy 1.9 / 1.95" in line
    # Files without the CPU figures (an older kg-bench) give the plain line.
    old = [bench_file(tmp_path, "direct", "k", {"stream": [{"mb_per_s": 800}]}, 1),
           bench_file(tmp_path, "kernelgate", "k", {"stream": [{"mb_per_s": 640}]}, 1)]
    plain = targets_of(old)["[k] stream mb_per_s kg/direct"]
    assert "work" not in plain and "machine CPU" not in report.target_line(plain)


def front_files(tmp_path):
    """Jupyter Server with its local kernels, and the same front over kernelgate and over
    another Jupyter Server: round trips (lower is better) and rates (higher is better)."""
    def scen(p50, flood, fan):
        return {"kernel_info": [{"p50_us": p50, "p99_us": p50 * 2}],
                "flood": [{"msgs_per_s": flood}],
                "fanout": [{"k32_rt_per_s": fan[1], "k4_rt_per_s": fan[0]}]}
    return [bench_file(tmp_path, "jupyter-server-nodelay", "k", scen(1300, 6000, (700, 800))),
            bench_file(tmp_path, "front-kernelgate", "k", scen(650, 12000, (2100, 3200))),
            bench_file(tmp_path, "front-jupyter-server", "k", scen(2600, 3000, (600, 640)))]


def test_the_fronts_table_says_how_many_times_better_the_front_over_kernelgate_is(tmp_path):
    _, pooled = report.load(front_files(tmp_path))
    text, rows = report.front_table(report.medians(pooled), "k")
    by = {(s, m): (loc, kg, js) for s, m, loc, kg, js in rows}
    # Fan-out levels in order, however the run listed them.
    assert [m for s, m, *_ in rows if s == "fanout"] == ["k4_rt_per_s", "k32_rt_per_s"]
    assert by[("kernel_info", "p50_us")] == (1300, 650, 2600)
    # A latency: half the time is twice as good; a rate: twice the rate is twice as good.
    assert report.times_better(650, 2600, "p50_us") == 4
    assert report.times_better(650, 1300, "p50_us") == 2
    assert report.times_better(12000, 3000, "msgs_per_s") == 4
    assert report.times_better(3200, 800, "k32_rt_per_s") == 4
    line = next(ln for ln in text.splitlines() if ln.startswith("kernel_info.p50_us"))
    assert line.split()[1:] == ["1,300", "650", "2,600", "4", "2"]
    flood = next(ln for ln in text.splitlines() if ln.startswith("flood.msgs_per_s"))
    assert flood.split()[-2:] == ["4", "2"]
    # Metrics no front measured are left out; without a front there is no table.
    assert ("stream", "mb_per_s") not in by
    _, local_only = report.load(front_files(tmp_path)[:1])
    assert report.front_table(report.medians(local_only), "k") == ("", [])


def test_the_command_prints_the_fronts_table_and_writes_it_to_json(tmp_path):
    stdout, doc = run_report(tmp_path, front_files(tmp_path))
    assert "== kernel k: Jupyter Server 1.23 (TCP_NODELAY, legacy frames) in front of a gateway" \
        in stdout
    fronts = doc["fronts"]["k"]
    ki = fronts["kernel_info.p50_us"]
    assert (ki["local"], ki["front-kernelgate"], ki["front-jupyter-server"]) == (1300, 650, 2600)
    assert ki["kg_over_js_gateway"] == 4 and ki["kg_front_over_local"] == 2
    assert fronts["fanout.k32_rt_per_s"]["kg_over_js_gateway"] == 5


def tls_files(tmp_path):
    """kernelgate and Jupyter Server (nodelay), each in plain TCP and over TLS."""
    def scen(p50, mb, cpu_mb):
        return {"kernel_info": [{"p50_us": p50}],
                "stream": [{"mb_per_s": mb, "gw_cpu_us_per_mb": cpu_mb}]}
    return [bench_file(tmp_path, "kernelgate", "k", scen(100, 800, 1000)),
            bench_file(tmp_path, "kernelgate-tls", "k", scen(125, 400, 2000)),
            bench_file(tmp_path, "jupyter-server-nodelay", "k", scen(1000, 100, 12000)),
            bench_file(tmp_path, "jupyter-server-tls", "k", scen(1250, 80, 16000))]


def test_the_tls_table_sets_each_server_over_tls_beside_itself_and_the_other(tmp_path):
    _, pooled = report.load(tls_files(tmp_path))
    text, rows = report.tls_table(report.medians(pooled), "k")
    by = {(s, m): v for s, m, *v in rows}
    assert by[("kernel_info", "p50_us")] == [100, 125, 1000, 1250]
    # Columns: what TLS costs kernelgate, what it costs Jupyter Server (under 1: slower over
    # TLS), and kernelgate over TLS against Jupyter Server over TLS (above 1: kernelgate better).
    ki = next(ln for ln in text.splitlines() if ln.startswith("kernel_info.p50_us"))
    assert ki.split()[-3:] == ["0.8", "0.8", "10"]
    mb = next(ln for ln in text.splitlines() if ln.startswith("stream.mb_per_s"))
    assert mb.split()[-3:] == ["0.5", "0.8", "5"]
    cpu = next(ln for ln in text.splitlines() if ln.startswith("stream.gw_cpu_us_per_mb"))
    assert cpu.split()[-3:] == ["0.5", "0.75", "8"]
    # Rows neither TLS target measured are left out; without a TLS target there is no table.
    assert ("execute", "p50_us") not in by
    _, plain_only = report.load([tls_files(tmp_path)[i] for i in (0, 2)])
    assert report.tls_table(report.medians(plain_only), "k") == ("", [])


def test_the_command_prints_the_tls_table_and_writes_it_to_json(tmp_path):
    stdout, doc = run_report(tmp_path, tls_files(tmp_path))
    assert "== kernel k: TLS (https/wss" in stdout
    tls = doc["tls"]["k"]
    st = tls["stream.mb_per_s"]
    assert (st["kernelgate"], st["kernelgate-tls"]) == (800, 400)
    assert st["kg_tls_over_kg"] == 0.5 and st["kg_tls_over_js_tls"] == 5
    assert tls["kernel_info.p50_us"]["js_tls_over_js"] == 0.8
