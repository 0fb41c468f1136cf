import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from pytorch_grad_cam import GradCAM as RefGradCAM
from pytorch_grad_cam import GradCAMPlusPlus as RefGradCAMPP
from pytorch_grad_cam import HiResCAM as RefHiResCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import grad_cam
import networks
import plot_utils


def _model(arch, seed=0):
    torch.manual_seed(seed)
    return networks.build_model(arch, 4, weights=None).eval()


def _images(n=3, size=96, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


def _reference(ref_cls, model, layer, x, targets, clone):
    kw = {"reshape_transform": (lambda t: t.clone())} if clone else {}
    with ref_cls(model=model, target_layers=[layer], **kw) as ref:
        return ref(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])


# VGG-16 (138M parameters, 2 s to build) and the big transformers are in the full suite only
# (`make test-quick` keeps the smaller models, which take the same code paths)
BIG = pytest.mark.slow


@pytest.mark.parametrize("arch", [pytest.param("vgg16", marks=BIG), "resnet18", "densenet121"])
@pytest.mark.filterwarnings("ignore:.*CAMs are constant")  # untrained models: flat maps happen
def test_matches_pytorch_grad_cam_cpu_and_gpu_paths(arch):
    model = _model(arch)
    layer = networks.cam_target_layer(model, arch)
    x = _images()
    targets = [0, 1, 3]
    with grad_cam.GradCAM(model, layer) as cam:
        classes, ours = cam(x, targets)
    assert classes.dtype == torch.long and classes.tolist() == targets
    assert ours.dtype == np.float32 and ours.shape == (3, 96, 96)
    assert ours.min() >= 0 and ours.max() <= 1
    for clone in (False, True):   # clone: what the device-to-host copy does on a GPU
        ref = _reference(RefGradCAM, model, layer, x, targets, clone)
        assert np.abs(ours - ref).max() <= 1e-3, (arch, clone, np.abs(ours - ref).max())


@pytest.mark.parametrize("method,ref_cls", [("gradcam++", RefGradCAMPP), ("hirescam", RefHiResCAM)])
def test_variants_match_reference(method, ref_cls):
    model = _model("resnet18")
    layer = networks.cam_target_layer(model, "resnet18")
    x = _images(2)
    with grad_cam.GradCAM(model, layer, method) as cam:
        _, ours = cam(x, [2, 2])
    ref = _reference(ref_cls, model, layer, x, [2, 2], clone=True)
    assert np.abs(ours - ref).max() <= 1e-3


def test_hooks_scoped_no_accumulation_no_grad_and_mode():
    model = _model("resnet18")
    layer = networks.cam_target_layer(model, "resnet18")
    x = _images(2)
    model.train()
    with grad_cam.GradCAM(model, layer) as cam:
        assert len(layer._forward_hooks) == 1
        first = cam(x)
        for _ in range(20):
            c, maps = cam(x)
            assert torch.equal(c, first[0]) and np.array_equal(maps, first[1])
        with torch.no_grad():
            c2, maps2 = cam(x)
        assert np.array_equal(maps2, first[1])
        assert len(layer._forward_hooks) == 1
    assert model.training                       # mode restored
    assert all(p.grad is None for p in model.parameters())
    for m in model.modules():
        assert not m._forward_hooks and not m._backward_hooks
    model.eval()
    with torch.no_grad():
        assert torch.equal(first[0], model(x).argmax(1))   # targets=None -> predicted class
    with pytest.raises(RuntimeError, match="context manager"):
        cam(x)


def test_targets_validation_and_raw_maps():
    model = _model("resnet18")
    layer = networks.cam_target_layer(model, "resnet18")
    x = _images(3)
    with grad_cam.GradCAM(model, layer) as cam:
        with pytest.raises(ValueError, match="2 targets for 3 images"):
            cam(x, [0, 1])
        with pytest.raises(ValueError, match="class indices"):
            cam(x, 7)
        c, raw = cam(x, torch.tensor([1, 1, 1]), normalize=False)
        assert c.tolist() == [1, 1, 1] and raw.min() >= 0
        _, norm = cam(x, 1)
    np.testing.assert_allclose(grad_cam.normalize_maps(raw), norm, atol=1e-6)
    with pytest.warns(UserWarning, match="constant"):
        out = grad_cam.normalize_maps(np.zeros((2, 4, 4)))
    assert not np.isnan(out).any() and (out == 0).all()
    with pytest.raises(ValueError, match="unknown CAM method"):
        grad_cam.GradCAM(model, layer, "scorecam")


