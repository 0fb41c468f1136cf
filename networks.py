"""Architecture registry: torchvision classifiers with a new head, their weights, their CAM layer.

``ARCHS`` maps a name to an ``Arch`` record (builder, ImageNet weights enum, how to replace the
head, where Grad-CAM looks). ``build_model`` reads the old head's ``in_features`` and swaps it
for a ``num_classes`` linear layer. Weights:

- ``"imagenet"``: torchvision's weights API (IMAGENET1K_V1 for the study's three), read from the
  ``$TORCH_HOME/hub/checkpoints`` cache, downloaded when online; offline with no cached file it
  fails fast naming the file to put where.
- a path: an ImageNet-shaped state dict (``.pth``) or one of this project's checkpoints.
- ``None``: random initialisation (tests, offline demo).
"""

from __future__ import annotations

import os
import re
import socket
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models


class DenseNetCAM(nn.Module):
    """torchvision DenseNet with the final ReLU as a separate, non-inplace module.

    torchvision's ``DenseNet.forward`` applies ``F.relu(features, inplace=True)`` to the output of
    ``features``; a Grad-CAM hook on ``features`` then sees a tensor modified in place afterwards,
    so the CAM depends on when the activation is copied (differently on CPU and GPU). Here the
    ReLU is ``self.final_relu`` (not inplace), the Grad-CAM target, and the state dict keys are the
    same as torchvision's (``features.*``, ``classifier.*``).
    """

    def __init__(self, base: models.DenseNet):
        super().__init__()
        self.features = base.features
        self.final_relu = nn.ReLU(inplace=False)
        self.classifier = base.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final_relu(self.features(x))               # (N, C, h, w)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)   # (N, C)
        return self.classifier(x)


@dataclass(frozen=True)
class Arch:
    builder: Callable[..., nn.Module]
    weights: object                          # torchvision WeightsEnum member for "imagenet"
    head: str                                # attribute path of the final Linear layer
    cam_layer: Callable[[nn.Module], nn.Module]
    wrap: Callable[[nn.Module], nn.Module] = lambda m: m
    # Adam learning rate from random initialisation. VGG has no batch norm: on the demo at 96 px
    # it fell back to chance at 1e-4 on one seed of three (measured), so 5e-5 (with a warm-up,
    # see training.make_schedule); the batch-normalised nets learn ~3x faster at 1e-3.
    scratch_lr: float = 1e-3


ARCHS: dict[str, Arch] = {
    "vgg16": Arch(models.vgg16, models.VGG16_Weights.IMAGENET1K_V1, "classifier.6",
                  lambda m: m.features[29], scratch_lr=5e-5),  # last conv's ReLU (before pool5)
    "vgg16_bn": Arch(models.vgg16_bn, models.VGG16_BN_Weights.IMAGENET1K_V1, "classifier.6",
                     lambda m: m.features[42]),
    "resnet18": Arch(models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1, "fc",
                     lambda m: m.layer4),
    "resnet50": Arch(models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1, "fc",
                     lambda m: m.layer4),
    "densenet121": Arch(models.densenet121, models.DenseNet121_Weights.IMAGENET1K_V1,
                        "classifier", lambda m: m.final_relu, DenseNetCAM),
    "efficientnet_b0": Arch(models.efficientnet_b0, models.EfficientNet_B0_Weights.IMAGENET1K_V1,
                            "classifier.1", lambda m: m.features[-1]),
}


def _arch(name: str) -> Arch:
    if name not in ARCHS:
        raise ValueError(f"unknown architecture {name!r}; valid: {', '.join(sorted(ARCHS))}")
    return ARCHS[name]


def _replace_head(model: nn.Module, head: str, num_classes: int) -> None:
    parent_name, _, attr = head.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    if not isinstance(old, nn.Linear):  # pragma: no cover - registry error
        raise TypeError(f"expected a Linear head at {head}, found {type(old).__name__}")
    setattr(parent, attr, nn.Linear(old.in_features, num_classes))


