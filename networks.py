"""Architecture registry: any torchvision classifier with a new head, its weights, its CAM layer.

``build_model(name, num_classes, weights)`` builds any classification model of
``torchvision.models`` (``available()``: VGG, ResNet, DenseNet, EfficientNet, ConvNeXt, RegNet,
ViT, Swin, MobileNet, ...). The new head is found by looking at the model (its last linear layer
with ImageNet's 1,000 outputs, or SqueezeNet's 1x1 convolution), not from a table. What differs
by family lives in ``FAMILIES``: where Grad-CAM looks (``cam_target_layer``), the Adam learning
rate from random initialisation, and build options. Weights:

- ``"imagenet"``: the model's DEFAULT torchvision weights (IMAGENET1K_V1 for the study's three),
  read from the ``$TORCH_HOME/hub/checkpoints`` cache, downloaded when online; offline with no
  cached file it fails fast naming the file to put where.
- a path: an ImageNet-shaped state dict (``.pth``) or one of this project's checkpoints.
- ``None``: random initialisation (tests, offline demo).

``ARCHS`` holds the architectures this project has profiles and measurements for.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import socket
import urllib.error
from dataclasses import dataclass, field
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


def _last(model: nn.Module, kind: type, within: str = "") -> nn.Module:
    """The last submodule of type ``kind`` (below ``within``, a submodule path)."""
    root = model.get_submodule(within) if within else model
    found = [m for m in root.modules() if isinstance(m, kind)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no {kind.__name__} below {within!r}")
    return found[-1]


def tokens_to_grid(t: torch.Tensor) -> torch.Tensor:
    """A ViT's tokens ``(N, 1 + h*w, C)`` as a map ``(N, C, h, w)``: the class token dropped and
    the patch tokens laid out on their grid (pytorch-grad-cam's reshape transform for ViT)."""
    n, count, c = t.shape
    side = math.isqrt(count - 1)
    if side * side != count - 1:
        raise ValueError(f"expected 1 + h*w tokens on a square grid, got {count}")
    return t[:, 1:].reshape(n, side, side, c).permute(0, 3, 1, 2)


def _vit_cam_layer(model: nn.Module) -> nn.Module:
    # the last block's first LayerNorm: every patch token, before the block mixes them into the
    # class token (the layer pytorch-grad-cam documents for ViT); its output is tokens
    layer = model.encoder.layers[-1].ln_1
    layer.cam_reshape = tokens_to_grid  # grad_cam.GradCAM applies it to activations/gradients
    return layer


@dataclass(frozen=True)
class Family:
    """What an architecture family needs that the model itself does not say."""
    cam_layer: Callable[[nn.Module], nn.Module]  # Grad-CAM's default target layer
    scratch_lr: float = 1e-3                      # Adam learning rate from random init
    build: dict = field(default_factory=dict)     # extra builder options
    wrap: Callable[[nn.Module], nn.Module] = lambda m: m
    sized: str | None = None                      # builder option that takes the input size


# Learning rates from random initialisation (pretrained: PRETRAINED_LR for every family). The
# batch-normalised CNNs learn at 1e-3 with Adam; VGG and AlexNet have no batch norm: VGG-16 on the
# demo at 96 px fell back to chance at 1e-4 on one seed of three (measured), so 5e-5 with a
# warm-up (training.make_schedule). ConvNeXt (layer norm, large kernels) and the transformers
# (ViT, Swin, MaxViT) are trained from scratch with smaller rates in their papers (AdamW, long
# warm-ups); here 2e-4 and 1e-4, not tuned beyond the demo (docs/methods.md).
FAMILIES: dict[str, Family] = {
    "vgg": Family(lambda m: _last(m, nn.ReLU, "features"), 5e-5),   # last conv's ReLU
    "alexnet": Family(lambda m: _last(m, nn.ReLU, "features"), 5e-5),
    "resnet": Family(lambda m: m.layer4), "resnext": Family(lambda m: m.layer4),
    "wide_resnet": Family(lambda m: m.layer4),
    "densenet": Family(lambda m: m.final_relu, wrap=lambda m: DenseNetCAM(m)),
    "efficientnet": Family(lambda m: m.features[-1]),
    "mobilenet": Family(lambda m: m.features[-1]),
    "mnasnet": Family(lambda m: m.layers[-1]),
    "shufflenet": Family(lambda m: m.conv5),
    "squeezenet": Family(lambda m: m.features[-1], 1e-4),
    "regnet": Family(lambda m: m.trunk_output),
    "googlenet": Family(lambda m: m.inception5b,
                        build={"aux_logits": False, "init_weights": True, "transform_input": True}),
    "inception": Family(lambda m: m.Mixed_7c,
                        build={"aux_logits": False, "init_weights": True, "transform_input": True}),
    "convnext": Family(lambda m: m.features[-1], 2e-4),
    "vit": Family(_vit_cam_layer, 1e-4, sized="image_size"),
    "swin": Family(lambda m: m.permute, 1e-4),   # the last stage's output, channels first
    "maxvit": Family(lambda m: m.blocks[-1], 1e-4, sized="input_size"),
}
# The architectures this project has profiles and measurements for (the study's three first).
ARCHS = ("vgg16", "resnet18", "densenet121", "vgg16_bn", "resnet50", "efficientnet_b0",
         "convnext_tiny", "regnet_y_400mf", "vit_b_16", "swin_t")
HEAD_OUTPUTS = 1000  # ImageNet's classes: how the head to replace is recognised


def available() -> list[str]:
    """Every classification model of ``torchvision.models`` that ``build_model`` accepts."""
    return models.list_models(module=models)


def family(arch: str) -> Family:
    """``arch``'s family (``FAMILIES``, by name). ValueError for a name torchvision does not
    have, listing the close matches."""
    if arch not in available():
        close = difflib.get_close_matches(arch, available(), n=5, cutoff=0.6)
        raise ValueError(f"unknown architecture {arch!r}; "
                         + (f"close matches: {', '.join(close)}; " if close else "")
                         + f"valid: any torchvision classifier, e.g. {', '.join(ARCHS)} "
                           f"(networks.available() lists all {len(available())})")
    key = max((k for k in FAMILIES if arch.startswith(k)), key=len, default=None)
    if key is None:  # pragma: no cover - every torchvision classifier has a family above
        raise ValueError(f"{arch}: no family rule in networks.FAMILIES")
    return FAMILIES[key]


def _head(model: nn.Module) -> tuple[str, nn.Module]:
    """The ImageNet head: the last Linear with ``HEAD_OUTPUTS`` outputs, else the last Conv2d
    with that many output channels (SqueezeNet classifies with a 1x1 convolution)."""
    for kind, size in ((nn.Linear, "out_features"), (nn.Conv2d, "out_channels")):
        heads = [(n, m) for n, m in model.named_modules()
                 if isinstance(m, kind) and getattr(m, size) == HEAD_OUTPUTS]
        if heads:
            return heads[-1]
    raise ValueError(f"{type(model).__name__}: no layer with {HEAD_OUTPUTS} outputs to replace")


def _replace_head(model: nn.Module, num_classes: int) -> str:
    """Swap the ImageNet head for a ``num_classes``-way one of the same kind; returns its path."""
    name, old = _head(model)
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride)
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)
    return name