def test_localization_scores():
    cam = np.zeros((2, 10, 10), np.float32)
    cam[0, 2, 3] = 1.0
    cam[1, 8, 8] = 1.0
    cam[1, 2, 2] = 0.5
    mask = np.zeros((2, 10, 10), bool)
    mask[:, 0:5, 0:5] = True
    s = grad_cam.localization_scores(cam, mask)
    assert s["hit"].tolist() == [True, False] and s["hit_strict"].tolist() == [True, False]
    np.testing.assert_allclose(s["energy"], [1.0, 0.5 / 1.5])
    np.testing.assert_allclose(s["chance"], [0.25, 0.25])
    summ = grad_cam.summarize_localization(s)
    assert summ["pointing_game"] == 0.5 and summ["n"] == 2
    empty = grad_cam.localization_scores(cam, np.zeros_like(mask))
    assert empty.empty and grad_cam.summarize_localization(empty)["n"] == 0


def test_pointing_game_margin_and_its_chance():
    mask = np.zeros((20, 20), bool)
    mask[5:10, 5:10] = True                      # 25 px of 400
    cam = np.zeros((20, 20), np.float32)
    cam[12, 7] = 1.0                             # 3 rows below the mask
    assert not grad_cam.pointing_game(cam, mask)
    assert not grad_cam.pointing_game(cam, mask, tolerance=2)
    assert grad_cam.pointing_game(cam, mask, tolerance=3)
    s = grad_cam.localization_scores(cam[None], mask[None], tolerance=3)
    assert s["hit"].tolist() == [True] and s["hit_strict"].tolist() == [False]
    assert s["chance_strict"].item() == 25 / 400
    # chance of the margin game = area of the grown mask (a 5x5 square grown by a radius-3 disc)
    assert s["chance"].item() == grad_cam.dilate(mask, 3).mean()
    assert 25 / 400 < s["chance"].item() < 121 / 400
    assert grad_cam.margin_pixels(299, 15 / 299) == 15 and grad_cam.margin_pixels(128, 15 / 299) == 6
    with pytest.raises(ValueError, match="fraction"):
        grad_cam.margin_pixels(64, -1)


def test_constant_maps_are_not_scored():
    """A constant map has no peak: scoring its first pixel would count a hit whenever the mask
    touches the top-left corner."""
    mask = np.zeros((2, 8, 8), bool)
    mask[:, :3, :3] = True
    cam = np.zeros((2, 8, 8), np.float32)
    cam[1, 6, 6] = 1.0
    s = grad_cam.localization_scores(cam, mask)
    assert s["index"].tolist() == [1] and s["hit"].tolist() == [False]


def test_summary_intervals_bracket_the_mean_and_are_seeded():
    rng = np.random.default_rng(0)
    s = pd.DataFrame({"hit": rng.random(200) < 0.6, "hit_strict": rng.random(200) < 0.3,
                      "energy": rng.random(200), "chance": 0.2, "chance_strict": 0.05})
    a = grad_cam.summarize_localization(s, n_boot=500, seed=1)
    assert a == grad_cam.summarize_localization(s, n_boot=500, seed=1)
    for k in ("pointing_game", "pointing_game_strict", "energy_in_mask"):
        lo, hi = a[k + "_ci"]
        assert lo < a[k] < hi and hi - lo < 0.2
    # n = 200 Bernoulli(p): the interval's width is about 2 * 1.96 * sqrt(p (1 - p) / n)
    p = a["pointing_game"]
    width = a["pointing_game_ci"][1] - a["pointing_game_ci"][0]
    assert abs(width - 3.92 * np.sqrt(p * (1 - p) / 200)) < 0.03
    assert a["chance"] == 0.2 and a["chance_strict"] == 0.05


