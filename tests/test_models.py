import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dream_pl.models import check_model, create_model, list_models, register_model, registry
from dream_pl.models.convnet import MeanPool2, mean_pool2

# (channels, size): MNIST-like, CIFAR-like, TinyImageNet-like.
INPUTS = [(1, 28), (3, 32), (3, 64)]
NUM_CLASSES = 10


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    # Batches of 2 gain nothing from intra-op threads; on a busy 2-core box they cost 3-5x.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _build(name: str, channels: int, size: int, **knobs) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, channels=channels, num_classes=NUM_CLASSES, size=size, **knobs)


def test_registry_lists_every_architecture():
    assert list_models() == ["convnet", "convnet4", "densenet121", "resnet10", "resnetap10"]


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize(("channels", "size"), INPUTS)
def test_forward_embed_shapes_and_gradients(name, channels, size):
    model = _build(name, channels, size)
    x = torch.randn(2, channels, size, size)
    logits = model(x)
    features = model.embed(x)
    assert logits.shape == (2, NUM_CLASSES)
    assert features.shape == (2, model.embed_dim)
    assert isinstance(model.embed_dim, int)
    assert torch.isfinite(logits).all()
    assert torch.isfinite(features).all()
    F.cross_entropy(logits, torch.tensor([0, 1])).backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, param_name
        assert torch.isfinite(param.grad).all(), param_name


@pytest.mark.parametrize(
    ("name", "channels", "size", "expected"),
    [
        # width 128 x (32 / 2**3)**2: 28 px inputs are padded to 32 px.
        ("convnet", 1, 28, 128 * 4 * 4),
        ("convnet", 3, 32, 128 * 4 * 4),
        # width 128 x (64 / 2**4)**2.
        ("convnet4", 3, 64, 128 * 4 * 4),
        ("resnet10", 3, 32, 256),
        ("resnet10", 3, 64, 512),
        ("resnetap10", 3, 32, 8 * 64),
        # 24 + 6*12 = 96 -> 48; 48 + 12*12 = 192 -> 96; 96 + 24*12 = 384 -> 192; 192 + 16*12 = 384.
        ("densenet121", 3, 32, 384),
    ],
)
def test_embed_dim(name, channels, size, expected):
    assert _build(name, channels, size).embed_dim == expected


def test_convnet3_has_exactly_three_conv_weights():
    model = _build("convnet", 3, 32)
    assert sum(param.dim() == 4 for param in model.parameters()) == 3


def test_convnet3_parameter_count():
    model = _build("convnet", 3, 32)
    conv1 = 3 * 128 * 3 * 3 + 128  # weight + bias
    conv23 = 2 * (128 * 128 * 3 * 3 + 128)
    norms = 3 * (128 + 128)  # GroupNorm affine weight + bias
    linear = 128 * 4 * 4 * 10 + 10
    assert conv1 + conv23 + norms + linear == 320_010
    assert sum(param.numel() for param in model.parameters()) == 320_010


def test_convnet_works_under_functional_call_and_vmap():
    model = _build("convnet", 3, 32).eval()
    params = dict(model.named_parameters())
    x = torch.randn(3, 3, 32, 32)

    def one_sample(sample: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, params, (sample.unsqueeze(0),)).squeeze(0)

    torch.testing.assert_close(torch.func.vmap(one_sample)(x), model(x))


def test_unknown_model_message_lists_allowed_names():
    with pytest.raises(ValueError, match="nonexistent") as info:
        create_model("nonexistent", channels=3, num_classes=10, size=32)
    message = str(info.value)
    assert "\n" not in message
    for name in ["convnet", "convnet4", "densenet121", "resnet10", "resnetap10"]:
        assert name in message


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("convnet", ["batch", "group", "instance", "layer", "none"]),
        ("resnet10", ["batch", "instance"]),
        ("resnetap10", ["batch", "instance", "none"]),
    ],
)
def test_bad_norm_message_lists_allowed_values(name, allowed):
    with pytest.raises(ValueError, match="weird") as info:
        _build(name, 3, 32, norm="weird")
    for value in allowed:
        assert value in str(info.value)


@pytest.mark.parametrize(
    ("norm", "norm_type", "groups"),
    [("instance", nn.GroupNorm, 128), ("group", nn.GroupNorm, 4), ("layer", nn.GroupNorm, 1)],
)
def test_convnet_norm_choices(norm, norm_type, groups):
    norms = [m for m in _build("convnet", 3, 32, norm=norm).modules() if isinstance(m, norm_type)]
    assert len(norms) == 3
    assert all(m.num_groups == groups and m.affine for m in norms)


def test_convnet_batch_and_no_norm():
    batch = _build("convnet", 3, 32, norm="batch")
    assert sum(isinstance(m, nn.BatchNorm2d) for m in batch.modules()) == 3
    plain = _build("convnet", 3, 32, norm="none")
    assert not any(isinstance(m, nn.GroupNorm | nn.BatchNorm2d) for m in plain.modules())


def test_create_model_drops_none_overrides():
    model = _build("convnet4", 3, 64, width=None, depth=None, norm=None)
    assert model.embed_dim == 2048  # defaults kept: width 128, depth 4
    narrow = _build("convnet", 3, 32, width=64, depth=None)
    assert narrow.embed_dim == 64 * 4 * 4


def test_register_model_rejects_duplicate_names():
    with pytest.raises(ValueError, match="convnet"):
        register_model("convnet")(lambda **kwargs: nn.Identity())


