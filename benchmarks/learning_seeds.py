"""Pool several ``learning.py`` runs that differ only in seed and precision: does bf16 learn like fp32?

One ``learning.py`` run is one GAN trajectory, and at demo scale the seed moves it more than precision does
(OASIS stalls for 100-350 steps before it climbs, and how long decides the final numbers). This script reads the
``learning.json`` of several runs, groups them by (model, precision), and prints for every measured step the
median and the range over seeds of each metric, then one row per run with its final values, its best
generated-image mIoU and the first step at which that mIoU reached ``--reach``::

    OMP_NUM_THREADS=1 python benchmarks/learning.py --models oasis --precision bf16 --seed 1 --out runs/bf16_s1
    ...                                                     # the same for fp32, and for more seeds
    python benchmarks/learning_seeds.py runs/*/learning.json --out benchmarks/results/learning/seeds

Runs are pooled only when every setting but the seed and the precision is equal (steps, measuring interval,
validation samples, segmenter, extra configuration); otherwise the script stops and names the file and setting.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: metric key in ``learning.json`` -> (column title, True when higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "seg_miou": ("seg mIoU ↑", True),
    "seg_fd": ("seg-feature FD ↓", False),
    "color_emd": ("colour EMD ↓", False),
    "d_miou": ("D mIoU (real) ↑", True),
    "ms_ssim": ("MS-SSIM ↓", False),
}
#: settings that may differ between pooled runs
VARYING = {"seed", "precision", "models"}


@dataclass(frozen=True)
class Run:
    """One model's curve from one ``learning.json``."""
    path: Path
    model: str
    precision: str
    seed: int
    curve: list[dict[str, Any]]  # [{"step": int, metric: float, ...}], steps ascending

    def at(self, step: int, metric: str) -> float | None:
        for row in self.curve:
            if row["step"] == step:
                v = row.get(metric)
                return None if v is None else float(v)
        return None

    def first_reach(self, metric: str, threshold: float) -> int | None:
        """The first measured step whose ``metric`` is at least ``threshold`` (None: never)."""
        for row in self.curve:
            if row["step"] > 0 and row.get(metric) is not None and row[metric] >= threshold:
                return int(row["step"])
        return None


