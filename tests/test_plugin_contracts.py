"""Contracts of plugin parts: each deliberate bug of a third-party plugin is reported naming the part, at build
time, at the first training step and by ``gensynth plugins check``; options are validated per part."""
from __future__ import annotations

import os
import types

import pytest
import torch
from click.testing import CliRunner
from pydantic import BaseModel
from rich.console import Console
from torch import nn

from conftest import tiny_overrides
from gensynth import hookimpl
from gensynth.contracts import ContractError, check_discriminator_output, check_generator_output, check_loss_value
from gensynth.errors import ConfigError
from gensynth.interfaces import (Condition, Discriminator, DiscriminatorOutput, DOutputKind, GeneratorOutput,
                                 LossTerm)


# --------------------------------------------------------------------------------------------
# a buggy third-party plugin (registered through pluggy, nothing installed)
# --------------------------------------------------------------------------------------------
class _TinyD(Discriminator):
    """image -> a (B, C, H, W) map; subclasses return it in a wrong way."""

    output_kind = DOutputKind.PIXEL_BINARY
    channels = 1

    def __init__(self, num_classes: int, width: int = 4):
        super().__init__()
        self.num_classes = num_classes
        self.conv = nn.Conv2d(3, self.channels, 3, padding=1)

    def forward(self, image, cond=None):
        return DiscriminatorOutput(self.output_kind, self.conv(image))


class BarePatchD(_TinyD):
    """declares PATCH but returns a bare tensor instead of a list of scales"""
    output_kind = DOutputKind.PATCH


class TwoChannelD(_TinyD):
    """declares PIXEL_BINARY (B, 1, H, W) but returns (B, 2, H, W)"""
    channels = 2


class LiarD(_TinyD):
    """declares PATCH but returns PIXEL_BINARY"""
    output_kind = DOutputKind.PATCH

    def forward(self, image, cond=None):
        return DiscriminatorOutput(DOutputKind.PIXEL_BINARY, self.conv(image))


