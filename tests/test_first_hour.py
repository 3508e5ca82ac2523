"""A new user's first hour (issue 20): one size syntax, model scales, the start-up estimate, logs without duplicate
steps after a crash, and a progress display that fits 80 columns."""
from __future__ import annotations

import io
import json
import re

import pytest
import torch
from click.testing import CliRunner
from rich.console import Console

from gensynth.config import parse_size, resolve
from gensynth.errors import ConfigError
from conftest import tiny_overrides


# ------------------------------------------------------------------------------------------------ one size syntax
@pytest.mark.parametrize("value, expected", [
    ("64x128", (64, 128)), ("64X128", (64, 128)), (" 64 x 128 ", (64, 128)), ("64,128", (64, 128)),
    ([64, 128], (64, 128)), ((32, 48), (32, 48)), ("96", (96, 96)), (96, (96, 96)),
])
def test_parse_size_accepts_one_syntax(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize("value, message", [
    ("64y", "expected HxW"), ("64x128x3", "expected HxW"), ("axb", "expected HxW"), (True, "expected HxW"),
    ("4x128", "at least 8x8"), ([64], "expected HxW"),
])
def test_parse_size_names_the_syntax_on_bad_input(value, message):
    with pytest.raises(ValueError, match=message):
        parse_size(value, what="--size")


def test_set_data_size_takes_hxw_like_the_datasets_commands():
    cfg, provenance = resolve({"data.size": "64x128"})
    assert cfg.data.size == (64, 128)
    assert provenance["data.size"] == "cli"
    with pytest.raises(ConfigError, match=r"data.size = '64by128'.*expected HxW \(e.g. 256x512\)"):
        resolve({"data.size": "64by128"})


def test_train_size_and_scale_flags_map_to_config_keys():
    from gensynth.cli.train_cmd import _flags_to_config

    cli = _flags_to_config({"size": "64x128", "scale": "small", "model": "oasis"})
    assert cli["data.size"] == "64x128" and cli["model.scale"] == "small"
    cfg, _ = resolve(cli)
    assert cfg.data.size == (64, 128) and cfg.model.scale == "small"


def test_size_flag_is_accepted_by_train_compare_evaluate_and_datasets():
    from gensynth.cli.main import cli

    for command in (["train"], ["compare"], ["evaluate"], ["datasets", "preview"]):
        out = CliRunner().invoke(cli, [*command, "--help"], terminal_width=120).output
        assert "--size" in out, command
    bad = CliRunner().invoke(cli, ["datasets", "preview", "demo", "--size", "64y", "--out", "unused.png"])
    assert bad.exit_code != 0 and "expected HxW" in bad.output


# ------------------------------------------------------------------------------------------------ scales
def _counts(cli: dict) -> tuple[int, int]:
    from gensynth.build import build_discriminator, build_generator, resolve_parts

    cfg, _ = resolve(cli)
    parts = resolve_parts(cfg)
    with torch.device("meta"):
        g, d = build_generator(parts), build_discriminator(parts)
    return sum(p.numel() for p in g.parameters()), sum(p.numel() for p in d.parameters())


def test_demo_defaults_to_tiny_and_real_datasets_to_paper():
    demo, prov = resolve({"model.preset": "oasis", "data.name": "demo"})
    assert demo.model.scale == "tiny" and prov["model.scale"] == "scale tiny of preset oasis"
    assert demo.model.generator_options["channels"] == 16 and demo.trainer.batch_size == 8
    assert prov["model.generator_options.channels"] == "scale tiny of preset oasis"
    city, _ = resolve({"model.preset": "oasis", "data.name": "cityscapes"})
    assert city.model.scale == "paper" and city.trainer.batch_size == 20  # the official Cityscapes script
    assert "channels" not in city.model.generator_options  # the generator's own (official) default


def test_scales_set_widths_and_batch_over_the_dataset_values():
    paper = _counts({"model.preset": "oasis", "data.name": "cityscapes"})
    small_cfg, _ = resolve({"model.preset": "oasis", "data.name": "cityscapes", "model.scale": "small"})
    assert small_cfg.trainer.batch_size == 8 and small_cfg.optim.lr_g == 4e-4  # the dataset's lr stays
    small = _counts({"model.preset": "oasis", "data.name": "cityscapes", "model.scale": "small"})
    tiny = _counts({"model.preset": "oasis", "data.name": "cityscapes", "model.scale": "tiny"})
    assert paper == (71_107_523, 22_251_364)  # the official OASIS on Cityscapes (as in test_oasis_models)
    assert 0.2 < small[0] / paper[0] < 0.3 and 0.2 < small[1] / paper[1] < 0.3  # half widths: ~a quarter
    assert tiny[0] < 2_000_000 and tiny[1] < 100_000
    # --scale paper on the demo data: the published widths
    demo_paper = _counts({"model.preset": "oasis", "data.name": "demo", "model.scale": "paper"})
    assert demo_paper[1] == 22_249_804  # the official widths; fewer classes than Cityscapes in the last layer
    # the user's own value wins over the scale
    cfg, prov = resolve({"model.preset": "oasis", "data.name": "demo", "model.generator_options.channels": 24})
    assert cfg.model.generator_options["channels"] == 24 and prov["model.generator_options.channels"] == "cli"


@pytest.mark.parametrize("preset", ["spade", "spade+"])
def test_spade_presets_have_the_same_scales(preset):
    tiny, _ = resolve({"model.preset": preset, "data.name": "demo"})
    assert tiny.model.scale == "tiny" and tiny.model.generator_options["ngf"] == 8
    small, _ = resolve({"model.preset": preset, "data.name": "ade20k", "model.scale": "small"})
    assert small.model.generator_options["ngf"] == 32 and small.model.discriminator_options["ndf"] == 32


def test_unknown_scale_names_the_presets_scales():
    with pytest.raises(ConfigError, match=r"model preset 'oasis' has no scale 'smal'. Did you mean 'small'\?.*"
                                          r"Its scales: paper, small, tiny"):
        resolve({"model.preset": "oasis", "model.scale": "smal"})


def test_swapped_discriminator_drops_the_scales_discriminator_options():
    cfg, _ = resolve({"model.preset": "oasis", "data.name": "demo", "model.discriminator": "patchgan"})
    assert cfg.model.discriminator_options == {}
    assert cfg.model.generator_options["channels"] == 16  # the generator keeps its tiny widths


# ------------------------------------------------------------------------------------------------ the estimate
def test_preflight_leaves_the_run_bit_identical_and_reports_an_estimate(tmp_path, tiny_cache):
    from safetensors.torch import load_file

    from gensynth.train.trainer import run_training

    results = {}
    for preflight in (True, False):
        out = io.StringIO()
        cfg, prov = resolve(tiny_overrides(tmp_path / str(preflight), tiny_cache, **{
            "trainer.preflight": preflight, "trainer.steps": 3, "trainer.checkpoint_every": 3}))
        results[preflight] = run_training(cfg, prov, console=Console(file=out, width=200))
        results[preflight].text = out.getvalue()
    est = results[True].estimate
    assert results[False].estimate is None and "estimate" not in results[False].text
    assert est.seconds_per_step > 0 and est.peak_bytes > 0 and est.measured_batches == (1, 4)
    assert est.micro_batch == 4 and est.accum == 1 and est.memory_kind == "RAM"
    assert est.available_bytes > est.peak_bytes  # a tiny model on this machine
    text = results[True].text
    assert re.search(r"device cpu \(\d+ threads\)\s+model oasis \(scale tiny\): G [\d,]+ parameters, D [\d,]+", text)
    assert "data demo train: 16 samples at 32x32" in text and "batch 4 = 1 process(es) x 1 x 4" in text
    assert re.search(r"estimate \(measured at batch 1 and 4\): [\d.]+ (s|min) per step, .* for 3 steps; peak RAM", text)
    for name in ("generator", "generator_ema", "discriminator"):
        a = load_file(next((tmp_path / "True").glob(f"checkpoints/step_00000003/{name}.safetensors")))
        b = load_file(next((tmp_path / "False").glob(f"checkpoints/step_00000003/{name}.safetensors")))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_estimate_warns_when_memory_would_not_fit(tmp_path, tiny_cache, monkeypatch):
    from gensynth.train import preflight
    from gensynth.train.trainer import run_training

    monkeypatch.setattr(preflight, "available_memory", lambda device, processes_per_node=1: 1 << 20)  # 1 MB
    out = io.StringIO()
    cfg, prov = resolve(tiny_overrides(tmp_path / "r", tiny_cache, **{"trainer.steps": 1}))
    result = run_training(cfg, prov, console=Console(file=out, width=300))
    assert result.estimate.exceeds_memory and result.step == 1  # a warning, not a stop
    text = out.getvalue()
    assert re.search(r"warning: the estimated peak RAM of training, [\d.]+ (MB|GB), exceeds the 1.0 MB this process "
                     r"has: the run may be killed for memory. Lower --batch-size \(or set "
                     r"trainer.micro_batch_size=2 to accumulate\), train at a smaller --size, or pick a smaller "
                     r"--scale", text)


def test_estimate_extrapolates_linearly_in_the_batch():
    from gensynth.train.preflight import StepEstimate, format_bytes, format_duration

    est = StepEstimate(seconds_per_step=2.0, peak_bytes=3 << 30, available_bytes=2 << 30, memory_kind="RAM",
                       measured_batches=(1, 4), micro_batch=8, accum=2)
    assert est.exceeds_memory and est.run_seconds(100) == 200.0
    assert format_bytes(3 << 30) == "3.0 GB" and format_bytes(1536) == "1.5 kB" and format_bytes(None) == "n/a"
    assert format_duration(5) == "5.0 s" and format_duration(200) == "3 min" and \
        format_duration(3 * 3600 + 120) == "3 h 02 min" and format_duration(3 * 86400) == "3.0 days"


# ------------------------------------------------------------------------------------------------ logs after a crash
def test_truncate_metrics_keeps_steps_up_to_the_checkpoint(tmp_path):
    from gensynth.train.logging import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "kind": "train", "x": s}) for s in range(1, 9)] + ['{"step": 9, "kin']
    path.write_text("\n".join(lines) + "\n")
    assert truncate_metrics(path, 5) == 4  # steps 6, 7, 8 and the cut line
    assert [json.loads(l)["step"] for l in path.read_text().splitlines()] == [1, 2, 3, 4, 5]
    assert truncate_metrics(path, 5) == 0
    assert truncate_metrics(tmp_path / "absent.jsonl", 3) == 0