class _Quadrant(nn.Module):
    """Class k's logit = mean activation in quadrant k: HiResCAM for class k lies in quadrant k."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        nn.init.ones_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.act = nn.ReLU()

    def forward(self, x):
        a = self.act(self.conv(x))  # (N, 1, 8, 8)
        return torch.stack([a[:, 0, :4, :4].mean((1, 2)), a[:, 0, :4, 4:].mean((1, 2)),
                            a[:, 0, 4:, :4].mean((1, 2)), a[:, 0, 4:, 4:].mean((1, 2))], 1)


def test_localize_loader_scores_the_true_class_map():
    model = _Quadrant()
    x = torch.ones(2, 3, 8, 8)
    x[:, :, :4, :4] = 3.0                      # quadrant 0 brightest: predicted class 0
    y = torch.tensor([3, 0])
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[:, 4:, 4:] = True                    # the "finding" of class 3
    loader = [(x, y, torch.tensor([10, 11]), masks)]
    with grad_cam.GradCAM(model, model.act, "hirescam") as cam:
        true = grad_cam.localize_loader(cam, loader, lambda b: b, target="true")
        pred = grad_cam.localize_loader(cam, loader, lambda b: b, target="predicted")
    assert true["index"].tolist() == [10, 11] and true["predicted"].tolist() == [0, 0]
    assert true["label"].tolist() == [3, 0]
    assert true["hit"].tolist() == [True, False]    # image 10: class 3's map is in quadrant 3
    assert pred["hit"].tolist() == [False, False]   # the predicted class 0 points at quadrant 0
    with pytest.raises(ValueError, match="target"):
        grad_cam.localize_loader(cam, loader, lambda b: b, target="other")


def test_overlay_puts_red_at_the_peak():
    gray = np.full((32, 32), 0.5, np.float32)
    cam = np.zeros((32, 32), np.float32)
    cam[10, 20] = 1.0
    rgb = plot_utils.overlay_cam(gray, cam, alpha=1.0)
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    r, g, b = rgb[10, 20].astype(int)
    assert r > 100 and r > b + 80 and r > g + 80      # jet's top is red, in RGB order
    r0, _, b0 = rgb[0, 0].astype(int)
    assert b0 > r0 + 80                               # jet's bottom is blue


def _settled(model, size, seed=0):
    """Batch-norm running statistics from a few forward passes (random init leaves them at
    0/1, which makes EfficientNet's activations ~1e-13 at its CAM layer: maps of pure rounding
    noise, whichever implementation computes them)."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(4, 3, size, size, generator=g))
    return model.eval()


def _vit_reshape(tensor, height=6, width=6):
    # pytorch-grad-cam's documented reshape transform for ViT (class token dropped)
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


@pytest.mark.parametrize("arch", ["convnext_tiny", "efficientnet_b0", "regnet_y_400mf",
                                  pytest.param("vit_b_16", marks=BIG),
                                  pytest.param("swin_t", marks=BIG)])
def test_modern_families_match_pytorch_grad_cam(arch):
    torch.manual_seed(0)
    model = _settled(networks.build_model(arch, 4, weights=None, image_size=96), 96)
    layer = networks.cam_target_layer(model, arch)   # called exactly as for the study's three
    x = _images(3, size=96)
    with grad_cam.GradCAM(model, layer) as cam:
        classes, ours = cam(x)                       # each image's predicted class
    assert ours.shape == (3, 96, 96) and (ours.max(axis=(1, 2)) == 1).all()
    kw = {"reshape_transform": _vit_reshape} if arch == "vit_b_16" else {}
    with RefGradCAM(model=model, target_layers=[layer], **kw) as ref:
        theirs = ref(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in classes])
    assert np.abs(ours - theirs).max() <= 1e-3, (arch, np.abs(ours - theirs).max())