def imagenet_weights_file(arch: str) -> Path:
    """Where torchvision looks for ``arch``'s ImageNet weights: ``$TORCH_HOME/hub/checkpoints``."""
    url = _arch(arch).weights.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _imagenet_state_dict(arch: str) -> dict:
    w = _arch(arch).weights
    target = imagenet_weights_file(arch)
    if target.is_file():
        return torch.load(target, map_location="cpu", weights_only=True)
    help_text = (f"ImageNet weights for {arch} are not in the cache. Put {target.name} "
                 f"(from {w.url}) at {target} (the folder is $TORCH_HOME/hub/checkpoints; "
                 f"TORCH_HOME defaults to ~/.cache/torch), or pass weights=<path to a .pth "
                 f"state dict>, or weights=None to train from random initialisation.")
    # Offline: fail within seconds instead of waiting on a download that cannot start.
    host = w.url.split("/")[2]
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as e:
        raise RuntimeError(f"{help_text} (cannot reach {host}: {e})") from None
    try:
        return w.get_state_dict(progress=True, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        raise RuntimeError(f"{help_text} (download failed: {e})") from e


def _load_state_file(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file {p} not found; expected a .pth state dict or a "
                                f"checkpoint saved by checkpoints.save_checkpoint")
    obj = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "model_state" in obj:  # one of our checkpoints
        return obj["model_state"]
    if isinstance(obj, dict) and "state_dict" in obj:
        return obj["state_dict"]
    return obj


_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def _legacy_densenet_keys(state: dict) -> dict:
    """torchvision's DenseNet ImageNet files use ``norm.1``-style keys; rename to ``norm1``."""
    return {(_DENSENET_OLD_KEY.sub(r"\1\2", k)): v for k, v in state.items()}


def _strip_head(state: dict, head: str) -> dict:
    return {k: v for k, v in state.items() if not k.startswith(head + ".")}


def build_model(arch: str, num_classes: int, weights: str | os.PathLike | None = "imagenet"
                ) -> nn.Module:
    """Build ``arch`` with a fresh ``num_classes``-way head.

    ``weights``: ``"imagenet"``, a path to a state dict / checkpoint, or ``None`` (random init).
    Pretrained backbones are loaded strictly; the pretrained head is kept only when its shape
    matches ``num_classes`` (one of our own checkpoints), otherwise the new head stays random.
    Raises ValueError for an unknown ``arch``, RuntimeError when ImageNet weights cannot be had.
    """
    a = _arch(arch)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    model = a.builder(weights=None)
    _replace_head(model, a.head, num_classes)
    if weights is None:
        return a.wrap(model)
    if isinstance(weights, str) and weights == "imagenet":
        state = _imagenet_state_dict(arch)
    else:
        state = _load_state_file(weights)
    state = _legacy_densenet_keys(state)
    head_w = state.get(a.head + ".weight")
    if head_w is None or head_w.shape[0] != num_classes:
        state = _strip_head(state, a.head)  # ImageNet's 1000-way head: keep the new one
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(a.head + ".")]
    if missing or unexpected:
        raise ValueError(f"weights {weights} do not fit {arch}: {len(missing)} missing keys "
                         f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}")
    return a.wrap(model)


def cam_target_layer(model: nn.Module, arch: str, layer: str | None = None) -> nn.Module:
    """The layer whose activations Grad-CAM uses for ``arch``.

    ``layer=None``: the study's choice, the last convolutional block (post-ReLU, never modified
    in place afterwards): VGG's last conv ReLU, ResNet's ``layer4``, DenseNet's ``final_relu``.
    ``layer``: a submodule path such as ``"layer3"`` or ``"features.22"``, for finer maps on
    small inputs (each block halves the resolution: at 64 px ResNet's ``layer4`` is 2x2).
    Raises ValueError naming the valid paths when ``layer`` is not a submodule.
    """
    if layer is None:
        return _arch(arch).cam_layer(model)
    names = dict(model.named_modules())
    if layer not in names or layer == "":
        top = [n for n in names if n and n.count(".") <= 1]
        raise ValueError(f"{arch} has no submodule {layer!r}; valid paths include: "
                         f"{', '.join(top[:40])}{' ...' if len(top) > 40 else ''}")
    return names[layer]


def module_path(model: nn.Module, module: nn.Module) -> str:
    """The dotted submodule path of ``module`` inside ``model`` (e.g. ``"layer4"``)."""
    for name, m in model.named_modules():
        if m is module:
            return name
    raise ValueError(f"{type(module).__name__} is not a submodule of {type(model).__name__}")


PRETRAINED_LR = 3e-5  # the study's Adam learning rate for ImageNet-initialised models


def scratch_lr(arch: str) -> float:
    """The default Adam learning rate for ``arch`` trained from random initialisation."""
    return _arch(arch).scratch_lr


def default_lr(arch: str, pretrained: bool) -> float:
    """The Adam learning rate used when none is given: ``PRETRAINED_LR`` for pretrained weights
    (the study's), else ``scratch_lr(arch)``."""
    return PRETRAINED_LR if pretrained else scratch_lr(arch)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def resolve_weights(arch: str, weights: str | os.PathLike | None) -> str | os.PathLike | None:
    """``"auto"``: ``"imagenet"`` when the ImageNet file is in the TORCH_HOME cache, else None
    (random init: the offline demo). ``"none"``/``""`` (from the command line) -> None; anything
    else is returned as is."""
    if weights is None or (isinstance(weights, str) and weights.lower() in ("none", "")):
        return None
    if isinstance(weights, str) and weights == "auto":
        return "imagenet" if imagenet_weights_file(arch).is_file() else None
    return weights