def test_resnet10_he_normal_init():
    model = _build("resnet10", 3, 64)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    big = max(convs, key=lambda m: m.weight.numel())
    assert big.weight.shape == (512, 512, 3, 3)
    expected = math.sqrt(2 / (3 * 3 * 512))
    assert big.weight.std().item() == pytest.approx(expected, rel=0.01)
    assert big.weight.mean().item() == pytest.approx(0.0, abs=1e-3)
    assert all(m.bias is None for m in convs)


def test_resnet10_cifar_branch_for_small_inputs():
    model = _build("resnet10", 1, 28)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].out_channels == 32
    assert convs[0].kernel_size == (3, 3)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 0
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


def test_resnetap10_downsamples_by_pooling_only():
    model = _build("resnetap10", 3, 32)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.stride == (1, 1) for m in convs)
    assert all(m.bias is None for m in convs)
    # stages 2-4 each pool in the main path and in the shortcut.
    assert sum(isinstance(m, nn.AvgPool2d) for m in model.modules()) == 6
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert all(m.num_groups == m.num_channels for m in norms)


def test_resnetap10_without_norm_uses_conv_bias():
    model = _build("resnetap10", 3, 32, norm="none")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.bias is not None for m in convs)


def _check(name: str, channels: int = 1, size: int = 28, **knobs) -> str:
    """The one-line message of the ValueError ``check_model`` raises."""
    with pytest.raises(ValueError, match=r".") as info:
        check_model(name, knobs, channels=channels, num_classes=NUM_CLASSES, size=size)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("knob", "value"),
    [("width", 0), ("depth", 0), ("width", -3), ("width", 1.5), ("width", True), ("width", "64")],
)
def test_check_model_rejects_bad_integer_knobs(knob, value):
    message = _check("convnet", **{knob: value})
    assert message == f"model.{knob}={value!r} is not allowed; must be an integer >= 1"


@pytest.mark.parametrize(
    ("name", "allowed"),
    [
        ("convnet", "batch, group, instance, layer, none"),
        ("convnet4", "batch, group, instance, layer, none"),
        ("resnet10", "batch, instance"),
        ("resnetap10", "batch, instance, none"),
    ],
)
def test_check_model_bad_norm_lists_the_models_norms(name, allowed):
    assert _check(name, norm="nope") == f"model.norm='nope' is not allowed; allowed: {allowed}"


def test_check_model_rejects_a_norm_another_model_has():
    assert "allowed: batch, instance" in _check("resnet10", norm="layer")


def test_check_model_unknown_knob_lists_allowed_knobs():
    message = _check("convnet", colour="red")
    assert message == "model.colour='red' is not a knob of convnet; allowed: width, depth, norm"


def test_check_model_unknown_name_lists_allowed_names():
    message = _check("nonexistent")
    assert "'nonexistent'" in message
    assert "convnet, convnet4, densenet121, resnet10, resnetap10" in message


@pytest.mark.parametrize("reduction", [0, -0.5, 1.5, math.inf, math.nan, True, "half"])
def test_check_model_densenet_reduction_in_unit_interval(reduction):
    message = _check("densenet121", channels=3, size=32, reduction=reduction)
    assert message == f"model.reduction={reduction!r} is not allowed; must be a finite number > 0 and <= 1"


@pytest.mark.parametrize("reduction", [1, 1.0, 0.5])
def test_check_model_densenet_reduction_accepts_ints_and_floats(reduction):
    check_model("densenet121", {"reduction": reduction}, channels=3, num_classes=NUM_CLASSES, size=32)


def test_check_model_probe_catches_convnet_too_deep_for_the_image():
    # 28 px is padded to 32 and halved 6 times: 0 px.
    message = _check("convnet", depth=6)
    assert message == (
        "model convnet with {'depth': 6} cannot run on 1x28x28 images: "
        "ValueError: depth 6 does not fit 28 px inputs"
    )


def test_check_model_probe_message_is_one_line(monkeypatch):
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("first line\nsecond line")

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_model("broken")(lambda *, channels, num_classes, size: Broken())
    message = _check("broken")
    assert message.endswith("1x28x28 images: RuntimeError: first line second line")


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32)])
def test_check_model_accepts_defaults(name, channels, size):
    check_model(name, {}, channels=channels, num_classes=NUM_CLASSES, size=size)
    nulls = dict.fromkeys(registry.model_options(name))  # None keeps every constructor default
    check_model(name, nulls, channels=channels, num_classes=NUM_CLASSES, size=size)


def test_check_model_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    check_model("convnet", {"width": 8}, channels=3, num_classes=NUM_CLASSES, size=32)
    torch.testing.assert_close(torch.rand(3), expected)


def test_register_model_rejects_limits_for_unknown_knobs():
    with pytest.raises(ValueError, match="colour"):
        register_model("painted", choices={"colour": ("red",)})(
            lambda *, channels, num_classes, size: nn.Identity()
        )
    assert "painted" not in list_models()


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 7, 9), (4, 1, 32, 32)])
def test_mean_pool_equals_avg_pool_with_its_gradients(shape: tuple[int, ...]) -> None:
    """ConvNet's pooling: AvgPool2d(2, 2)'s values, gradients and second derivatives (odd sides cropped)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    ours, ref = mean_pool2(x), torch.nn.AvgPool2d(2, 2)(x)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(ref)
    (g_ours,) = torch.autograd.grad((ours * w).pow(2).sum(), x, create_graph=True)
    (g_ref,) = torch.autograd.grad((ref * w).pow(2).sum(), x, create_graph=True)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        torch.autograd.grad(g_ours.pow(2).sum(), x)[0], torch.autograd.grad(g_ref.pow(2).sum(), x)[0]
    )
    torch.testing.assert_close(MeanPool2()(x), ref, rtol=1e-12, atol=1e-12)  # the CPU's branch