def _weights_enum(arch: str):
    return models.get_model_weights(arch).DEFAULT


def imagenet_weights_file(arch: str) -> Path:
    """Where torchvision looks for ``arch``'s DEFAULT ImageNet weights:
    ``$TORCH_HOME/hub/checkpoints``."""
    family(arch)
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(_weights_enum(arch).url)


def _imagenet_state_dict(arch: str) -> dict:
    w = _weights_enum(arch)
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
    return unwrap_state_dict(obj)


def unwrap_state_dict(obj):
    """The state dict in a weights file: the file itself when every value is a tensor, else the
    one entry that is such a dict (a checkpoint's weights beside its metadata, a training
    script's ``{"state_dict": ..., "epoch": ...}``); anything else is returned as it is (and
    then fails to fit the model, saying so)."""
    def is_state(d):
        return isinstance(d, dict) and d and all(isinstance(v, torch.Tensor) for v in d.values())

    if is_state(obj) or not isinstance(obj, dict):
        return obj
    inner = [v for v in obj.values() if is_state(v)]
    return inner[0] if len(inner) == 1 else obj


_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def _legacy_densenet_keys(state: dict) -> dict:
    """torchvision's DenseNet ImageNet files use ``norm.1``-style keys; rename to ``norm1``."""
    return {(_DENSENET_OLD_KEY.sub(r"\1\2", k)): v for k, v in state.items()}


def _strip_head(state: dict, head: str) -> dict:
    return {k: v for k, v in state.items() if not k.startswith(head + ".")}


def _fit_positions(state: dict, model: nn.Module, arch: str) -> dict:
    """A ViT's ImageNet position embeddings interpolated to this model's grid (another input
    size than the 224 px the weights were trained at)."""
    key = "encoder.pos_embedding"
    if key in state and state[key].shape != model.state_dict()[key].shape:
        from torchvision.models.vision_transformer import interpolate_embeddings  # noqa: PLC0415
        state = interpolate_embeddings(model.image_size, model.patch_size, state)
    return state


