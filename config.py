"""Settings and profiles: every training and evaluation setting declared once (``TrainConfig``,
``EvalConfig``: default and help text per field), and one YAML file per way of running the study (``profiles/study.yaml`` for the real
database, ``profiles/demo-cpu.yaml`` for the synthetic demo on a laptop CPU), read by notebooks 2
and 3 (parameter ``profile``), ``train.py`` (``--profile``) and the Makefile, so a profile is
written once.

A profile holds ``archs``, ``split`` (``split_dataset.py``'s ``val``/``test``), ``train`` (any
``training.TrainConfig`` field, plus ``weights``) and ``evaluate`` (any
``evaluation.EvalConfig`` field); a value is one for every architecture or a mapping per
architecture. Explicit notebook parameters and command-line flags (anything not None) override
it. Without a profile the data decides: the demo's when ``data_dir`` holds the synthetic demo,
the study's otherwise, so each notebook run top to bottom with no parameter changed does what
``make run`` did on that data.

The settings' fields are the one declaration: ``add_flags`` makes ``train.py``'s and
``evaluate.py``'s flags of them (``--image-size``, ``--no-amp``, ...), ``given`` collects what a
command line or notebook 2 / 3 set (the notebooks' parameter cells name the same fields, which
papermill needs; a test checks that they do), and a profile's keys are checked against them.
``CACHE_DIR`` is the one default decoded-image cache; ``cache_folder`` reads a user's value
(None: the default, "none": decode into RAM).

CLI (for the Makefile): ``python config.py PROFILE --split-args`` prints ``--val N --test N``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import sys
import types
import typing
from pathlib import Path

import yaml

PROFILE_DIR = Path(__file__).resolve().with_name("profiles")
DEMO, STUDY = "demo-cpu", "study"
SECTIONS = ("archs", "split", "train", "evaluate")
CACHE_DIR = ".cache/decoded"  # decoded images, content digests and fingerprints, across runs


def cache_folder(value: str | os.PathLike | None) -> str | None:
    """A user's cache setting: None -> ``CACHE_DIR``; "none" -> None (decode into RAM each run);
    anything else is the folder."""
    if value is None:
        return CACHE_DIR
    return None if str(value).lower() == "none" else str(value)


# --------------------------------------------------------------------------- the settings
def setting(default, help: str, per_arch: bool = False, flags: tuple[str, ...] = (),  # noqa: A002
            parse=None):
    """A settings field: its default and help text (the flag's), whether a command line may
    give one value per architecture (``--epochs vgg16=11,resnet18=8``; a profile always may),
    other spellings of its flag, and a parser for the flag's text."""
    return dataclasses.field(default=default, metadata={
        "help": help, "per_arch": per_arch, "flags": flags, "parse": parse})


@dataclasses.dataclass
class TrainConfig:
    """Every training setting; saved into each checkpoint (``dataclasses.asdict``)."""
    epochs: int = setting(25, "upper bound on the epochs; early stopping usually ends sooner",
                          per_arch=True)
    batch_size: int = setting(32, "the GLOBAL batch (all processes together under torchrun)")
    lr: float | None = setting(
        None, "Adam learning rate (unset: 3e-5 with pretrained weights, the study's; from random "
              "init the family's, 1e-3, VGG 5e-5); never rescaled by the number of processes",
        per_arch=True)
    weight_decay: float = setting(0.0, "Adam weight decay", per_arch=True)
    patience: int = setting(5, "epochs without a validation-loss improvement before stopping",
                            per_arch=True)
    min_delta: float = setting(1e-3, "how much the validation loss must fall to count as an "
                                     "improvement", per_arch=True)
    image_size: int = setting(224, "side of the square input, in pixels", per_arch=True)
    num_workers: int = setting(2, "loader worker processes (per process under torchrun)")
    seed: int = setting(42, "model initialisation, sampling and augmentation (the split has its "
                            "own, in split_dataset.py)")
    amp: bool = setting(True, "mixed precision: bf16 autocast on CUDA (fp16 + GradScaler where "
                              "bf16 is missing) and on CPUs with native bf16 (AVX512-BF16/AMX) "
                              "where a timed probe of the model finds it faster; else fp32")
    channels_last: bool = setting(True, "channels-last tensors on CUDA and CPU (faster "
                                        "oneDNN/cuDNN convolutions)")
    deterministic: bool = setting(False, "deterministic kernels (slower on GPU)")
    compile: bool = setting(False, "torch.compile the model for training (CUDA; minutes to "
                                   "warm up, worth it for long runs)")
    weights: str | None = setting(None, '"imagenet" (ImageNet weights from $TORCH_HOME\'s cache: '
                                        'the study), "none" (random init), "auto" (ImageNet if '
                                        'cached) or a .pth file')
    max_per_class: int | None = setting(None, "cap on training images per class (quick runs)")
    class_weight: str | None = setting(
        None, '"balanced": each training image\'s loss weighted by n / (classes x its class\'s '
              'count) over the training images drawn (after max_per_class), so a small class '
              'counts as much as a large one; unset or "none": unweighted (the study)',
        per_arch=True)
    schedule: str = setting("cosine", '"cosine" (to lr/100 over the epochs) or "constant"',
                            per_arch=True)
    warmup_epochs: int = setting(0, "epochs of linear learning-rate warm-up before the schedule",
                                 per_arch=True)
    augment: bool = setting(True, "on-device augmentation of training batches (rotation, shift, "
                                  "scale, exposure)", per_arch=True)
    dropout: float | None = setting(
        None, "dropout probability of the classifier, for the families that have one (VGG, "
              "AlexNet, EfficientNet, MobileNet, ViT, Swin, ...); unset: the family's own (VGG 0.5)",
        per_arch=True)
    freeze_bn: bool = setting(False, "batch norm in eval mode while training (frozen running "
                                     "statistics)")
    sync_bn: bool = setting(False, "SyncBatchNorm across processes under torchrun on CUDA")
    checkpoint_every: float = setting(
        120.0, "seconds of training between writes of the best weights and the resumable state "
               "(a kill loses at most about this much; 0: after every epoch); the last epoch "
               "always writes both, and the history gets its row after every epoch")

    def resolved_lr(self, arch: str) -> float:
        """``lr``, or the default for ``arch`` with or without pretrained ``weights``."""
        if self.lr is not None:
            return self.lr
        import networks  # noqa: PLC0415  (torch: only once a model is trained)
        return networks.default_lr(arch, pretrained=self.weights is not None)


def cam_layers_arg(text: str | None) -> dict | str | None:
    """A command line's ``LAYER`` (every model) or ``ARCH=LAYER,ARCH=LAYER`` (per architecture)."""
    if not text or "=" not in text:
        return text
    return dict(part.split("=", 1) for part in text.split(","))


def _cam_method(text: str) -> str:
    import grad_cam  # noqa: PLC0415  (torch: only when the flag is given)
    if text not in grad_cam.METHODS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(grad_cam.METHODS)}, "
                                         f"got {text!r}")
    return text