class HalfBatchD(_TinyD):
    """drops half the batch (a bad reshape): the method's split of joint real/fake calls would fail in torch"""
    joint_real_fake = True

    def forward(self, image, cond=None):
        return DiscriminatorOutput(self.output_kind, self.conv(image)[: max(1, image.shape[0] // 2)])


class NeedsLabelsD(_TinyD):
    """declares takes_labels=False (the default) but reads the Condition"""

    def forward(self, image, cond=None):
        return DiscriminatorOutput(self.output_kind, self.conv(image) + cond.labels[:, :1])


class StrictlessOptions(BaseModel):  # no model_config: gensynth forbids unknown keys anyway
    width: int = 4


class PerSampleLoss(LossTerm):
    """returns one value per image instead of a scalar"""
    side = "G"

    def __call__(self, ctx):
        return (ctx.fake - ctx.real).abs().mean(dim=(1, 2, 3))


def _module() -> types.ModuleType:
    mod = types.ModuleType("buggy_plugin")

    @hookimpl
    def register_discriminators(register):
        for name, cls in (("bare-patch", BarePatchD), ("two-channel", TwoChannelD), ("liar", LiarD),
                          ("half-batch", HalfBatchD)):
            register(name, cls, default_objective="hinge")
        register("with-schema", TwoChannelD, options=StrictlessOptions, default_objective="hinge")
        register("needs-labels", NeedsLabelsD, default_objective="hinge")
        register("not-a-module", lambda num_classes, **kw: "oops", description="factory returning a string")

    @hookimpl
    def register_losses(register):
        register("per-sample", PerSampleLoss)

    mod.register_discriminators, mod.register_losses = register_discriminators, register_losses
    return mod


@pytest.fixture
def buggy():
    from gensynth import plugins

    plugins.reset_host()
    host = plugins.get_host()
    module = _module()
    host.register_plugin(module, name="buggy")
    yield host
    plugins.reset_host()


def _first_step(tmp_path, tiny_cache, **extra):
    from gensynth.config import resolve
    from gensynth.train.trainer import run_training

    cli = tiny_overrides(tmp_path / "run", tiny_cache, **{"trainer.steps": 1, **extra})
    d_key = "model.discriminator_options."  # the tiny OASIS D's options, kept to oasis-unet (per-part namespace)
    cli = {k.replace(d_key, d_key + "oasis-unet.") if k.startswith(d_key) else k: v for k, v in cli.items()}
    cfg, prov = resolve(cli)
    with open(os.devnull, "w") as devnull:
        return run_training(cfg, prov, console=Console(file=devnull))


BUGS = {  # discriminator -> what the message must say besides the part's name
    "bare-patch": ["PATCH logits as a list over scales", "got a tensor of shape (4, 1, 32, 32)"],
    "two-channel": ["PIXEL_BINARY logits (B, 1, H, W)", "shape (4, 1, 32, 32)", "got a tensor of shape (4, 2, 32, 32)"],
    "liar": ["DiscriminatorOutput.kind == PATCH", "got kind PIXEL_BINARY"],
    "half-batch": ["shape (4, 1, 32, 32)", "got a tensor of shape (2, 1, 32, 32)"],
}


@pytest.mark.parametrize("name", sorted(BUGS))
def test_discriminator_bug_reported_at_the_first_step_naming_the_part(buggy, tmp_path, tiny_cache, name):
    with pytest.raises(ContractError) as exc:
        _first_step(tmp_path, tiny_cache, **{"model.discriminator": name})
    msg = str(exc.value)
    assert msg.startswith(f"discriminator {name!r} (plugin 'buggy'): expected "), msg
    for part in BUGS[name]:
        assert part in msg, msg


def test_loss_returning_a_non_scalar_reported_at_the_first_step(buggy, tmp_path, tiny_cache):
    with pytest.raises(ContractError) as exc:
        _first_step(tmp_path, tiny_cache, **{"model.losses.per-sample": 1.0})
    msg = str(exc.value)
    assert msg.startswith("loss 'per-sample' (plugin 'buggy'): expected the term's value to be a scalar tensor")
    assert "got a tensor of shape (4,)" in msg


@pytest.mark.parametrize("name", sorted(BUGS))
def test_plugins_check_reports_each_discriminator_bug(buggy, name):
    from gensynth.testing import check_part

    results = check_part("discriminators", name, buggy)
    failed = [r for r in results if r.failed]
    assert [r.check for r in failed] == ["forward"], results
    assert failed[0].detail.startswith(f"discriminator {name!r} (plugin 'buggy'): expected ")
    for part in BUGS[name]:
        if "32, 32" not in part:  # plugins check runs a 64x64 batch of 2
            assert part in failed[0].detail


def test_plugins_check_cli_table_and_exit_code(buggy):
    from gensynth.cli.main import cli

    result = CliRunner().invoke(cli, ["plugins", "check", "buggy"], terminal_width=250)
    assert result.exit_code == 1, result.output
    assert "discriminator bare-patch" in result.output and "loss per-sample" in result.output
    assert "FAIL" in result.output and "failed" in result.output
    # the healthy core objectives pass
    result = CliRunner().invoke(cli, ["plugins", "check", "gensynth", "--json"])
    import json

    rows = json.loads(result.output[result.output.index("["):])
    assert result.exit_code == 0 and {r["name"] for r in rows} >= {"hinge", "bce", "vgg"}
    assert all(r["status"] in ("ok", "skip") for r in rows), rows


def test_plugins_check_unknown_plugin(buggy):
    from gensynth.cli.main import cli

    result = CliRunner().invoke(cli, ["plugins", "check", "bugy"])
    assert result.exit_code != 0 and "no plugin named 'bugy'" in result.output
    assert "Did you mean 'buggy'" in result.output


def test_loss_check_names_the_term(buggy):
    from gensynth.testing import check_part

    results = check_part("losses", "per-sample", buggy)
    step = [r for r in results if r.check == "step"][0]
    assert step.failed and step.detail.startswith("loss 'per-sample' (plugin 'buggy'): expected the term's value to "
                                                  "be a scalar tensor"), step


def test_factory_returning_no_discriminator_fails_at_build(buggy):
    from gensynth.build import build_discriminator, resolve_parts
    from gensynth.config import resolve

    cfg, _ = resolve({"model.discriminator": "not-a-module", "model.objective": "hinge"})
    with pytest.raises(ContractError, match=r"discriminator 'not-a-module' \(plugin 'buggy'\): expected the factory "
                                            r"to return a gensynth.interfaces.Discriminator .*; got a str"):
        build_discriminator(resolve_parts(cfg))


# --------------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------------
def test_unknown_option_of_a_part_without_schema_is_rejected_naming_it(buggy):
    from gensynth.build import resolve_parts
    from gensynth.config import resolve

    cfg, _ = resolve({"model.discriminator": "two-channel", "model.discriminator_options.widht": 8})
    with pytest.raises(ConfigError) as exc:
        resolve_parts(cfg)
    msg = str(exc.value)
    assert "discriminator 'two-channel' (plugin 'buggy')" in msg
    assert "model.discriminator_options.widht = 8: unknown option. Did you mean 'width'? Options: width" in msg


def test_schema_without_extra_setting_forbids_unknown_keys(buggy):
    from gensynth.build import resolve_parts
    from gensynth.config import resolve

    cfg, _ = resolve({"model.discriminator": "with-schema", "model.discriminator_options.widht": 8})
    with pytest.raises(ConfigError, match=r"discriminator 'with-schema' \(plugin 'buggy'\)(.|\n)*widht = 8: unknown "
                                          r"option. Did you mean 'width'"):
        resolve_parts(cfg)
    ok, _ = resolve({"model.discriminator": "with-schema", "model.discriminator_options.width": 8})
    assert resolve_parts(ok).discriminator_options == {"width": 8}


def test_loss_options_are_validated():
    from gensynth.build import resolve_parts
    from gensynth.config import resolve

    cfg, _ = resolve({"model.loss_options.labelmix.strength": 2})
    with pytest.raises(ConfigError) as exc:
        resolve_parts(cfg)
    assert "loss 'labelmix' (plugin 'oasis')" in str(exc.value)
    assert ("model.loss_options.labelmix.strength = 2: unknown option. Options: none (it takes no options)"
            in str(exc.value))
    bad_vgg, _ = resolve({"model.preset": "spade", "model.loss_options.vgg.random_int": True,
                          "model.losses.vgg": 10})
    with pytest.raises(ConfigError, match="random_int = True: unknown option. Did you mean 'random_init'"):
        resolve_parts(bad_vgg)


def test_objective_options_rejected_for_an_objective_without_options():
    from gensynth.build import resolve_parts
    from gensynth.config import resolve

    cfg, _ = resolve({"model.discriminator": "patchgan", "model.objective_options.balancing": False})
    with pytest.raises(ConfigError, match=r"objective 'hinge' \(plugin 'gensynth'\)(.|\n)*balancing = False: unknown"):
        resolve_parts(cfg)


def test_per_discriminator_namespaces_select_the_options_of_the_part_in_use():
    from gensynth.build import resolve_parts
    from gensynth.config import resolve

    both = {"model.discriminator_options": {"oasis-unet": {"width": 0.25, "num_res_blocks": 4},
                                            "patchgan": {"ndf": 8, "num_D": 1}}}
    unet = resolve_parts(resolve(both)[0])
    assert unet.discriminator == "oasis-unet"
    assert unet.discriminator_options["width"] == 0.25 and unet.discriminator_options["num_res_blocks"] == 4
    patch = resolve_parts(resolve({**both, "model.discriminator": "patchgan"})[0])
    assert patch.discriminator_options["ndf"] == 8 and patch.discriminator_options["num_D"] == 1
    assert "width" not in patch.discriminator_options
    # a namespace wins over a flat key for its part; the flat key still applies (deprecated)
    mixed, prov = resolve({"model.discriminator_options.width": 0.5, "model.discriminator_options.num_res_blocks": 4,
                           "model.discriminator_options.oasis-unet.width": 0.25})
    parts = resolve_parts(mixed)
    assert parts.discriminator_options["width"] == 0.25 and parts.discriminator_options["num_res_blocks"] == 4
    from gensynth.build import run_notes

    notes = run_notes(parts, prov)
    assert any("model.discriminator_options.num_res_blocks (from cli) is a flat option key, deprecated" in n
               and "model.discriminator_options.<discriminator name>.num_res_blocks" in n for n in notes), notes
    assert not any("oasis-unet.width" in n for n in notes)


def test_compare_plans_carry_each_discriminators_own_options(tmp_path):
    from gensynth.cli.compare_cmd import plan_runs

    overrides = {"model.discriminator_options.oasis-unet.width": 0.25,
                 "model.discriminator_options.oasis-unet.num_res_blocks": 4,
                 "model.discriminator_options.patchgan.ndf": 8}
    plans = plan_runs("oasis", ["oasis-unet", "patchgan"], "demo", 2, tmp_path, overrides)
    by_name = {name: parts for name, _, _, parts in plans}
    assert by_name["oasis-unet"].discriminator_options["width"] == 0.25
    assert by_name["patchgan"].discriminator_options["ndf"] == 8
    assert by_name["patchgan"].objective == "hinge" and "labelmix" not in by_name["patchgan"].losses
    assert "ndf" not in by_name["oasis-unet"].discriminator_options


def test_resume_accepts_the_same_options_written_per_part():
    from gensynth.build import canonical_options
    from gensynth.config import flatten, resolve

    flat, _ = resolve({"model.discriminator_options.width": 0.25})
    spaced, _ = resolve({"model.discriminator_options.oasis-unet.width": 0.25,
                         "model.discriminator_options.patchgan.ndf": 8})
    assert flatten(flat.model_dump()) != flatten(spaced.model_dump())
    assert flatten(canonical_options(flat).model_dump()) == flatten(canonical_options(spaced).model_dump())
    other, _ = resolve({"model.discriminator_options.oasis-unet.width": 0.5})
    assert flatten(canonical_options(flat).model_dump()) != flatten(canonical_options(other).model_dump())


# --------------------------------------------------------------------------------------------
# the contract functions themselves
# --------------------------------------------------------------------------------------------
def test_generator_output_contract():
    cond = Condition(labels=torch.zeros(2, 4, 8, 8))
    check_generator_output(GeneratorOutput(torch.zeros(2, 3, 8, 8)), cond, "generator 'g'")
    with pytest.raises(ContractError, match=r"generator 'g': expected GeneratorOutput.image of shape \(B, 3, H, W\) = "
                                            r"\(2, 3, 8, 8\) .*; got a tensor of shape \(2, 3, 4, 4\)"):
        check_generator_output(GeneratorOutput(torch.zeros(2, 3, 4, 4)), cond, "generator 'g'")
    with pytest.raises(ContractError, match=r"image values in \[-1, 1\] .*; got values in \[0, 2\]"):
        check_generator_output(GeneratorOutput(torch.linspace(0, 2, 384).view(2, 3, 8, 8)), cond, "generator 'g'")
    with pytest.raises(ContractError, match="expected forward to return a GeneratorOutput"):
        check_generator_output(torch.zeros(2, 3, 8, 8), cond, "generator 'g'")
    with pytest.raises(ContractError, match=r"aux to be a dict of tensors .*; got aux \{'mu': a list of 1 \[float\]\}"):
        check_generator_output(GeneratorOutput(torch.zeros(2, 3, 8, 8), {"mu": [0.0]}), cond, "generator 'g'")


def test_discriminator_feature_contract():
    image = torch.zeros(2, 3, 16, 16)
    logits = [torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 4, 4)]
    kw = dict(declared=DOutputKind.PATCH, num_classes=3, provides_features=True)
    check_discriminator_output(DiscriminatorOutput(DOutputKind.PATCH, logits, [[torch.zeros(2, 4, 8, 8)]] * 2),
                               image, "discriminator 'd'", **kw)
    with pytest.raises(ContractError, match=r"features \(it declares provides_features=True\).*; got features=None"):
        check_discriminator_output(DiscriminatorOutput(DOutputKind.PATCH, logits), image, "discriminator 'd'", **kw)
    with pytest.raises(ContractError, match="features for each of the 2 logit scales; got 1 feature scales"):
        check_discriminator_output(DiscriminatorOutput(DOutputKind.PATCH, logits, [[torch.zeros(2, 4, 8, 8)]]),
                                   image, "discriminator 'd'", **kw)
    with pytest.raises(ContractError, match=r"one inner list even for a single scale.*; got a list of 2"):
        check_discriminator_output(DiscriminatorOutput(DOutputKind.PATCH, logits, [torch.zeros(2, 4, 8, 8)] * 2),
                                   image, "discriminator 'd'", **kw)
    with pytest.raises(ContractError, match=r"shape \(2, 4, 16, 16\) for 3 classes"):
        check_discriminator_output(DiscriminatorOutput(DOutputKind.PIXEL_CLASSES, torch.zeros(2, 3, 16, 16)), image,
                                   "discriminator 'd'", declared=DOutputKind.PIXEL_CLASSES, num_classes=3)


def test_loss_value_contract():
    check_loss_value(torch.tensor(1.0), "loss 'x'")
    with pytest.raises(ContractError, match=r"loss 'x': expected the loss to be finite; got nan"):
        check_loss_value(torch.tensor(float("nan")), "loss 'x'")
    with pytest.raises(ContractError, match=r"expected the loss to be a scalar tensor; got a float"):
        check_loss_value(1.0, "loss 'x'")
    with pytest.raises(ContractError, match=r"of shape \(\) \(reduce it: .reshape\(\(\)\)\); got a tensor of "
                                            r"shape \(1,\)"):
        check_loss_value(torch.ones(1), "loss 'x'")


# --------------------------------------------------------------------------------------------
# train prints its notes; config.json records the resolved parts
# --------------------------------------------------------------------------------------------
def test_train_prints_notes_and_records_the_resolved_parts(tmp_path, tiny_cache):
    import json

    from gensynth.cli.main import cli

    run = tmp_path / "run"
    sets = {k: v for k, v in tiny_overrides(run, tiny_cache).items()
            if not k.startswith(("model.preset", "data.name", "trainer.steps", "trainer.run_dir",
                                 "model.discriminator_options"))}
    sets["model.discriminator_options.patchgan.ndf"] = 4
    args = [x for k, v in sets.items() for x in ("--set", f"{k}={json.dumps(v)}")]
    res = CliRunner().invoke(cli, ["train", "--model", "oasis", "--data", "demo", "--discriminator", "patchgan",
                                   "--steps", "1", "--run-dir", str(run), "--no-3d-noise", *args],
                             terminal_width=300)
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "use_3d_noise" not in out  # a flag's own key gets no deprecation note
    assert "note: objective 'hinge' follows discriminator 'patchgan'" in out
    assert "note: preset loss 'labelmix' dropped: discriminator 'patchgan' does not provide per-pixel" in out
    assert ("note: model.generator_options.channels (from cli) is a flat option key, deprecated: it applies to "
            "whichever generator is chosen; write model.generator_options.<generator name>.channels instead") in out
    assert "patchgan.ndf" not in out.split("note:")[-1]  # namespaced keys get no note
    doc = json.loads((run / "config.json").read_text())
    assert doc["config"]["model"]["objective"] is None  # what the user set ...
    parts = doc["parts"]  # ... and what was resolved from it
    assert parts["objective"] == "hinge" and parts["losses"] == {} and parts["discriminator"] == "patchgan"
    assert parts["discriminator_options"]["ndf"] == 4
    assert any("objective 'hinge' follows" in n for n in parts["notes"])


def test_compare_runs_each_discriminator_with_its_own_options(tmp_path, tiny_cache):
    import json

    from gensynth.cli.main import cli

    sets = {k: v for k, v in tiny_overrides(tmp_path / "unused", tiny_cache).items()
            if not k.startswith(("model.preset", "data.name", "trainer.steps", "trainer.run_dir",
                                 "model.discriminator_options"))}
    sets["model.discriminator_options.oasis-unet"] = {"num_res_blocks": 2, "width": 0.0625}
    sets["model.discriminator_options.patchgan"] = {"ndf": 4, "num_D": 1}
    args = [x for k, v in sets.items() for x in ("--set", f"{k}={json.dumps(v)}")]
    out = tmp_path / "cmp"
    res = CliRunner().invoke(cli, ["compare", "--model", "oasis", "--discriminators", "oasis-unet,patchgan",
                                   "--data", "demo", "--steps", "2", "--out", str(out), *args], terminal_width=300)
    assert res.exit_code == 0, res.output
    assert "note: objective 'hinge' follows discriminator 'patchgan'" in " ".join(res.output.split())
    parts = {name: json.loads((out / name / "config.json").read_text())["parts"] for name in ("oasis-unet", "patchgan")}
    assert parts["oasis-unet"]["discriminator_options"]["width"] == 0.0625
    patch = parts["patchgan"]["discriminator_options"]
    assert patch["ndf"] == 4 and patch["num_D"] == 1
    assert "ndf" not in parts["oasis-unet"]["discriminator_options"]
    rows = json.loads((out / "compare.json").read_text())
    assert [(r["discriminator"], r["objective"], r["steps"]) for r in rows] == [("oasis-unet", "n+1", 2),
                                                                                 ("patchgan", "hinge", 2)]


# --------------------------------------------------------------------------------------------
# the trainer: checks on the first step only; resuming across the option namespaces
# --------------------------------------------------------------------------------------------
def test_contracts_are_checked_on_the_first_step_only(tmp_path, tiny_cache, monkeypatch):
    from gensynth import contracts

    calls = {"G": 0, "D": 0, "loss": 0}
    for fn, key in (("check_generator_output", "G"), ("check_discriminator_output", "D"),
                    ("check_loss_value", "loss")):
        original = getattr(contracts, fn)

        def counting(*args, _original=original, _key=key, **kwargs):
            calls[_key] += 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(contracts, fn, counting)
    result = _first_step(tmp_path, tiny_cache, **{"trainer.steps": 3})
    assert result.step == 3
    # step 1 only: G in the G step and the D step; D on the fake (G step) and once merged (D step);
    # G_adv + D_fake + D_real + labelmix
    assert calls == {"G": 2, "D": 2, "loss": 4}


def test_resume_with_options_rewritten_per_part(tiny_run, tiny_cache, tmp_path):
    """A run trained with flat option keys continues when its options are written per part."""
    import shutil

    from gensynth.config import resolve
    from gensynth.errors import ConfigError
    from gensynth.train.trainer import run_training

    run = tmp_path / "run"
    shutil.copytree(tiny_run.run_dir, run)
    cli = tiny_overrides(run, tiny_cache, **{"trainer.steps": 7})
    for part, name in (("generator", "oasis"), ("discriminator", "oasis-unet")):
        key = f"model.{part}_options."
        cli = {k.replace(key, f"{key}{name}.") if k.startswith(key) else k: v for k, v in cli.items()}
    cfg, prov = resolve(cli)
    # written per part (over the demo preset's flat defaults), unlike the checkpoint's configuration
    assert cfg.model.discriminator_options["oasis-unet"] == {"num_res_blocks": 2, "width": 0.0625}
    from gensynth.checkpoint import load_checkpoint

    assert load_checkpoint(run).config().model.discriminator_options == {"num_res_blocks": 2, "width": 0.0625}
    with open(os.devnull, "w") as devnull:
        assert run_training(cfg, prov, console=Console(file=devnull), resume=True).step == 7
    changed, _ = resolve({**cli, "model.discriminator_options.oasis-unet.width": 0.125, "trainer.steps": 8})
    with pytest.raises(ConfigError, match=r"model.discriminator_options.width: 0.0625 -> 0.125"):
        run_training(changed, prov, console=Console(file=open(os.devnull, "w")), resume=True)


def test_one_yaml_carries_options_for_several_parts(tmp_path):
    from gensynth.build import resolve_parts
    from gensynth.config import resolve

    path = tmp_path / "run.yaml"
    path.write_text("model:\n"
                    "  discriminator_options:\n"
                    "    oasis-unet: {width: 0.25, num_res_blocks: 4}\n"
                    "    patchgan: {ndf: 8}\n"
                    "  objective_options:\n"
                    "    n+1: {balancing: false}\n")
    unet = resolve_parts(resolve({}, str(path))[0])
    assert unet.discriminator_options["width"] == 0.25 and unet.objective_options["balancing"] is False
    patch = resolve_parts(resolve({"model.discriminator": "patchgan"}, str(path))[0])
    assert patch.discriminator_options["ndf"] == 8 and patch.objective == "hinge" and patch.objective_options == {}


def test_plugins_check_calls_a_label_free_discriminator_without_labels(buggy):
    from gensynth.testing import check_part

    failed = [r for r in check_part("discriminators", "needs-labels", buggy) if r.failed]
    assert [r.check for r in failed] == ["forward"]
    assert failed[0].detail.startswith("discriminator 'needs-labels' (plugin 'buggy'): expected forward(image, None) "
                                       "to work: it declares takes_labels=False")
    assert "AttributeError" in failed[0].detail


def test_train_command_reports_a_contract_failure_in_one_message(buggy, tmp_path, tiny_cache):
    import json

    from gensynth.cli.main import cli

    sets = {k: v for k, v in tiny_overrides(tmp_path / "run", tiny_cache).items()
            if not k.startswith(("model.preset", "data.name", "trainer.steps", "trainer.run_dir",
                                 "model.discriminator_options"))}
    args = [x for k, v in sets.items() for x in ("--set", f"{k}={json.dumps(v)}")]
    res = CliRunner().invoke(cli, ["train", "--discriminator", "bare-patch", "--steps", "1", "--run-dir",
                                   str(tmp_path / "run"), *args], terminal_width=300)
    assert res.exit_code == 2, res.output
    assert "discriminator 'bare-patch' (plugin 'buggy'): expected PATCH logits as a list over scales" in res.output
    assert "Traceback" not in res.output
