"""The training configuration: a typed, validated dataclass built from a preset, an
optional JSON or TOML file and `key=value` overrides, in that order.

Unknown keys, wrong types, out-of-range values and options that contradict each other
raise UserError with the reason, before anything is trained.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import tomllib
from dataclasses import dataclass, fields

from pipeline.errors import UserError
from pipeline.files import write_json
from pipeline.models import DISCRIMINATOR_PRESETS, OUTPUT_FORMS, REFINER_PRESETS

CONFIG_FILE = "config.json"
OPTIMIZERS = ("adam", "sgd")
PSI_CHOICES = ("identity", "channel_mean", "blur", "normalised")


@dataclass(frozen=True)
class TrainConfig:
    # Networks: a name from pipeline.models' refiner and discriminator presets.
    model: str = "digits"
    # Schedule: each step is one of R pre-training, D pre-training or an adversarial
    # iteration (k_g refiner updates, then k_d discriminator updates). k_g=0: the refiner
    # stays as pre-trained (about the identity), so only the fitted curves change images.
    pretrain_refiner_steps: int = 60
    pretrain_discriminator_steps: int = 30
    iterations: int = 300
    k_g: int = 2
    k_d: int = 1
    batch_size: int = 32
    optimizer: str = "adam"
    lr_refiner: float = 2e-4
    lr_discriminator: float = 2e-4
    momentum: float = 0.0  # SGD only
    adam_beta1: float = 0.5  # Adam only
    adam_beta2: float = 0.999  # Adam only
    # Self-regularisation: lambda * L1(psi(refined), psi(synthetic)), mean over pixels.
    self_reg_weight: float = 0.5
    psi: str = "identity"
    # History of refined images (B); D sees b/2 current + b/2 from it once it is full.
    history_size: int = 1600
    seed: int = 0
    # Stabilisers from "Improved Techniques for Training GANs"; all off by default.
    feature_matching: bool = False
    minibatch_discrimination: bool = False
    minibatch_kernels: int = 8
    historical_averaging: float = 0.0  # weight of ||theta - mean past theta||^2; 0 = off
    label_smoothing: float = 0.0  # the real target becomes 1 - this; refined stays 1
    virtual_batch_norm: bool = False
    # Checkpoint selection (pipeline.training.selection): the share of synthetic and real
    # images held out for scoring, how often candidates are scored, the label the
    # refiner must keep ("" = no label checks) and how well it must keep it.
    held_out: float = 0.2
    select_every: int = 50
    label: str = "class"
    min_label_consistency: float = 0.9
    # A candidate's two-sample accuracy must be this much below the raw synthetic
    # images' (less is within the test's noise on a few hundred held-out images).
    realism_margin: float = 0.03
    # Options beyond the paper. The label-consistency loss (CyCADA's semantic
    # consistency): weight of the task network's loss on refined images against the
    # simulator's labels; 0 = off.
    label_consistency_weight: float = 0.0
    # When a run is refused with candidates that changed the labels, train again: with
    # this loss at 1, then (refused for the labels again) with the fitted curves alone
    # (pipeline.training.job.RETRIES).
    label_loss_retry: bool = True
    # The refiner's output form (pipeline.models.Refiner): "logit" or "residual".
    refiner_output: str = "logit"
    # A learned smooth deformation before the appearance refiner, for simulators whose
    # shapes are slightly off: its largest displacement in pixels (0 = off; keep it off
    # where geometry is the label, as for gaze), and the weight of its size and
    # roughness penalty.
    deform_pixels: float = 0.0
    deform_weight: float = 0.02
    # A tone curve fitted to the real images (pipeline.training.tone) before the refiner:
    # global changes of tone (grey paper, faded ink, polarity) without an L1 cost.
    tone_map: bool = False
    # A stroke-width curve fitted to the real images (pipeline.training.tone) before the
    # tone curve: a broader or finer pen than the simulator's, without an L1 cost.
    stroke_width: bool = False
    # A size curve fitted to the real images (pipeline.training.tone) before the stroke
    # width: each image zoomed about its centre of ink so that the glyphs' sizes match
    # the real ones. Keep it off where position or size is the label (gaze).
    glyph_size: bool = False
    # Sensor grain fitted to the real images' noise (pipeline.training.tone), added after
    # the tone curve; none when the real images are as clean as the synthetic ones.
    grain: bool = False
    # Uneven lighting of the paper fitted to the real images (pipeline.training.tone),
    # after the tone curve: each synthetic page lit as one real page is; none when the
    # real paper is evenly lit.
    shading: bool = False
    # An optical blur fitted to the real images' edges (pipeline.training.tone), after the
    # stroke width and before the tone curve; none when they are as sharp as the synthetic.
    blur: bool = False
    # A noise channel into the refiner (pipeline.models.image_noise) for real images with
    # sensor grain.
    refiner_noise: bool = False
    # Spectral normalisation of D's hidden convolutions.
    spectral_norm: bool = False
    # Outputs.
    log_every: int = 10
    sample_every: int = 100
    checkpoint_every: int = 100

    @property
    def total_steps(self) -> int:
        return self.pretrain_refiner_steps + self.pretrain_discriminator_steps + self.iterations

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict] = {
    # CPU demo on 28x28 digits: about 2-3 min through Ray Train on two idle cores.
    # With 30 pre-training steps a patch D barely separates font digits from MNIST, and
    # a refiner updated twice per D step then fools it at once by hollowing or erasing
    # bold strokes. A longer D pre-training, two D updates per refiner update, a 5x
    # faster D and lambda 1.0 keep D ahead (loss_d 0.8-1.2) and the digits intact.
    # On the simulator's binary rendering this turns hard-edged glyphs into soft
    # pen-like strokes (two-sample accuracy 100 % -> about 82 %); on its MNIST-tuned
    # anti-aliased rendering it changes little: what is left there is font shape.
    "digits": {
        "pretrain_discriminator_steps": 200,
        "iterations": 300,
        "k_g": 1,
        "k_d": 2,
        "lr_refiner": 1e-4,
        "lr_discriminator": 1e-3,
        "self_reg_weight": 1.0,
        # On a thin-stroke domain the good refiners lasted about 50 steps before D
        # won and the refiner collapsed: score often enough to catch them.
        "select_every": 25,
        "tone_map": True,
        "stroke_width": True,
        "grain": True,
        "blur": True,
        "shading": True,
    },
    # CPU demo on 35x55 eyes.
    "eyes": {"model": "eyes", "label": "gaze"},
    # The paper's values (Shrivastava et al. 2017, section 4).
    "paper": {
        "model": "eye",
        "optimizer": "sgd",
        "lr_refiner": 0.001,
        "lr_discriminator": 0.001,
        "batch_size": 512,
        "pretrain_refiner_steps": 1000,
        "pretrain_discriminator_steps": 200,
        "k_g": 2,
        "k_d": 1,
        "iterations": 10000,
        "history_size": 25600,
        "sample_every": 500,
        "checkpoint_every": 500,
        "log_every": 50,
        "select_every": 500,
        "label": "gaze",
    },
}

_FIELDS = {f.name: f for f in fields(TrainConfig)}
_TYPES = {"int": int, "float": float, "bool": bool, "str": str}


def _coerce(name: str, value):
    kind = _TYPES[_FIELDS[name].type]
    if isinstance(value, str) and kind is not str:
        text = value.strip().lower()
        if kind is bool:
            if text in ("true", "yes", "on", "1"):
                return True
            if text in ("false", "no", "off", "0"):
                return False
            raise UserError(f"option {name!r}: {value!r} is not a boolean (true/false)")
        try:
            return kind(text)
        except ValueError:
            raise UserError(f"option {name!r}: {value!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is bool:
        if not isinstance(value, bool):
            raise UserError(f"option {name!r}: {value!r} is not a boolean (true/false)")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"option {name!r}: {value!r} is not an integer")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"option {name!r}: {value!r} is not a number")
        return float(value)
    if not isinstance(value, str):
        raise UserError(f"option {name!r}: {value!r} is not a string")
    return value


def _unknown(name: str, source: str) -> UserError:
    close = difflib.get_close_matches(name, list(_FIELDS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UserError(f"unknown option {name!r} in {source}{hint}; known options: {', '.join(_FIELDS)}")


def validate(config: TrainConfig) -> TrainConfig:
    """Raise UserError naming the first problem; return the config unchanged otherwise."""
    c = config
    if c.model not in REFINER_PRESETS or c.model not in DISCRIMINATOR_PRESETS:
        models = sorted(set(REFINER_PRESETS) & set(DISCRIMINATOR_PRESETS))
        raise UserError(f"model {c.model!r} is not a network preset; choose from {models}")
    for name in ("pretrain_refiner_steps", "pretrain_discriminator_steps", "iterations", "k_g"):
        if getattr(c, name) < 0:
            raise UserError(f"{name} must be >= 0, got {getattr(c, name)}")
    for name in ("k_d", "log_every", "sample_every", "checkpoint_every", "minibatch_kernels", "select_every"):
        if getattr(c, name) < 1:
            raise UserError(f"{name} must be >= 1, got {getattr(c, name)}")
    if c.total_steps < 1:
        raise UserError("nothing to train: pre-training steps and iterations are all 0")
    if c.batch_size < 2 or c.batch_size % 2:
        raise UserError(f"batch_size must be even and >= 2 (D sees b/2 current + b/2 history), got {c.batch_size}")
    if c.history_size < c.batch_size // 2:
        raise UserError(
            f"history_size ({c.history_size}) is smaller than batch_size/2 ({c.batch_size // 2}): "
            "the history could never supply half a minibatch"
        )
    if c.optimizer not in OPTIMIZERS:
        raise UserError(f"optimizer must be one of {OPTIMIZERS}, got {c.optimizer!r}")
    if c.lr_refiner <= 0 or c.lr_discriminator <= 0:
        raise UserError("learning rates must be > 0")
    if c.optimizer == "adam" and c.momentum != 0.0:
        raise UserError("momentum is an SGD option but optimizer is 'adam' (set optimizer=sgd or drop momentum)")
    default = TrainConfig()
    if c.optimizer == "sgd" and (c.adam_beta1, c.adam_beta2) != (default.adam_beta1, default.adam_beta2):
        raise UserError("adam_beta1/adam_beta2 are Adam options but optimizer is 'sgd'")
    if not 0.0 <= c.momentum < 1.0:
        raise UserError(f"momentum must be in [0, 1), got {c.momentum}")
    if not (0.0 <= c.adam_beta1 < 1.0 and 0.0 <= c.adam_beta2 < 1.0):
        raise UserError("adam_beta1 and adam_beta2 must be in [0, 1)")
    if c.self_reg_weight < 0:
        raise UserError(f"self_reg_weight must be >= 0, got {c.self_reg_weight}")
    if c.psi not in PSI_CHOICES:
        raise UserError(f"psi must be one of {PSI_CHOICES}, got {c.psi!r}")
    if c.historical_averaging < 0:
        raise UserError(f"historical_averaging must be >= 0, got {c.historical_averaging}")
    if not 0.0 <= c.label_smoothing < 0.5:
        raise UserError(f"label_smoothing must be in [0, 0.5) (it softens only the real target), got {c.label_smoothing}")
    if c.minibatch_kernels != default.minibatch_kernels and not c.minibatch_discrimination:
        raise UserError("minibatch_kernels is set but minibatch_discrimination is off")
    if not 0.0 < c.held_out < 0.5:
        raise UserError(f"held_out must be in (0, 0.5), got {c.held_out}")
    if not -1.0 <= c.realism_margin < 0.5:
        raise UserError(f"realism_margin must be in [-1, 0.5), got {c.realism_margin}")
    if not 0.0 <= c.min_label_consistency <= 1.0:
        raise UserError(f"min_label_consistency must be in [0, 1], got {c.min_label_consistency}")
    if c.label_consistency_weight < 0:
        raise UserError(f"label_consistency_weight must be >= 0, got {c.label_consistency_weight}")
    if c.refiner_output not in OUTPUT_FORMS:
        raise UserError(f"refiner_output must be one of {OUTPUT_FORMS}, got {c.refiner_output!r}")
    if not 0.0 <= c.deform_pixels <= 8.0:
        raise UserError(f"deform_pixels must be in [0, 8], got {c.deform_pixels}")
    if c.deform_weight < 0:
        raise UserError(f"deform_weight must be >= 0, got {c.deform_weight}")
    if c.label_consistency_weight > 0 and not c.label:
        raise UserError("label_consistency_weight needs a label: set label=NAME")
    if c.self_reg_weight == 0 and c.pretrain_refiner_steps > 0:
        raise UserError("refiner pre-training uses only the self-regularisation loss, but self_reg_weight is 0")
    return config


def read_config_file(path: str) -> dict:
    """Options from a JSON (`.json`) or TOML (`.toml`) file."""
    if not os.path.isfile(path):
        raise UserError(f"config file not found: {path}")
    try:
        if path.endswith(".toml"):
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        elif path.endswith(".json"):
            with open(path) as handle:
                data = json.load(handle)
        else:
            raise UserError(f"config file {path} must end in .json or .toml")
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {path} does not parse: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a table/object of options")
    return data


def parse_overrides(pairs) -> dict:
    """`["key=value", ...]` from the command line to a dict (values stay strings)."""
    out = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def make_config(preset: str = "digits", config_file: str | None = None, overrides: dict | None = None) -> TrainConfig:
    """Preset values, then the file's, then the overrides; validated."""
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    values = dict(PRESETS[preset])
    layers = []
    if config_file:
        data = read_config_file(config_file)
        named = data.pop("preset", preset)
        if named != preset:
            raise UserError(
                f"contradictory options: the preset is {preset!r} but {config_file} says preset = {named!r}"
            )
        layers.append((data, config_file))
    layers.append((dict(overrides or {}), "the overrides"))
    for layer, source in layers:
        for name, value in layer.items():
            if name not in _FIELDS:
                raise _unknown(name, source)
            values[name] = _coerce(name, value)
    return validate(TrainConfig(**values))


def config_from_dict(data: dict) -> TrainConfig:
    """A config saved by `save_config` (or carried in a checkpoint)."""
    data = {k: v for k, v in data.items() if k != "preset"}
    for name in data:
        if name not in _FIELDS:
            raise _unknown(name, "the saved config")
    return validate(TrainConfig(**{name: _coerce(name, value) for name, value in data.items()}))


def save_config(run_dir: str, config: TrainConfig, preset: str) -> str:
    """Write RUN_DIR/config.json; a run dir already holding a different config is refused,
    so re-running the same command resumes and a changed command cannot mix two runs."""
    path = os.path.join(run_dir, CONFIG_FILE)
    data = {"preset": preset, **config.to_dict()}
    if os.path.exists(path):
        with open(path) as handle:
            old = json.load(handle)
        if old != data:
            changed = sorted(k for k in set(old) | set(data) if old.get(k) != data.get(k))
            raise UserError(
                f"{run_dir} already holds a run with different options ({', '.join(changed)}); "
                "re-run with the same options to resume it, or choose another --out"
            )
        return path
    os.makedirs(run_dir, exist_ok=True)
    write_json(path, data)
    return path
