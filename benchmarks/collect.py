"""Gather every benchmark's headline ratio into ``benchmarks/results.json`` and the README table.

Each script keeps its full record under ``benchmarks/results/``; this reads them back, so the
summary always shows the latest run of each, with the date it was measured. A missing file is
listed as not measured rather than left out. Run from the repository root after the scripts
(``make bench`` does both):

    .venv/bin/python benchmarks/collect.py
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

RESULTS = Path("benchmarks/results")
SUMMARY = Path("benchmarks/results.json")
README = Path("benchmarks/README.md")
BEGIN, END = "<!-- summary:begin -->", "<!-- summary:end -->"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _date(report: dict) -> str | None:
    env = report.get("environment", report)
    return (env.get("date") or "")[:10] or None


def _row(name, what, target, ratio, ok, detail, report) -> dict:
    return {
        "benchmark": name,
        "what": what,
        "target": target,
        "ratio": ratio,
        "target_met": ok,
        "detail": detail,
        "measured": _date(report) if report else None,
    }


def training(report: dict) -> list[dict]:
    fcn, resnet = report["imp_fcn"], report["pai_resnet20"]
    return [
        _row(
            "1",
            "IMP-FCN training loop (3072-1024-1024-1000, batch 40) / plain loop, time",
            "≤ 1.05",
            fcn["platform_over_plain_time"],
            fcn["platform_over_plain_time"] <= 1.05,
            f"{fcn['platform_steps_per_s']:.1f} vs {fcn['plain_steps_per_s']:.1f} steps/s, "
            f"{fcn['platform_gflops'] / report['mm_peak_gflops_n2048']:.0%} of the mm peak",
            report,
        ),
        _row(
            "1b",
            "PaI ResNet-20 training loop (batch 128) / plain loop, time",
            "≤ 1.0",
            resnet["platform_over_plain_time"],
            resnet["platform_over_plain_time"] <= 1.0,
            f"{resnet['platform_steps_per_s']:.2f} vs {resnet['plain_steps_per_s']:.2f} steps/s",
            report,
        ),
    ]


def batched(report: dict) -> list[dict]:
    rows = []
    for run in report["runs"]:
        speed_ups = {r["k"]: r["speedup_batched_over_alone"] for r in run["results"]}
        k8 = speed_ups.get(8)
        rows.append(
            _row(
                "2",
                f"K batched FCN lineages / one at a time, aggregate steps/s, "
                f"{run['torch_threads']} thread(s)",
                "K=8 ≥ 3×",
                k8,
                k8 is not None and k8 >= 3,
                ", ".join(f"K={k}: {v:.2f}×" for k, v in speed_ups.items()),
                report,
            )
        )
    return rows


def cavity(report: dict) -> list[dict]:
    return [
        _row(
            "3",
            "cavity_scores, 1024×3072 layer, 50k inputs, vs per-unit reference (speed-up)",
            "≥ 20×",
            report["speedup"],
            report["speedup"] >= 20,
            f"{report['cavity_scores']['seconds']:.1f} s, "
            f"+{report['cavity_scores']['peak_rss_growth_mib']:.0f} MiB peak",
            report,
        )
    ]


def metrics(report: dict) -> list[dict]:
    layer = next(
        r
        for r in report["mask_autocorrelation"]
        if r["units"] == 1024 and r["image_shape"][1] == 32
    )
    fit = next(r for r in report["rf_width"] if r["units"] == 1024 and r["image_shape"][1] == 32)
    return [
        _row(
            "4",
            "mask autocorrelation of a 1024×3072 mask (FFT) vs a pair-loop reference (speed-up)",
            "≥ 100×",
            layer["speedup_vs_pair_loop_1_thread"],
            layer["speedup_vs_pair_loop_1_thread"] >= 100,
            f"pair loop on {layer['pair_loop_units']} units, mean density "
            f"{layer['mean_density']:.3f}; {layer['speedup_1_thread']:.0f}× the offset-slice "
            f"reference; RF-width fit {fit['speedup_per_unit']:.0f}× curve_fit per unit",
            report,
        )
    ]


def pruning(report: dict) -> list[dict]:
    methods = report["resnet20"]["methods"]
    # random and magnitude take milliseconds: their ratio measures a model copy, not scoring
    scored = {k: v["ratio"] for k, v in methods.items() if k not in ("random", "magnitude")}
    worst = max(scored.values())
    return [
        _row(
            "5",
            "PaI scoring round, ResNet-20, batch 128, / hooks-and-copies reference (worst)",
            "≤ 1.0",
            worst,
            worst <= 1.0,
            ", ".join(f"{k} {v:.2f}" for k, v in scored.items()),
            {"environment": {"date": report.get("date")}},
        )
    ]


def ntk(report: dict) -> list[dict]:
    return [
        _row(
            "6",
            "ntk_spectrum, ResNet-20, 100 inputs, vs per-sample autograd loop (speed-up)",
            "≥ 10×",
            report["speedup"],
            report["speedup"] >= 10,
            f"{report['ntk_spectrum']['best_s']:.1f} s vs {report['reference']['best_s']:.1f} s",
            report,
        )
    ]


def ray_overhead(report: dict) -> list[dict]:
    overhead = report["overhead"]
    rows = [
        _row(
            "7",
            "one lineage through Ray Tune / run directly, wall time",
            "≤ 1.05",
            overhead["tune_over_direct"],
            overhead["tune_over_direct"] <= 1.05,
            f"{overhead['tune_fit_s']:.1f} s vs {overhead['direct_s']:.1f} s, Ray start "
            f"{overhead['ray_start_s']:.1f} s once, data put once "
            f"({overhead['data_put_once_mib']:.0f} MiB)",
            report,
        )
    ]
    group = report.get("group_overhead")
    if group is not None:
        rows.append(
            _row(
                "7c",
                "the default experiment's 6 lineages as one trial through Ray Tune / the same "
                "group run directly, wall time",
                "≤ 1.05",
                group["tune_over_direct"],
                group["tune_over_direct"] <= 1.05,
                f"{group['tune_fit_s']:.1f} s vs {group['direct_s']:.1f} s, 1 CPU",
                report,
            )
        )
    scaling = report.get("scaling", {})
    if "speed_up_2_over_1_auto" in scaling:  # figures of every batch_lineages setting
        rows.append(
            _row(
                "8",
                "default experiment wall time, 1 CPU / 2 CPUs, batch_lineages auto",
                "—",
                scaling["speed_up_2_over_1_auto"],
                None,
                "; ".join(
                    f"{setting}: {scaling[f'cpus_1_{setting}_wall_s']:.0f} s vs "
                    f"{scaling[f'cpus_2_{setting}_wall_s']:.0f} s"
                    for setting in ("auto", "1", "off")
                ),
                report,
            )
        )
        rows.append(
            _row(
                "8b",
                "default experiment wall time, batch_lineages off / auto, 2 CPUs",
                "—",
                scaling["cpus_2_speed_up_auto_over_off"],
                None,
                f"1 CPU: {scaling['cpus_1_speed_up_auto_over_off']:.2f}",
                report,
            )
        )
    return rows


def analyze(report: dict) -> list[dict]:
    best: dict[int, float] = {}
    for run in report["runs"]:
        workers = run["workers"]
        best[workers] = min(best.get(workers, float("inf")), run["units_wall_s"])
    speed_up = best[1] / best[2] if 1 in best and 2 in best else None
    return [
        _row(
            "7b",
            "analysis actor pool, 29 units (cavity, kurtosis, NTK): 1 worker / 2 workers, time",
            "—",
            speed_up,
            None,
            ", ".join(f"{w} worker(s) {t:.1f} s" for w, t in sorted(best.items())),
            report,
        )
    ]


EXTRACTORS: dict[str, Callable[[dict], list[dict]]] = {
    "training": training,
    "batched": batched,
    "cavity": cavity,
    "metrics": metrics,
    "pruning": pruning,
    "ntk": ntk,
    "ray": ray_overhead,
    "analyze": analyze,
}


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def table(rows: list[dict]) -> str:
    lines = [
        "| # | what | target | measured | met | detail | date |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r["benchmark"], r["what"], r["target"], r["ratio"], r["target_met"]]
        cells += [r["detail"], r["measured"]]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    rows, missing = [], []
    for name, extract in EXTRACTORS.items():
        report = _load(name)
        if report is None:
            missing.append(name)
            continue
        try:
            rows.extend(extract(report))
        except (KeyError, StopIteration, TypeError) as error:
            raise SystemExit(
                f"{RESULTS / name}.json lacks what the summary reads: {error!r}"
            ) from None
    peak = (_load("training") or {}).get("mm_peak_gflops_n2048")
    summary = {"mm_peak_gflops_n2048": peak, "rows": rows, "not_measured": missing}
    SUMMARY.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    text = README.read_text()
    block = f"{BEGIN}\n{table(rows)}\n\nMachine matmul peak (float32 `torch.mm`, n = 2048): "
    block += f"{peak:.0f} GFLOP/s.\n{END}" if peak else f"not measured.\n{END}"
    if BEGIN in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) :]
    else:
        text = text.replace("\n## ", f"\n## Summary\n\n{block}\n\n## ", 1)
    README.write_text(text)
    print(f"wrote {SUMMARY} and the table in {README} ({len(rows)} rows, missing: {missing})")


if __name__ == "__main__":
    main()
