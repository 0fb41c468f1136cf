"""Profiles: one YAML file per way of running the study (``profiles/study.yaml`` for the real
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

CLI (for the Makefile): ``python config.py PROFILE --split-args`` prints ``--val N --test N``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
from pathlib import Path

import yaml

PROFILE_DIR = Path(__file__).resolve().with_name("profiles")
DEMO, STUDY = "demo-cpu", "study"
SECTIONS = ("archs", "split", "train", "evaluate")


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
    from evaluation import EvalConfig  # noqa: PLC0415  (torch: only once a profile is read)
    from training import TrainConfig  # noqa: PLC0415
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
    from training import TrainConfig  # noqa: PLC0415
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
    from evaluation import EvalConfig  # noqa: PLC0415
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
