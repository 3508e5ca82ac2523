"""The docs' example plugin (examples/gensynth-plugin-example): every part passes ``plugins check``, the parts train
together, and the code quoted in docs/plugins.md is the code tested here."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "gensynth-plugin-example"


@pytest.fixture
def example(monkeypatch):
    """The example package, importable (not installed: it is registered through pluggy by the tests)."""
    import importlib

    monkeypatch.syspath_prepend(str(EXAMPLE))
    module = importlib.import_module("gensynth_example")
    yield module


def test_every_part_of_the_example_keeps_its_contracts(example):
    from gensynth.testing import assert_plugin_ok, plugin_host

    results = assert_plugin_ok(example, host=plugin_host(example))
    seen = {(r.kind, r.name, r.check): r for r in results}
    assert {(k, n) for k, n, _ in seen} == {("discriminator", "tiny-fcn"), ("loss", "logit-matching"),
                                             ("dataset", "example-shapes"), ("segmenter", "example-colour")}
    assert all(r.status == "ok" for r in results), results
    assert seen["dataset", "example-shapes", "samples"].detail == "2 samples of split 'train'"
    assert seen["discriminator", "tiny-fcn", "objective"].detail == ("default_objective 'n+1' accepts PIXEL_CLASSES and "
                                                                        "scores it")
    assert seen["segmenter", "example-colour", "forward"].detail == "logits (2, 4, 64, 64)"  # 4 probe classes
    assert "G step with a PATCH discriminator" in seen["loss", "logit-matching", "step"].detail


def test_example_dataset_reports_an_invalid_raw_id(example, tmp_path):
    import shutil

    import numpy as np
    from PIL import Image

    from gensynth.contracts import ContractError, PartRef
    from gensynth.testing import check_raw_samples
    from gensynth_example.dataset import ShapesSpec

    spec = ShapesSpec()
    shutil.copytree(spec.example_root(), tmp_path / "data")
    label = tmp_path / "data/train/train0_label.png"
    arr = np.asarray(Image.open(label)).copy()
    arr[0, 0] = 7
    Image.fromarray(arr).save(label)
    with pytest.raises(ContractError, match=r"dataset 'example-shapes': sample 'train0' \(train/train0.png\): raw "
                                            r"label ids \[7\] are not in raw_to_class"):
        check_raw_samples(spec, str(tmp_path / "data"), "train", PartRef("dataset", "example-shapes"))


def test_example_parts_train_together(example, tmp_path, tiny_cache):
    """The example's dataset, discriminator and loss (with per-part options) in a 2-step run."""
    from gensynth import plugins
    from gensynth.config import resolve
    from gensynth.train.trainer import run_training
    from gensynth_example.dataset import ShapesSpec

    plugins.reset_host()
    plugins.get_host().register_plugin(example, name="example")
    try:
        cfg, prov = resolve({
            "model.preset": "oasis", "data.name": "example-shapes", "data.root": ShapesSpec().example_root(),
            "data.num_workers": 0, "data.cache_dir": str(tiny_cache),
            "model.generator_options.oasis": {"channels": 4, "num_res_blocks": 2, "spade_hidden": 8, "z_dim": 4},
            "model.discriminator": "tiny-fcn",
            "model.discriminator_options": {"tiny-fcn": {"width": 4, "depth": 1}, "oasis-unet": {"width": 0.5}},
            "model.losses.logit-matching": 1.0, "model.loss_options.logit-matching.power": 2,
            "trainer.steps": 2, "trainer.batch_size": 2, "trainer.log_every": 1, "trainer.sample_every": 2,
            "trainer.checkpoint_every": 2, "trainer.bn_refresh_batches": 1, "trainer.run_dir": str(tmp_path / "run")})
        with open(os.devnull, "w") as devnull:
            result = run_training(cfg, prov, console=Console(file=devnull))
    finally:
        plugins.reset_host()
    assert result.step == 2 and "logit-matching" in result.metrics
    parts = json.loads((tmp_path / "run/config.json").read_text())["parts"]
    assert parts["discriminator"] == "tiny-fcn" and parts["discriminator_options"] == {"width": 4, "depth": 1}
    assert parts["objective"] == "n+1" and parts["losses"] == {"labelmix": 10.0, "logit-matching": 1.0}
    assert parts["loss_options"]["logit-matching"] == {"power": 2}


def test_docs_quote_the_tested_code():
    """Every code block of docs/plugins.md marked ``<!-- file: PATH -->`` appears verbatim in PATH."""
    doc = (ROOT / "docs/plugins.md").read_text()
    blocks = re.findall(r"<!-- file: (\S+) -->\n```python\n(.*?)```", doc, flags=re.S)
    assert {p for p, _ in blocks} >= {"examples/gensynth-plugin-example/gensynth_example/losses.py",
                                      "examples/gensynth-plugin-example/gensynth_example/dataset.py",
                                      "examples/gensynth-plugin-example/gensynth_example/segmenter.py",
                                      "examples/gensynth-plugin-example/gensynth_example/__init__.py",
                                      "tests/test_example_plugin.py"}
    for path, code in blocks:
        assert code.strip() in (ROOT / path).read_text(), f"docs/plugins.md quotes {path} but the code differs"