def build_model(arch: str, num_classes: int, weights: str | os.PathLike | None = "imagenet",
                image_size: int | None = None, dropout: float | None = None) -> nn.Module:
    """Build any torchvision classifier ``arch`` (``available()``) with a fresh
    ``num_classes``-way head.

    ``weights``: ``"imagenet"`` (the model's DEFAULT weights), a path to a state dict /
    checkpoint, or ``None`` (random init). Pretrained backbones are loaded strictly (auxiliary
    ImageNet heads aside); the pretrained head is kept only when its shape matches
    ``num_classes`` (one of our own checkpoints), otherwise the new head stays random.
    ``image_size``: the input side, for the families whose layers depend on it (ViT's position
    embeddings, interpolated from 224 px ImageNet weights; MaxViT); others ignore it.
    ``dropout``: the classifier's dropout probability for the families whose torchvision builder
    takes one (VGG, AlexNet, EfficientNet, MobileNet, ViT, Swin, ...; weights do not depend on
    it); None keeps the family's own. Raises ValueError for an unknown ``arch`` (naming close
    matches) or a ``dropout`` the family has no setting for, RuntimeError when ImageNet weights
    cannot be had.
    """
    fam = family(arch)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    kwargs = dict(fam.build)
    if fam.sized and image_size:
        kwargs[fam.sized] = image_size if fam.sized == "image_size" else (image_size, image_size)
    if dropout is not None:
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        kwargs["dropout"] = dropout
    try:
        model = models.get_model(arch, weights=None, **kwargs)
    except TypeError as e:
        if dropout is None or "dropout" not in str(e):
            raise
        model = None
    if dropout is not None and (model is None or not any(
            isinstance(m, nn.Dropout) and m.p == dropout for m in model.modules())):
        # a builder that takes no 'dropout', or one that swallows unknown keywords (ConvNeXt)
        raise ValueError(f"{arch} has no dropout setting (expected one of the families whose "
                         f"torchvision builder takes 'dropout', e.g. vgg16, alexnet, "
                         f"efficientnet_b0, vit_b_16; got dropout={dropout}): leave it unset "
                         f"for {arch}")
    head = _replace_head(model, num_classes)
    if weights is None:
        return fam.wrap(model)
    if isinstance(weights, str) and weights == "imagenet":
        state = _imagenet_state_dict(arch)
    else:
        state = _load_state_file(weights)
    state = _fit_positions(_legacy_densenet_keys(state), model, arch)
    head_w = state.get(head + ".weight")
    if head_w is None or head_w.shape[0] != num_classes:
        state = _strip_head(state, head)  # ImageNet's 1000-way head: keep the new one
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(head + ".")]
    unexpected = [k for k in unexpected if not k.startswith(("aux1.", "aux2.", "AuxLogits."))]
    if missing or unexpected:
        raise ValueError(f"weights {weights} do not fit {arch}: {len(missing)} missing keys "
                         f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}")
    return fam.wrap(model)


def cam_target_layer(model: nn.Module, arch: str, layer: str | None = None) -> nn.Module:
    """The layer whose activations Grad-CAM uses for ``arch``.

    ``layer=None``: the family's default (``FAMILIES``), the last convolutional stage for CNNs,
    as in the study (post-ReLU where there is one, never modified in place afterwards): VGG's
    last conv ReLU, ResNet's ``layer4``, DenseNet's ``final_relu``, EfficientNet's and
    ConvNeXt's last ``features`` stage, RegNet's ``trunk_output``; for Swin the last stage's
    output turned channels-first (``permute``); for ViT the last block's ``ln_1``, whose tokens
    ``tokens_to_grid`` lays out as a map (the layer carries it as ``cam_reshape``, which
    ``grad_cam.GradCAM`` applies). ``layer``: a submodule path such as ``"layer3"`` or
    ``"features.22"``, for finer maps on small inputs. Raises ValueError naming the valid paths
    when ``layer`` is not a submodule.
    """
    if layer is None:
        return family(arch).cam_layer(model)
    names = dict(model.named_modules())
    if layer not in names or layer == "":
        top = [n for n in names if n and n.count(".") <= 1]
        raise ValueError(f"{arch} has no submodule {layer!r}; valid paths include: "
                         f"{', '.join(top[:40])}{' ...' if len(top) > 40 else ''}")
    return names[layer]


def cam_layer_for(cam_layers: dict | str | None, arch: str) -> str | None:
    """The CAM layer path asked for ``arch``: ``cam_layers[arch]`` (None when the dict has no
    entry: the architecture's default), or the one path given for every model."""
    return cam_layers.get(arch) if isinstance(cam_layers, dict) else cam_layers


def module_path(model: nn.Module, module: nn.Module) -> str:
    """The dotted submodule path of ``module`` inside ``model`` (e.g. ``"layer4"``)."""
    for name, m in model.named_modules():
        if m is module:
            return name
    raise ValueError(f"{type(module).__name__} is not a submodule of {type(model).__name__}")


PRETRAINED_LR = 3e-5  # the study's Adam learning rate for ImageNet-initialised models


def scratch_lr(arch: str) -> float:
    """The default Adam learning rate for ``arch`` trained from random initialisation (its
    family's, ``FAMILIES``)."""
    return family(arch).scratch_lr


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
