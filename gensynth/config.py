"""Typed run configuration (pydantic v2), layered with provenance.

Layering, lowest first: built-in defaults < model preset < dataset defaults (the dataset's own,
then the preset's per-dataset values, then the paper's if ``model.values=paper``) < YAML < CLI.
The resolved configuration records where every value came from.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gensynth.errors import ConfigError, suggest


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


SIZE_SYNTAX = "HxW (e.g. 256x512), or one number for a square"


def parse_size(value: Any, *, what: str = "size") -> tuple[int, int]:
    """One syntax for an image size everywhere (``--size``, ``--set data.size=...``, YAML, ``--resize``):
    ``"64x128"`` / ``"64X128"`` / ``"64,128"`` / ``[64, 128]`` -> (64, 128) as (H, W); ``"64"`` or ``64`` -> (64, 64).

    ValueError naming ``what`` and the accepted syntax for anything else, or a side under 8 pixels.
    """
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected {SIZE_SYNTAX}, got {value!r}")
    if isinstance(value, int):
        hw = (value, value)
    elif isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        hw = (int(value[0]), int(value[1]))
    elif isinstance(value, str):
        parts = [p.strip() for p in value.strip().lower().replace(",", "x").replace("*", "x").split("x")]
        if len(parts) == 1:
            parts = parts * 2
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"{what}: expected {SIZE_SYNTAX}, got {value!r}")
        hw = (int(parts[0]), int(parts[1]))
    else:
        raise ValueError(f"{what}: expected {SIZE_SYNTAX}, got {value!r}")
    if hw[0] < 8 or hw[1] < 8:
        raise ValueError(f"{what} must be at least 8x8 (H, W), got {hw[0]}x{hw[1]}")
    return hw


class ModelConfig(Section):
    preset: str = Field("oasis", description="named model preset (gensynth models list)")
    values: Literal["official", "paper"] = Field(
        "official", description="per-dataset defaults of the official code/scripts, or the paper's stated values")
    scale: Optional[str] = Field(
        None, description="model size: a scale of the preset (gensynth models describe NAME lists them; the built-in "
                          "presets have tiny, small and paper); default: the preset's scale for the dataset (demo: "
                          "tiny), else paper (the published widths and batch size)")
    generator: Optional[str] = Field(None, description="override the preset's generator")
    generator_options: dict[str, Any] = Field(default_factory=dict)
    discriminator: Optional[str] = Field(None, description="override the preset's discriminator")
    discriminator_options: dict[str, Any] = Field(default_factory=dict)
    objective: Optional[str] = Field(None, description="override the preset's adversarial objective")
    objective_options: dict[str, Any] = Field(default_factory=dict)
    losses: dict[str, float] = Field(default_factory=dict, description="loss term -> weight (0 disables)")
    requested_losses: list[str] = Field(
        default_factory=list, description="loss terms set in YAML or on the CLI (filled by resolve): these are never "
                                          "dropped when a swapped discriminator cannot serve them; it is an error")
    loss_options: dict[str, dict[str, Any]] = Field(default_factory=dict)


class DataConfig(Section):
    name: str = Field("demo", description="dataset name (gensynth datasets list)")
    root: Optional[str] = Field(None, description="shards (path, brace pattern, http(s)://, s3://, gs://, pipe:) "
                                                  "or the dataset's raw official layout")
    allow_pipe: bool = Field(False, description="allow a pipe: data.root to run its shell command; honoured only "
                                                "on the command line or in your own YAML, never from a checkpoint")
    split: str = "train"
    val_split: str = "val"
    size: Optional[tuple[int, int]] = Field(None, description="(H, W) training resolution; default: the dataset's")
    flip: bool = True
    num_workers: int = Field(2, ge=0)
    shuffle_buffer: int = Field(256, ge=0)
    cache_dir: Optional[str] = Field(None, description="where raw layouts are converted to shards once")
    demo_samples: int = Field(256, ge=1, description="number of samples of the procedural demo dataset")

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, v):
        return None if v is None else parse_size(v, what="data.size")


class OptimConfig(Section):
    lr_g: float = Field(1e-4, gt=0)
    lr_d: float = Field(4e-4, gt=0)
    beta1: float = Field(0.0, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    schedule: Literal["constant", "linear-decay"] = "constant"
    decay_start: float = Field(0.5, ge=0, le=1, description="fraction of training after which linear decay starts")
    grad_clip: Optional[float] = Field(None, gt=0)
    implementation: Literal["auto", "fused", "foreach", "for-loop"] = Field(
        "auto", description="Adam kernels: auto = fused on CPU and CUDA (same results, see gensynth.train.speed)")


class TrainerConfig(Section):
    steps: Optional[int] = Field(None, ge=1, description="total optimisation steps (overrides epochs)")
    epochs: float = Field(200, gt=0, description="epochs over the training split when steps is not set")
    batch_size: int = Field(32, ge=1, description="global batch size, divided among ranks")
    micro_batch_size: Optional[int] = Field(None, ge=1, description="per-rank forward size; accumulate the rest")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    seed: int = 42
    ema_decay: Optional[float] = Field(0.9999, ge=0, lt=1, description="None disables the EMA generator")
    ema_warmup: bool = Field(True, description="decay min(decay, (1+t)/(10+t)) so short runs do not lag; the official "
                                               "code uses a constant decay (--official-recipe)")
    stable_start: bool = Field(True, description="spectral-norm weights of D start at unit scale with converged power "
                                                 "iteration (same function), D's learning rate warms up over "
                                                 "stable_start_steps, gradients are clipped at stable_start_clip; "
                                                 "keeps D from dying (gensynth.train.stable_start); false = the "
                                                 "official recipe")
    stable_start_steps: int = Field(100, ge=0, description="steps of D's linear learning-rate warm-up under "
                                                           "stable_start")
    stable_start_clip: Optional[float] = Field(
        1.0, gt=0, description="under stable_start, and unless optim.grad_clip is set: the gradient-norm clip of G "
                               "and D at every step (a spike then cannot fill Adam's second moment and freeze D)")
    preflight: bool = Field(True, description="before step 1, measure a training step of copies of the models at "
                                              "batch 1 and 4 and print the estimated time per step and peak memory "
                                              "(a warning when it exceeds the machine); the run itself is untouched")
    bn_refresh_batches: int = Field(50, ge=0, description="batches to re-estimate the EMA generator's BN stats")
    log_every: int = Field(50, ge=1)
    sample_every: int = Field(500, ge=1)
    checkpoint_every: int = Field(1000, ge=1)
    keep_last: int = Field(3, ge=1)
    run_dir: Optional[str] = Field(None, description="default runs/<preset>-<dataset>")
    deterministic: bool = False
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1 ...")
    init_from: Optional[str] = Field(None, description="checkpoint to initialise from (fine-tuning)")
    compile: bool = False
    compile_backend: str = Field("inductor", description="torch.compile backend when trainer.compile is on")
    channels_last: Union[bool, Literal["auto", "by_shape"]] = Field(
        "auto", description="memory format: true = NHWC models and batches; false = NCHW throughout; by_shape = "
                            "NCHW weights, each convolution reading NHWC when its map is large for its channels, and "
                            "weight-bound CPU convolutions run as matrix products (gensynth.nn.gemm_conv); "
                            "auto = true on CUDA, by_shape on CPU")
    merge_d_calls: bool = Field(True, description="judge the D step's fake, real and LabelMix images in one "
                                                   "discriminator call when D is batch-independent (same results up "
                                                   "to rounding: each chunk keeps its own spectral-norm iteration)")
    tf32: bool = Field(False, description="CUDA only: TF32 matmuls and convolutions (faster on Ampere+, not fp32 "
                                          "numerics); set explicitly either way")


class EvalConfig(Section):
    """Evaluation (gensynth evaluate / compare, and every ``every`` steps during training); docs/evaluation.md."""

    every: int = Field(0, ge=0, description="evaluate every N steps (0: never during training)")
    metrics: Optional[list[str]] = Field(
        None, description="metrics to compute (fid, kid, prec-recall, miou, ms-ssim, lpips, color-texture); "
                          "unset: the default set fid, color-texture, whose metrics that lack a weights file or "
                          "package are skipped with a warning")
    on_missing: Literal["error", "skip"] = Field(
        "error", description="a metric named in eval.metrics whose weights file, package or segmenter is missing: "
                             "error before training starts, or skip it with a warning")
    fid_weights: Optional[str] = Field(None, description="pt_inception-2015-12-05-6726825d.pth path (file or directory)")
    fid_backend: Literal["pytorch-fid"] = Field("pytorch-fid", description="FID feature network (pytorch-fid's "
                                                                           "InceptionV3, the OASIS paper's)")
    num_samples: Optional[int] = Field(None, ge=1, description="limit evaluation to N label maps")
    track: str = "fid"
    track_mode: Literal["min", "max"] = "min"
    segmenter: Optional[str] = None
    segmenter_options: dict[str, Any] = Field(default_factory=dict)
    diversity_samples: int = Field(20, ge=2, description="samples per label map for MS-SSIM/LPIPS diversity (paper: 20)")
    lpips_net: Literal["alex", "vgg"] = Field("alex", description="LPIPS backbone")
    lpips_weights: Optional[str] = Field(None, description="the LPIPS backbone's torchvision weights file, or a "
                                                           "directory holding it (default: the torch hub cache)")
    stats_dir: Optional[str] = Field(None, description="cache of real-image FID statistics (default ~/.cache/gensynth)")


class HealthConfig(Section):
    """The training-health monitor (gensynth.train.health): what counts as a collapsed discriminator,
    divergence, or a generator that ignores its labels or noise, and what to do about it."""

    enabled: bool = Field(True, description="watch the run's health (one host synchronisation per check)")
    every: int = Field(10, ge=1, description="steps between checks")
    action: Literal["warn", "stop"] = Field(
        "warn", description="warn: print and log the finding and go on; stop: save a checkpoint, then stop with "
                            "an error naming the problem")
    collapse_spread: float = Field(0.01, gt=0, description="D is collapsed when its logits vary less than this "
                                                           "(std over pixels, images, real and fake) ...")
    patience: int = Field(50, ge=1, description="... for this many consecutive steps (also for 'ignores labels')")
    weight_growth: float = Field(1e4, gt=1, description="diverging: a model's parameter RMS (or a loss) grew by this "
                                                        "factor since training (or this resumption) started")
    label_ratio: float = Field(0.1, gt=0, description="G ignores its labels when the classes explain less than this "
                                                      "fraction of the colour variance they explain in real images")
    noise_ratio: float = Field(0.01, gt=0, description="G ignores its noise when two samples differ by less than this "
                                                       "fraction of the images' own variation")
    generator_grace: int = Field(500, ge=0, description="steps before the generator's label/noise use is judged")


class RunConfig(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)

    @model_validator(mode="after")
    def _micro_batch(self):
        mb = self.trainer.micro_batch_size
        if mb is not None and mb > self.trainer.batch_size:
            raise ValueError(f"trainer.micro_batch_size ({mb}) exceeds trainer.batch_size ({self.trainer.batch_size})")
        return self


# ---------------------------------------------------------------------------------------------
# dotted keys, layers and provenance
# ---------------------------------------------------------------------------------------------
def _leaf_paths(model_cls: type[BaseModel], prefix: str = "") -> list[str]:
    paths = []
    for name, info in model_cls.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            paths += _leaf_paths(ann, f"{prefix}{name}.")
        else:
            paths.append(f"{prefix}{name}")
    return paths


ALL_KEYS = _leaf_paths(RunConfig)
_DICT_KEYS = {k for k in ALL_KEYS if k.endswith(("_options", "losses"))}


def check_key(key: str) -> None:
    if key in ALL_KEYS:
        return
    for d in _DICT_KEYS:  # model.losses.labelmix, model.generator_options.channels
        if key.startswith(d + "."):
            return
    known_section = any(k.startswith(key.partition(".")[0] + ".") for k in ALL_KEYS)
    raise ConfigError(f"unknown configuration key {key!r}.{suggest_key(key)}"
                      + ("" if known_section else f" Known keys: {', '.join(ALL_KEYS)}"))


def suggest_key(key: str) -> str:
    """`` Did you mean 'eval.every'?`` for a mistyped key: the closest key of the same section first (``eval.bogus``
    -> a key of ``eval``), else the closest key anywhere; ``section.`` keys list that section's keys."""
    section, _, leaf = key.partition(".")
    same = [k for k in ALL_KEYS if k.startswith(section + ".")]
    if same:
        hint = suggest(leaf, [k.split(".", 1)[1] for k in same])
        if hint:
            return hint.replace("'", f"'{section}.", 1)
        return f" Keys of section {section!r}: {', '.join(k.split('.', 1)[1] for k in same)}."
    return suggest(key, ALL_KEYS)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; dict-valued option fields are flattened one level deeper."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and (key not in ALL_KEYS or key in _DICT_KEYS) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def parse_set(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``['trainer.steps=10', 'model.losses.labelmix=5']`` -> dotted dict (values parsed as YAML)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        check_key(key)
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {exc}") from exc
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"configuration file {str(path)!r} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration file {str(path)!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"configuration file {str(path)!r} must hold a mapping of sections, got {type(data).__name__}")
    flat = flatten(data)
    for k in flat:
        try:
            check_key(k)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return flat