def find_reports(paths: list[str]) -> list[Path]:
    """``learning.json`` files named directly, or found (recursively) in the directories named."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            hits = sorted(q for q in p.rglob("learning.json") if "cache" not in q.parts)
            if not hits:
                raise SystemExit(f"learning_seeds: no learning.json under {p}")
            found.extend(hits)
        elif p.is_file():
            found.append(p)
        else:
            raise SystemExit(f"learning_seeds: {p} does not exist")
    return found


def load_runs(files: list[Path]) -> list[Run]:
    """Every model of every report, after checking that the reports are comparable."""
    runs: list[Run] = []
    base: tuple[Path, dict[str, Any]] | None = None
    for f in files:
        try:
            report = json.loads(f.read_text())
            settings = report["settings"]
            models = report["models"]
        except (OSError, ValueError, KeyError) as e:
            raise SystemExit(f"learning_seeds: {f} is not a learning.py report ({type(e).__name__}: {e})") from e
        if settings.get("probe_d"):
            raise SystemExit(f"learning_seeds: {f} is a --probe-d report, not a learning curve")
        fixed = {k: v for k, v in settings.items() if k not in VARYING}
        fixed["segmenter"] = report.get("reference", {}).get("segmenter", "").rsplit("-seed", 1)[0]
        if base is None:
            base = (f, fixed)
        else:
            for key in sorted(set(base[1]) | set(fixed)):
                if base[1].get(key) != fixed.get(key):
                    raise SystemExit(f"learning_seeds: {f} differs from {base[0]} in setting '{key}' "
                                     f"({fixed.get(key)!r} vs {base[1].get(key)!r}); only seed and precision "
                                     f"may differ between pooled runs")
        for model, m in models.items():
            runs.append(Run(f, model, settings["precision"], int(settings["seed"]),
                            sorted(m["curve"], key=lambda r: r["step"])))
    seen: dict[tuple[str, str, int], Path] = {}
    for r in runs:
        key = (r.model, r.precision, r.seed)
        if key in seen:
            raise SystemExit(f"learning_seeds: {r.path} and {seen[key]} both hold {r.model} {r.precision} "
                             f"seed {r.seed}")
        seen[key] = r.path
    return runs


def groups(runs: list[Run]) -> dict[tuple[str, str], list[Run]]:
    """Runs by (model, precision), each list ordered by seed."""
    out: dict[tuple[str, str], list[Run]] = {}
    for r in sorted(runs, key=lambda r: (r.model, r.precision, r.seed)):
        out.setdefault((r.model, r.precision), []).append(r)
    return out


def spread(values: list[float | None]) -> dict[str, float] | None:
    """Median, minimum and maximum of the values that exist (None when none does)."""
    vs = [v for v in values if v is not None]
    if not vs:
        return None
    return {"median": statistics.median(vs), "min": min(vs), "max": max(vs), "n": len(vs)}


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def _cell(s: dict[str, float] | None) -> str:
    if s is None:
        return "-"
    if s["n"] == 1:
        return _fmt(s["median"])
    return f"{_fmt(s['median'])} ({_fmt(s['min'])}-{_fmt(s['max'])})"


def summarise(runs: list[Run], metrics: list[str], reach: float) -> dict[str, Any]:
    """Per group and step, the spread of every metric; per run, its final and best values."""
    summary: dict[str, Any] = {"reach": reach, "groups": [], "runs": []}
    for (model, precision), rs in groups(runs).items():
        steps = sorted({row["step"] for r in rs for row in r.curve})
        summary["groups"].append({
            "model": model, "precision": precision, "seeds": [r.seed for r in rs],
            "steps": [{"step": s, **{m: spread([r.at(s, m) for r in rs]) for m in metrics}} for s in steps]})
        for r in rs:
            last = r.curve[-1]
            best = max((row for row in r.curve if row.get("seg_miou") is not None),
                       key=lambda row: row["seg_miou"], default=None)
            summary["runs"].append({
                "model": model, "precision": precision, "seed": r.seed, "file": str(r.path),
                "final_step": last["step"], "final": {m: last.get(m) for m in metrics},
                "best_seg_miou": None if best is None else best["seg_miou"],
                "best_step": None if best is None else best["step"],
                "first_reach_step": r.first_reach("seg_miou", reach)})
    return summary


def markdown(summary: dict[str, Any], metrics: list[str]) -> str:
    """Two tables: median (min-max) over seeds per step; one row per run."""
    lines = ["| model | precision | seeds | step | " + " | ".join(METRICS[m][0] for m in metrics) + " |",
             "|" + "---|" * (len(metrics) + 4)]
    for g in summary["groups"]:
        seeds = ",".join(map(str, g["seeds"]))
        for row in g["steps"]:
            step = "0 (init)" if row["step"] == 0 else str(row["step"])
            lines.append(f"| {g['model']} | {g['precision']} | {seeds} | {step} | "
                         + " | ".join(_cell(row[m]) for m in metrics) + " |")
    lines += ["", "Cells: median over seeds (minimum-maximum).", "",
              "| model | precision | seed | final step | " + " | ".join(METRICS[m][0] for m in metrics)
              + f" | best seg mIoU (step) | first step with seg mIoU ≥ {summary['reach']:g} |",
              "|" + "---|" * (len(metrics) + 6)]
    for r in summary["runs"]:
        best = "-" if r["best_seg_miou"] is None else f"{_fmt(r['best_seg_miou'])} ({r['best_step']})"
        reach = "never" if r["first_reach_step"] is None else str(r["first_reach_step"])
        lines.append(f"| {r['model']} | {r['precision']} | {r['seed']} | {r['final_step']} | "
                     + " | ".join(_fmt(r["final"][m]) for m in metrics) + f" | {best} | {reach} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+", help="learning.json files, or directories searched for them")
    p.add_argument("--metrics", default="seg_miou,seg_fd,color_emd,d_miou",
                   help=f"comma-separated, from: {', '.join(METRICS)}")
    p.add_argument("--reach", type=float, default=0.3,
                   help="report the first step whose generated-image mIoU reaches this (default 0.3)")
    p.add_argument("--out", help="directory for seeds.md and seeds.json")
    args = p.parse_args(argv)
    args.metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = [m for m in args.metrics if m not in METRICS]
    if unknown:
        p.error(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    runs = load_runs(find_reports(args.reports))
    summary = summarise(runs, args.metrics, args.reach)
    summary["command"] = "python benchmarks/learning_seeds.py " + " ".join(sys.argv[1:] if argv is None else argv)
    table = markdown(summary, args.metrics)
    print(table, end="")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "seeds.md").write_text(table)
        (out / "seeds.json").write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
