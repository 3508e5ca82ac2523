"""benchmarks/learning_seeds.py: pooling learning.py reports over seeds and precisions.

The reports here are written by the test in learning.py's JSON layout (the real ones take minutes each; the
tiny configuration's real report is checked in test_learning_evidence.py).
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def seeds_mod():
    name = "gensynth_bench_learning_seeds"
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "learning_seeds.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(name, None)


def _report(path: Path, seed: int, precision: str, miou: list[float], steps: int = 300, **settings) -> Path:
    curve = [{"step": 100 * i, "seg_miou": v, "seg_fd": 10.0 - v, "color_emd": 20.0 * (1 - v), "d_miou": v / 2,
              "ms_ssim": 0.9} for i, v in enumerate(miou)]
    report = {
        "settings": {"models": ["oasis"], "steps": steps, "every": 100, "seed": seed, "precision": precision,
                     "tiny": False, "val_samples": 64, "extra": {}, "probe_d": False, **settings},
        "models": {"oasis": {"curve": curve}},
        "reference": {"segmenter": f"segmenter-demo-64x64-n256-w16-s400-seed{seed}"},
    }
    path.mkdir(parents=True, exist_ok=True)
    (path / "learning.json").write_text(json.dumps(report))
    return path / "learning.json"


def test_groups_by_precision_with_median_and_range_per_step(seeds_mod, tmp_path, capsys):
    _report(tmp_path / "a", 0, "fp32", [0.03, 0.10, 0.40, 0.50])
    _report(tmp_path / "b", 1, "fp32", [0.03, 0.01, 0.02, 0.20])
    _report(tmp_path / "c", 2, "fp32", [0.03, 0.30, 0.60, 0.70])
    _report(tmp_path / "d", 0, "bf16", [0.03, 0.20, 0.45, 0.55])
    out = tmp_path / "summary"
    summary = seeds_mod.main([str(tmp_path), "--out", str(out), "--reach", "0.3"])

    by_precision = {g["precision"]: g for g in summary["groups"]}
    assert set(by_precision) == {"fp32", "bf16"}
    assert by_precision["fp32"]["seeds"] == [0, 1, 2]
    step300 = by_precision["fp32"]["steps"][3]
    assert step300["step"] == 300
    assert step300["seg_miou"] == {"median": 0.5, "min": 0.2, "max": 0.7, "n": 3}
    assert step300["color_emd"]["median"] == pytest.approx(10.0)
    assert by_precision["bf16"]["steps"][2]["seg_miou"]["n"] == 1

    runs = {(r["precision"], r["seed"]): r for r in summary["runs"]}
    assert runs[("fp32", 1)]["first_reach_step"] is None          # never reached 0.3
    assert runs[("fp32", 0)]["first_reach_step"] == 200
    assert runs[("fp32", 2)]["first_reach_step"] == 100            # 0.30 counts as reached
    assert (runs[("fp32", 0)]["best_seg_miou"], runs[("fp32", 0)]["best_step"]) == (0.5, 300)

    table = (out / "seeds.md").read_text()
    assert "| oasis | fp32 | 0,1,2 | 300 | 0.500 (0.200-0.700) |" in table
    assert "| oasis | fp32 | 1 | 300 | 0.200 |" in table and "| never |" in table
    assert json.loads((out / "seeds.json").read_text())["runs"] == summary["runs"]
    assert capsys.readouterr().out == table


def test_refuses_runs_that_differ_in_more_than_seed_and_precision(seeds_mod, tmp_path):
    a = _report(tmp_path / "a", 0, "fp32", [0.0, 0.1], steps=800)
    b = _report(tmp_path / "b", 1, "bf16", [0.0, 0.1], steps=400)
    with pytest.raises(SystemExit) as e:
        seeds_mod.main([str(a), str(b)])
    msg = str(e.value)
    assert str(b) in msg and str(a) in msg and "'steps'" in msg and "400" in msg and "800" in msg


def test_refuses_two_runs_of_the_same_seed_and_precision(seeds_mod, tmp_path):
    _report(tmp_path / "a", 3, "bf16", [0.0, 0.1])
    _report(tmp_path / "b", 3, "bf16", [0.0, 0.2])
    with pytest.raises(SystemExit, match="both hold oasis bf16 seed 3"):
        seeds_mod.main([str(tmp_path)])


def test_names_missing_and_malformed_inputs(seeds_mod, tmp_path):
    with pytest.raises(SystemExit, match="nowhere does not exist"):
        seeds_mod.main([str(tmp_path / "nowhere")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no learning.json under .*empty"):
        seeds_mod.main([str(tmp_path / "empty")])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"settings": {}}))
    with pytest.raises(SystemExit, match=r"bad.json is not a learning.py report \(KeyError"):
        seeds_mod.main([str(bad)])
    with pytest.raises(SystemExit):
        seeds_mod.main([str(bad), "--metrics", "seg_miou,fid"])