def format_validation_error(exc: ValidationError, values: dict[str, Any] | None = None,
                            provenance: dict[str, str] | None = None) -> str:
    lines = ["invalid configuration:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        value = err.get("input")
        origin = f" (from {provenance[loc]})" if provenance and loc in provenance else ""
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown key.{suggest(loc, ALL_KEYS)}"
        lines.append(f"  {loc or '(root)'} = {value!r}{origin}: {msg}")
    return "\n".join(lines)


def build_config(layers: list[tuple[str, dict[str, Any]]]) -> tuple[RunConfig, dict[str, str]]:
    """Merge (source, dotted-dict) layers in order and validate. Returns (config, provenance)."""
    tree: dict[str, Any] = {}
    provenance: dict[str, str] = {}
    for source, flat in layers:
        for key, value in flat.items():
            check_key(key)
            _set_dotted(tree, key, copy.deepcopy(value))
            provenance[key] = source
    try:
        cfg = RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, provenance=provenance)) from None
    full = {k: "default" for k in flatten(cfg.model_dump())}
    full.update(provenance)
    from gensynth.trust import check_command_sources

    check_command_sources(cfg, full)
    return cfg, full


def resolve(cli: dict[str, Any] | None = None, yaml_path: str | None = None,
            host=None) -> tuple[RunConfig, dict[str, str]]:
    """Resolve the run configuration from the registries, a YAML file and CLI overrides."""
    from gensynth.plugins import get_host

    host = host or get_host()
    cli = dict(cli or {})
    for k in cli:
        check_key(k)
    from_yaml = load_yaml(yaml_path) if yaml_path else {}
    user = {**from_yaml, **cli}
    preset_name = user.get("model.preset", ModelConfig.model_fields["preset"].default)
    data_name = user.get("data.name", DataConfig.model_fields["name"].default)
    values = user.get("model.values", "official")
    preset = host.registry("models").get(preset_name)
    dataset = host.registry("datasets").get(data_name)

    layers: list[tuple[str, dict[str, Any]]] = [(f"preset {preset_name}", dict(preset.defaults))]
    layers.append((f"dataset {data_name}", dict(dataset.default_options())))
    if data_name in preset.dataset_defaults:
        layers.append((f"preset {preset_name} for {data_name} (official scripts)", dict(preset.dataset_defaults[data_name])))
    if values == "paper" and data_name in preset.paper_defaults:
        layers.append((f"preset {preset_name} for {data_name} (paper)", dict(preset.paper_defaults[data_name])))
    scale = user.get("model.scale") or preset.default_scales.get(data_name, "paper")
    layers.append((f"scale {scale} of preset {preset_name}", {**preset.scale_overrides(scale), "model.scale": scale}))
    layers = _drop_swapped_part_options(layers, preset, user)
    follow = _generator_size_follows(host, preset, user)
    if follow:
        layers.append(follow)
    if from_yaml:
        layers.append((f"yaml {yaml_path}", from_yaml))
    if cli:
        layers.append(("cli", cli))
    requested = sorted({k.split(".", 2)[2] for k in user if k.startswith("model.losses.")}
                       | set((user.get("model.losses") or {}).keys()) | set(user.get("model.requested_losses") or []))
    if requested:
        layers.append(("user-set loss terms", {"model.requested_losses": requested}))
    return build_config(layers)


