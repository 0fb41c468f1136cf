import socket
import time

import pytest
import torch
from torch import nn
from torchvision import models

import networks

# VGG-16 (138M parameters, 2 s to build) is in the full suite only where a smaller model takes
# the same code path in `make test-quick`
BIG = pytest.mark.slow


@pytest.mark.parametrize("arch", [pytest.param("vgg16", marks=BIG), "resnet18", "densenet121"])
@pytest.mark.parametrize("num_classes", [3, 4])
def test_build_offline_with_new_head(arch, num_classes):
    m = networks.build_model(arch, num_classes, weights=None).eval()
    with torch.no_grad():
        assert m(torch.randn(2, 3, 64, 64)).shape == (2, num_classes)
    if num_classes == 3:
        return  # the layer below does not depend on the head: looked at once per architecture
    # the study's layer: the last convolutional block's output, post-ReLU, at 1/32 of the input
    layer = networks.cam_target_layer(m, arch)
    path, channels = {"vgg16": ("features.29", 512), "resnet18": ("layer4", 512),
                      "densenet121": ("final_relu", 1024)}[arch]
    assert networks.module_path(m, layer) == path
    seen = []
    handle = layer.register_forward_hook(lambda mod, i, o: seen.append(o))
    with torch.no_grad():
        m(torch.randn(2, 3, 224, 224))
    handle.remove()
    assert seen[0].shape == (2, channels, 14 if arch == "vgg16" else 7, 14 if arch == "vgg16" else 7)
    assert seen[0].min() >= 0  # after the ReLU: Grad-CAM's positive evidence
    if arch == "densenet121":
        assert isinstance(layer, nn.ReLU) and not layer.inplace


def test_unknown_arch_lists_valid():
    with pytest.raises(ValueError, match="valid: .*vgg16, resnet18, densenet121"):
        networks.build_model("alexnet2", 4, weights=None)


def test_offline_imagenet_error_is_fast_and_names_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*a, **k):
        raise OSError("network unreachable (test)")
    monkeypatch.setattr(socket, "create_connection", no_network)
    t = time.perf_counter()
    with pytest.raises(RuntimeError) as e:
        networks.build_model("resnet18", 4, weights="imagenet")
    assert time.perf_counter() - t < 10
    msg = str(e.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in msg
    assert "weights=<path" in msg


def test_imagenet_from_torch_home_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ref = models.resnet18(weights=None)
    target = networks.imagenet_weights_file("resnet18")
    target.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), target)
    m = networks.build_model("resnet18", 4, weights="imagenet")
    assert torch.equal(m.conv1.weight, ref.conv1.weight)
    assert m.fc.out_features == 4
    assert networks.resolve_weights("resnet18", "auto") == "imagenet"
    assert networks.resolve_weights("vgg16", "auto") is None


@pytest.mark.parametrize("arch", ["resnet18", "densenet121"])
def test_local_pth_loads_backbone(arch, tmp_path):
    ref = getattr(models, arch)(weights=None)
    state = ref.state_dict()
    if arch == "densenet121":  # torchvision's ImageNet file uses the legacy 'norm.1' keys
        state = {k.replace("norm1", "norm.1").replace("conv1", "conv.1") if "denselayer" in k
                 else k: v for k, v in state.items()}
    torch.save(state, tmp_path / "w.pth")
    m = networks.build_model(arch, 3, weights=tmp_path / "w.pth")
    first = "conv1.weight" if arch == "resnet18" else "features.conv0.weight"
    assert torch.equal(m.state_dict()[first], ref.state_dict()[first])
    if arch == "densenet121":
        k = "features.denseblock1.denselayer1.norm1.weight"
        assert torch.equal(m.state_dict()[k], ref.state_dict()[k])


@pytest.mark.slow
def test_wrong_weights_file_raises(tmp_path):
    torch.save(models.resnet18(weights=None).state_dict(), tmp_path / "r.pth")
    with pytest.raises(ValueError, match="do not fit vgg16"):
        networks.build_model("vgg16", 4, weights=tmp_path / "r.pth")
    with pytest.raises(FileNotFoundError, match="not found"):
        networks.build_model("vgg16", 4, weights=tmp_path / "missing.pth")


def test_cam_layer_by_name_and_its_path():
    m = networks.build_model("resnet18", 4, weights=None)
    assert networks.cam_target_layer(m, "resnet18", "layer3") is m.layer3
    assert networks.module_path(m, networks.cam_target_layer(m, "resnet18")) == "layer4"
    # VGG-16's default, features.29: test_build_offline_with_new_head
    d = networks.build_model("densenet121", 4, weights=None)
    assert networks.module_path(d, networks.cam_target_layer(d, "densenet121")) == "final_relu"
    assert networks.cam_target_layer(d, "densenet121", "features.denseblock3") \
        is d.features.denseblock3
    with pytest.raises(ValueError, match="no submodule 'layer9'.*layer4"):
        networks.cam_target_layer(m, "resnet18", "layer9")
    with pytest.raises(ValueError, match="not a submodule"):
        networks.module_path(m, nn.Linear(2, 2))


MODERN = ("convnext_tiny", "efficientnet_b0", "regnet_y_400mf", "vit_b_16", "swin_t")