@dataclasses.dataclass
class EvalConfig:
    """Every evaluation setting (notebook 3's parameters, ``evaluate.py``'s flags)."""
    batch_size: int = setting(64, "images per forward pass")
    num_workers: int = setting(2, "loader worker processes")
    cam_method: str = setting("gradcam", "class activation maps: gradcam, gradcam++ or hirescam",
                              flags=("--cam",), parse=_cam_method)
    cam_layers: dict | str | None = setting(
        None, "Grad-CAM target layer: LAYER for every model, or ARCH=LAYER,... (unset: each "
              "model's last convolutional block, the study's layer)",
        flags=("--cam-layer",), parse=cam_layers_arg)
    pointing_margin: float = setting(15 / 299, "pointing-game tolerance as a fraction of the "
                                               "image side (the original game's 15 px at 299 px)")
    cam_per_class: int = setting(2, "test images per class in the Grad-CAM comparison figure")
    cam_max_wrong: int = setting(8, "misclassified images in the second Grad-CAM figure")
    lung_margin: float = setting(0.03, "shortcut audit: lung masks grown by this fraction of the "
                                       "image side")
    audit_gallery: int = setting(6, "images per model whose maps sit most outside the lungs")
    n_boot: int = setting(1000, "bootstrap resamples for the confidence intervals")
    seed: int = setting(42, "the bootstrap's seed")
    cache_dir: str | None = setting(CACHE_DIR, 'decoded images and content digests kept here '
                                               'across runs ("none": decode into RAM)')

    def __post_init__(self):
        if self.cache_dir is not None and str(self.cache_dir).lower() == "none":
            self.cache_dir = None


