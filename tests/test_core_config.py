"""Configuration: layering, provenance, validation errors, YAML and --set."""
from __future__ import annotations

import numpy as np
import pytest

from gensynth import hookimpl
from gensynth.config import build_config, dump_resolved, parse_set, resolve
from gensynth.errors import ConfigError
from gensynth.interfaces import ClassInfo, DatasetSpec, ModelPreset, PartSpec
from gensynth.plugins import PluginHost


class _Toy(DatasetSpec):
    name = "toy"
    classes = [ClassInfo(0, "unlabelled", (0, 0, 0)), ClassInfo(1, "sky", (0, 0, 255))]
    default_size = (32, 32)

    @property
    def raw_to_class(self):
        return np.array([0, 1])

    def iter_raw(self, root, split):
        return iter(())

    def default_options(self):
        return {"data.size": [32, 48], "trainer.batch_size": 4}


class _Plugin:
    @hookimpl
    def register_datasets(self, register):
        register("toy", _Toy())

    @hookimpl
    def register_models(self, register):
        register("toy-model", ModelPreset(
            name="toy-model", description="toy", method="adversarial",
            generator=PartSpec("g"), discriminator=PartSpec("d"), objective=PartSpec("hinge"),
            defaults={"optim.lr_g": 2e-4, "trainer.batch_size": 16, "trainer.ema_decay": 0.9999},
            dataset_defaults={"toy": {"trainer.ema_decay": 0.999}},
            paper_defaults={"toy": {"optim.lr_g": 1e-4}}))


@pytest.fixture
def host():
    h = PluginHost(load_entry_points=False)
    h.register_plugin(_Plugin(), name="toy")
    return h


def test_layering_and_provenance(host, tmp_path):
    y = tmp_path / "run.yaml"
    y.write_text("trainer:\n  steps: 100\n  batch_size: 8\noptim:\n  lr_d: 0.001\n")
    cfg, prov = resolve({"model.preset": "toy-model", "data.name": "toy", "trainer.batch_size": 2},
                        yaml_path=str(y), host=host)
    assert cfg.optim.lr_g == 2e-4 and prov["optim.lr_g"] == "preset toy-model"
    assert cfg.data.size == (32, 48) and prov["data.size"] == "dataset toy"
    assert cfg.trainer.ema_decay == 0.999 and prov["trainer.ema_decay"].startswith("preset toy-model for toy")
    assert cfg.trainer.steps == 100 and prov["trainer.steps"] == f"yaml {y}"
    assert cfg.optim.lr_d == 0.001
    assert cfg.trainer.batch_size == 2 and prov["trainer.batch_size"] == "cli"  # CLI beats YAML beats dataset/preset
    assert prov["trainer.seed"] == "default" and cfg.trainer.seed == 42
    doc = dump_resolved(cfg, prov, {"toy": "x==1"})
    assert doc["config"]["trainer"]["batch_size"] == 2 and doc["plugins"] == {"toy": "x==1"}


def test_paper_values_switch(host):
    cfg, prov = resolve({"model.preset": "toy-model", "data.name": "toy", "model.values": "paper"}, host=host)
    assert cfg.optim.lr_g == 1e-4 and "(paper)" in prov["optim.lr_g"]


def test_bad_value_names_field_value_and_allowed(host):
    with pytest.raises(ConfigError) as exc:
        resolve({"model.preset": "toy-model", "data.name": "toy", "trainer.precision": "fp8"}, host=host)
    msg = str(exc.value)
    assert "trainer.precision = 'fp8' (from cli)" in msg and "'fp32', 'bf16' or 'fp16'" in msg


def test_bad_number_from_yaml_names_the_file(host, tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("optim:\n  lr_g: -1\n")
    with pytest.raises(ConfigError) as exc:
        resolve({"model.preset": "toy-model", "data.name": "toy"}, yaml_path=str(y), host=host)
    assert f"optim.lr_g = -1 (from yaml {y})" in str(exc.value)
    assert "greater than 0" in str(exc.value)


def test_unknown_key_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown configuration key 'trainer.stepz'. Did you mean 'trainer.steps'\?"):
        parse_set(["trainer.stepz=3"])
    y = tmp_path / "typo.yaml"
    y.write_text("trainer:\n  batch_sise: 3\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown configuration key 'trainer.batch_sise'"):
        resolve({}, yaml_path=str(y))


def test_set_parses_yaml_values():
    out = parse_set(["trainer.steps=10", "model.losses.labelmix=5", "data.size=[64, 128]", "trainer.ema_decay=null"])
    assert out == {"trainer.steps": 10, "model.losses.labelmix": 5, "data.size": [64, 128], "trainer.ema_decay": None}
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_set(["trainer.steps"])


def test_cross_field_validation():
    with pytest.raises(ConfigError, match=r"micro_batch_size \(8\) exceeds trainer.batch_size \(4\)"):
        build_config([("cli", {"trainer.batch_size": 4, "trainer.micro_batch_size": 8})])


def test_unknown_preset_lists_choices(host):
    from gensynth.errors import RegistryError

    with pytest.raises(RegistryError, match=r"unknown model 'toy-modle'. Did you mean 'toy-model'\?"):
        resolve({"model.preset": "toy-modle", "data.name": "toy"}, host=host)