@pytest.mark.parametrize("arch,size,layer,grid", [
    ("convnext_tiny", 64, "features.7", 2), ("efficientnet_b0", 64, "features.8", 2),
    ("regnet_y_400mf", 64, "trunk_output", 2), ("vit_b_16", 64, "encoder.layers.encoder_layer_11.ln_1", 4),
    ("swin_t", 64, "permute", 2), ("mobilenet_v3_small", 64, "features.12", 2),
    ("squeezenet1_0", 64, "features.12", 3), ("googlenet", 64, "inception5b", 2),
    pytest.param("vgg16_bn", 64, "features.42", 4, marks=BIG), ("resnext50_32x4d", 64, "layer4", 2)])
def test_any_torchvision_classifier_builds_with_a_head_found_by_looking(arch, size, layer, grid):
    m = networks.build_model(arch, 3, weights=None, image_size=size).eval()
    with torch.no_grad():
        assert m(torch.randn(2, 3, size, size)).shape == (2, 3)
    # no ImageNet-sized layer is left: the 1000-way head was found and replaced
    assert not any(getattr(x, "out_features", 0) == 1000 or getattr(x, "out_channels", 0) == 1000
                   for x in m.modules())
    target = networks.cam_target_layer(m, arch)
    assert networks.module_path(m, target) == layer
    seen = []
    handle = target.register_forward_hook(lambda mod, i, o: seen.append(o))
    with torch.no_grad():
        m(torch.randn(2, 3, size, size))
    handle.remove()
    out = getattr(target, "cam_reshape", lambda t: t)(seen[0])  # a ViT's tokens as a map
    assert out.ndim == 4 and out.shape[0] == 2 and out.shape[-2:] == (grid, grid)


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match="close matches: convnext_tiny"):
        networks.build_model("convnext_tinny", 4, weights=None)
    with pytest.raises(ValueError, match=r"networks.available\(\) lists all 80"):
        networks.build_model("alexnet2", 4, weights=None)


def test_default_imagenet_weights_and_learning_rates_per_family(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert networks.imagenet_weights_file("regnet_y_400mf").name == "regnet_y_400mf-e6988f5f.pth"
    assert networks.imagenet_weights_file("vgg16").name == "vgg16-397923af.pth"  # the study's V1
    lrs = {a: networks.scratch_lr(a) for a in ("vgg16", "resnet18", "convnext_tiny", "vit_b_16",
                                               "swin_t", "efficientnet_b0")}
    assert lrs == {"vgg16": 5e-5, "resnet18": 1e-3, "convnext_tiny": 2e-4, "vit_b_16": 1e-4,
                   "swin_t": 1e-4, "efficientnet_b0": 1e-3}
    assert {networks.default_lr(a, pretrained=True) for a in MODERN} == {3e-5}


@pytest.mark.slow
def test_vit_position_embeddings_follow_the_input_size(tmp_path):
    """ImageNet ViT weights (224 px) load into a ViT built for another size: the position
    embeddings are interpolated to its grid; a checkpoint rebuilds at its own size."""
    from torchvision.models.vision_transformer import VisionTransformer
    small = dict(patch_size=16, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16)
    big = VisionTransformer(image_size=224, **small)                  # 14x14 grid + class token
    state = networks._fit_positions(big.state_dict(), VisionTransformer(image_size=64, **small),
                                    "vit")
    assert state["encoder.pos_embedding"].shape == (1, 1 + 4 * 4, 8)
    m = networks.build_model("vit_b_16", 4, weights=None, image_size=32)
    import checkpoints
    checkpoints.save_checkpoint(tmp_path / "v.pt", m, arch="vit_b_16", class_names=list("abcd"),
                                image_size=32)
    again, _ = checkpoints.load_checkpoint(tmp_path / "v.pt")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m.eval()(x), again(x))


def test_dropout_setting_reaches_the_classifier_and_only_where_there_is_one():
    vgg = networks.build_model("vgg16", 4, weights=None, dropout=0.0)
    assert sorted({m.p for m in vgg.modules() if isinstance(m, nn.Dropout)}) == [0.0]  # was 0.5
    # on a small family: the same weights either way (a checkpoint loads whatever the setting),
    # nothing random left in training mode without dropout, the same outputs in eval mode
    torch.manual_seed(0)
    plain = networks.build_model("mobilenet_v3_small", 4, weights=None)
    torch.manual_seed(0)
    none = networks.build_model("mobilenet_v3_small", 4, weights=None, dropout=0.0)
    a, b = plain.state_dict(), none.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        none.train()
        plain.train()
        torch.manual_seed(1)
        y0 = plain(x)
        assert not torch.equal(y0, plain(x))
        assert torch.equal(none(x), none(x))
        assert torch.allclose(plain.eval()(x), none.eval()(x))
    for arch in ("resnet18", "convnext_tiny"):  # a builder without 'dropout' / one swallowing it
        with pytest.raises(ValueError, match=f"{arch} has no dropout setting.*leave it unset"):
            networks.build_model(arch, 4, weights=None, dropout=0.1)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.5"):
        networks.build_model("vgg16", 4, weights=None, dropout=1.5)