def _generator_size_follows(host, preset, user: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """A generator whose layout is fixed at build time by an option ``size`` (the Linear head of SPADE's and
    CC-FPSE's VAE) follows the training size the user chose (``--size``): a layer setting
    ``model.generator_options.size`` to it, unless the user set that option too."""
    if user.get("data.size") is None:
        return None
    name = user.get("model.generator") or preset.generator.name
    flat, nested = "model.generator_options.size", f"model.generator_options.{name}.size"
    if flat in user or nested in user or "size" in (user.get("model.generator_options") or {}):
        return None
    reg = host.registry("generators")
    options = reg.entry(name).options if name in reg else None
    if options is None or "size" not in getattr(options, "model_fields", {}):
        return None
    return ("the generator's size follows data.size", {flat: list(DataConfig.model_validate(
        {"size": user["data.size"]}).size)})


def _drop_swapped_part_options(layers: list[tuple[str, dict[str, Any]]], preset,
                               user: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Preset and dataset layers tune the preset's own parts; when the user swaps a part (``--discriminator
    NAME``), their ``model.<part>_options.*`` values would not fit the new part, so they are left out."""
    swapped = [part for part in ("generator", "discriminator", "objective")
               if user.get(f"model.{part}") not in (None, getattr(preset, part).name)]
    if not swapped:
        return layers
    prefixes = tuple(f"model.{part}_options" for part in swapped)
    def keep(key: str) -> bool:
        return not any(key == p or key.startswith(p + ".") for p in prefixes)

    return [(source, {k: v for k, v in flat.items() if keep(k)}) for source, flat in layers]


def dump_resolved(cfg: RunConfig, provenance: dict[str, str], versions: dict[str, str],
                  parts: dict[str, Any] | None = None) -> dict[str, Any]:
    """The document saved with every run: enough to repeat it. ``parts``: the resolved parts
    (:func:`gensynth.build.parts_summary`: the objective and loss terms actually used, with their options)."""
    doc = {"config": cfg.model_dump(mode="json"), "provenance": provenance, "plugins": versions}
    if parts is not None:
        doc["parts"] = parts
    return doc