def test_resumed_run_logs_every_step_once(tmp_path, tiny_cache):
    from gensynth.train.trainer import run_training

    run = tmp_path / "run"
    quiet = Console(file=io.StringIO())
    cfg, prov = resolve(tiny_overrides(run, tiny_cache, **{"trainer.steps": 4, "trainer.log_every": 1,
                                                           "trainer.checkpoint_every": 2, "trainer.preflight": False}))
    run_training(cfg, prov, console=quiet)
    # a crash after step 4's checkpoint would have logged steps 5 and 6; simulate it, and remove the checkpoint 4
    with open(run / "metrics.jsonl", "a") as f:
        for s in (5, 6):
            f.write(json.dumps({"step": s, "kind": "train", "D_fake": 1.0}) + "\n")
    import shutil

    from gensynth.checkpoint import LATEST, checkpoint_root, write_pointer

    root = checkpoint_root(run)
    step4 = sorted(p for p in root.iterdir() if p.name.startswith("step_"))[-1]
    shutil.rmtree(step4)
    write_pointer(root, LATEST, sorted(p.name for p in root.iterdir() if p.name.startswith("step_"))[-1])
    cfg, prov = resolve(tiny_overrides(run, tiny_cache, **{"trainer.steps": 6, "trainer.log_every": 1,
                                                           "trainer.checkpoint_every": 2, "trainer.preflight": False}))
    run_training(cfg, prov, console=quiet)
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(l)["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert all(json.loads(l).get("D_fake") != 1.0 for l in (run / "metrics.jsonl").read_text().splitlines())


# ------------------------------------------------------------------------------------------------ 80 columns
def test_progress_keeps_step_speed_and_eta_visible_in_80_columns():
    from gensynth.train.logging import ProgressDisplay

    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=True, color_system=None)
    progress = ProgressDisplay(console, total=300, start=0)
    losses = {"D_fake": 2.4812, "D_real": 2.4799, "G_adv": 2.4833, "labelmix": 1.93e-06, "vgg": 3.1, "fm": 0.5,
              "images_per_s": 12.3, "lr_g": 1e-4}
    progress.advance(40)
    progress.log(40, losses, eta_s=100)
    progress.bar.refresh()
    progress.close()
    frames = out.getvalue().replace("\r", "\n").split("\n")
    bar_lines = [l for l in frames if "40/300" in l]
    assert bar_lines, out.getvalue()
    last = bar_lines[-1]
    assert "12.3 img/s" in last and "ETA" in last and len(re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", last)) <= 80
    assert any("D_fake=2.48" in l and "40/300" not in l for l in frames)  # the losses on their own line


def test_a_generator_built_for_a_size_follows_the_chosen_training_size():
    """SPADE's and CC-FPSE's VAE heads are Linear layers built for one size (model.generator_options.size):
    --size moves them along; the user's own value of the option still wins; OASIS has no such option."""
    cfg, prov = resolve({"model.preset": "cc-fpse", "data.name": "cityscapes", "data.size": "64x128"})
    assert cfg.model.generator_options["size"] == [64, 128]
    assert prov["model.generator_options.size"] == "the generator's size follows data.size"
    cfg, _ = resolve({"model.preset": "cc-fpse", "data.name": "cityscapes"})
    assert cfg.model.generator_options["size"] == [256, 512]  # the official script's
    cfg, _ = resolve({"model.preset": "spade", "data.name": "ade20k", "data.size": 64})
    assert cfg.model.generator_options["size"] == [64, 64]
    cfg, prov = resolve({"model.preset": "cc-fpse", "data.name": "cityscapes", "data.size": "64x128",
                         "model.generator_options.size": [128, 256]})
    assert cfg.model.generator_options["size"] == [128, 256] and prov["model.generator_options.size"] == "cli"
    cfg, _ = resolve({"model.preset": "oasis", "data.name": "ade20k", "data.size": 64})
    assert "size" not in cfg.model.generator_options


@pytest.mark.parametrize("preset, key, tiny, small", [
    ("cc-fpse", "model.generator_options", {"ngf": 8, "hidden": 16}, {"ngf": 32, "hidden": 32}),
    ("dp-sims", "model.discriminator_options", {"dp-sims": {"backbone": "test_convnext"}},
     {"dp-sims": {"backbone": "convnext_atto"}}),
])
def test_the_new_model_plugins_have_scales(preset, key, tiny, small):
    def section(cfg):
        return getattr(cfg.model, key.split(".")[1])

    demo, _ = resolve({"model.preset": preset, "data.name": "demo"})
    assert demo.model.scale == "tiny"
    for k, v in tiny.items():
        got = section(demo)[k]
        assert (got == v) if not isinstance(v, dict) else all(got[i] == j for i, j in v.items())
    real, _ = resolve({"model.preset": preset, "data.name": "ade20k", "model.scale": "small"})
    for k, v in small.items():
        got = section(real)[k]
        assert (got == v) if not isinstance(v, dict) else all(got[i] == j for i, j in v.items())