def per_arch_arg(kind):
    """argparse type: ``VALUE`` or ``arch=VALUE,arch=VALUE`` (a dict, see ``per_arch``)."""

    def parse(text: str):
        if "=" not in text:
            return kind(text)
        import networks  # noqa: PLC0415  (torch: only for per-architecture values)
        out = {}
        for part in text.split(","):
            arch, _, value = part.partition("=")
            try:
                networks.family(arch.strip())
            except ValueError as e:
                raise argparse.ArgumentTypeError(f"in {text!r}: {e}") from None
            out[arch.strip()] = kind(value)
        return out

    parse.__name__ = kind.__name__
    return parse


def on_off(text: str) -> bool:
    """``on``/``off`` (also yes/no, true/false, 1/0) as a bool."""
    t = text.strip().lower()
    if t in ("on", "yes", "true", "1"):
        return True
    if t in ("off", "no", "false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")


def _kind(hint) -> type:
    """The value type of a field's annotation (``int | None`` -> int)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def add_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per field of ``cls`` (``TrainConfig``, ``EvalConfig``), named after it
    (``image_size`` -> ``--image-size``, plus the field's other spellings), with its help text
    and default; every flag defaults to None (unset: the profile's value, else the field's
    default). A bool is ``--amp`` / ``--no-amp``; one settable per architecture takes
    ``on``/``off`` or ``arch=on,...``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        md, kind = f.metadata, _kind(hints[f.name])
        names = [f"--{f.name.replace('_', '-')}", *md["flags"]]
        default = "unset" if f.default is None else (
            f"{f.default:.4g}" if isinstance(f.default, float) else f.default)
        help_text = f"{md['help']} (the profile's; without one: {default})"
        if md["per_arch"]:
            help_text += "; one per architecture: arch=VALUE,arch=VALUE"
        if kind is bool and md["per_arch"]:
            parser.add_argument(*names, type=per_arch_arg(on_off), default=None,
                                metavar="on|off", help=help_text)
            parser.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name,
                                action="store_const", const=False, help=f"{names[0]} off")
        elif kind is bool:
            parser.add_argument(*names, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        else:
            parse = md["parse"] or (per_arch_arg(kind) if md["per_arch"] else kind)
            parser.add_argument(*names, dest=f.name, type=parse, default=None, help=help_text)


def given(values, cls) -> dict:
    """The settings of ``cls`` found in ``values`` (an argparse Namespace or a notebook's
    ``globals()``), by field name; None means unset (the profile's)."""
    found = values if isinstance(values, dict) else vars(values)
    return {f.name: found[f.name] for f in dataclasses.fields(cls) if f.name in found}


def profile_path(profile: str | os.PathLike | None, data_dir: str | os.PathLike | None = None
                 ) -> Path:
    """The profile file: ``profile`` as a path, or a name under ``profiles/``
    (``"demo-cpu"``); None picks by the data (``DEMO`` for the synthetic demo, else ``STUDY``)."""
    if profile is None:
        from utils import dataset_info  # noqa: PLC0415  (torch; only when the data decides)
        synthetic = data_dir is not None and dataset_info(data_dir)["synthetic"]
        profile = DEMO if synthetic else STUDY
    p = Path(profile)
    if not p.suffix and not p.exists():
        p = PROFILE_DIR / f"{profile}.yaml"
    if not p.is_file():
        known = sorted(f.stem for f in PROFILE_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"profile {profile!r} not found (expected a YAML file, or one of "
                                f"{', '.join(known)} in {PROFILE_DIR})")
    return p


def load_profile(profile: str | os.PathLike | None, data_dir: str | os.PathLike | None = None
                 ) -> dict:
    """The profile as a dict (``profile_path``), with ``name`` and ``path`` added. ValueError
    for a section or field it does not know, naming the valid ones and the closest."""
    path = profile_path(profile, data_dir)
    raw = yaml.safe_load(path.read_text()) or {}
    _check(raw, SECTIONS, f"{path}")
    _check(raw.get("train") or {}, [*_fields(TrainConfig)], f"{path}: train")
    _check(raw.get("evaluate") or {}, _fields(EvalConfig), f"{path}: evaluate")
    _check(raw.get("split") or {}, ("val", "test"), f"{path}: split")
    return {"name": path.stem, "path": str(path), "archs": raw.get("archs") or [],
            "split": raw.get("split") or {}, "train": raw.get("train") or {},
            "evaluate": raw.get("evaluate") or {}}


def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _check(section: dict, valid, where: str) -> None:
    if not isinstance(section, dict):
        raise ValueError(f"{where}: expected a mapping of settings, got {section!r}")
    for key in section:
        if key not in valid:
            close = difflib.get_close_matches(str(key), list(valid), n=1)
            raise ValueError(f"{where}: unknown setting {key!r}"
                             + (f" (did you mean {close[0]!r}?)" if close else "")
                             + f"; valid: {', '.join(valid)}")


def _merge(section: dict, overrides: dict) -> dict:
    """The profile's section with every override that is not None put over it."""
    return {**section, **{k: v for k, v in overrides.items() if v is not None}}


def per_arch(value, arch: str):
    """``value[arch]`` when ``value`` is a dict (per-architecture settings), else ``value``."""
    if isinstance(value, dict):
        if arch not in value:
            raise ValueError(f"no setting for {arch!r} in {value}; give one per architecture")
        return value[arch]
    return value


def train_settings(profile, data_dir, archs: list[str] | None = None, **overrides
                   ) -> tuple[dict, dict]:
    """What notebook 2 and ``train.py`` train: ``({arch: (TrainConfig, weights)}, profile)``.
    ``overrides``: TrainConfig fields and ``weights`` (None: the profile's); each value may be
    per architecture (``per_arch``). ``archs`` None: the profile's."""
    prof = load_profile(profile, data_dir)
    _check(overrides, _fields(TrainConfig), "overrides")
    values = _merge(prof["train"], overrides)
    out = {}
    for arch in archs or prof["archs"]:
        missing = [k for k, v in values.items() if isinstance(v, dict) and arch not in v]
        if missing:
            raise ValueError(f"{prof['path']}: no {', '.join(missing)} for {arch!r} (the "
                             f"profile sets them per architecture, for "
                             f"{', '.join(values[missing[0]])}): add {arch} to the profile, or "
                             f"give the setting for every architecture (a notebook parameter, "
                             f"a train.py flag)")
        cfg = {k: per_arch(v, arch) for k, v in values.items()}
        weights = cfg.pop("weights", "imagenet")
        out[arch] = (TrainConfig(**cfg), weights)
    return out, prof


def eval_settings(profile, data_dir, archs: list[str] | None = None, **overrides
                  ) -> tuple[list[str], object, dict]:
    """What notebook 3 and ``evaluate.py`` score with: ``(archs, EvalConfig, profile)``;
    overrides that are not None win over the profile's ``evaluate`` section."""
    prof = load_profile(profile, data_dir)
    _check(overrides, _fields(EvalConfig), "overrides")
    return list(archs or prof["archs"]), EvalConfig(**_merge(prof["evaluate"], overrides)), prof


def split_args(profile) -> list[str]:
    """``split_dataset.py``'s ``--val``/``--test`` from a profile (nothing for a value it does
    not set)."""
    split = yaml.safe_load(profile_path(profile).read_text()).get("split") or {}
    return [a for k in ("val", "test") if k in split for a in (f"--{k}", str(split[k]))]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[1] != "--split-args":
        print("usage: python config.py PROFILE --split-args", file=sys.stderr)
        return 2
    try:
        print(" ".join(split_args(argv[0])))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
