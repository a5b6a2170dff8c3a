"""Every model config on every kind of input; torchvision parity; ResNets with and without skips."""

import pytest
import torch
import torchvision
from torch import nn

from conftest import make_config, train
from dlrun.build import build, split_model_node
from dlrun.errors import UserError
from dlrun.models.alexnet import alexnet
from dlrun.models.googlenet import googlenet
from dlrun.models.resnet import resnet
from dlrun.models.vgg import vgg

# One sample's shape and layout for each kind of data a model must take.
INPUTS = {
    "digits8x8x1": ((1, 8, 8), "image"),
    "rgb32x32x3": ((3, 32, 32), "image"),
    "signal40": ((40,), "features"),
    "sequence12x5": ((12, 5), "sequence"),
}
# Every model config, with the overrides that keep the big ones quick (the defaults are tested below).
MODELS = {
    "mlp": [], "cnn": [], "lenet": [], "rnn": [], "lstm": [], "gru": [],
    "resnet": ["model.depth=20"], "resnet9": ["model.width=8"], "vgg": ["model.depth=11"],
    "alexnet": [], "googlenet": [],
}
BIG = {"alexnet", "googlenet", "vgg"}  # tens of millions of parameters: slow on 2 CPU cores


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def model_from_config(name, input_shape, num_outputs, layout, *overrides):
    cfg, _ = make_config(f"model={name}", *MODELS.get(name, []), *overrides)
    node, _ = split_model_node(cfg.model)
    return build(node, input_shape=input_shape, num_outputs=num_outputs, layout=layout)


def test_every_model_config_is_tested():
    from dlrun.paths import CONFIG_DIR
    from pathlib import Path

    assert {p.stem for p in (Path(CONFIG_DIR) / "model").glob("*.yaml")} == set(MODELS)


@pytest.mark.parametrize("kind", list(INPUTS))
@pytest.mark.parametrize("name", [pytest.param(m, marks=pytest.mark.slow) if m in BIG else m for m in MODELS])
def test_every_model_takes_every_input_and_a_few_steps_lower_its_loss(name, kind):
    """Forward, backward, then 5 Adam steps on one batch of 8: the loss on that batch must fall.

    The loss is measured with the same seed before and after, so dropout draws the same masks.
    """
    shape, layout = INPUTS[kind]
    torch.manual_seed(0)
    model = model_from_config(name, shape, 3, layout)
    x, y = torch.randn(8, *shape), torch.randint(0, 3, (8,))

    def loss():
        torch.manual_seed(1)
        return nn.functional.cross_entropy(model(x), y)

    before = loss()
    assert before.shape == () and model(x).shape == (8, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(5):
        optimizer.zero_grad()
        loss().backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
        optimizer.step()
    assert loss().item() < before.item()


# torchvision's builders at ImageNet shape (3x224x224, 1000 classes); ours must match exactly.
PARITY = [
    ("alexnet", lambda: alexnet((3, 224, 224), 1000), torchvision.models.alexnet, 61_100_840),
    ("vgg16", lambda: vgg((3, 224, 224), 1000, depth=16), torchvision.models.vgg16, 138_357_544),
    ("vgg11_bn", lambda: vgg((3, 224, 224), 1000, depth=11, batch_norm=True), torchvision.models.vgg11_bn, 132_868_840),
    ("resnet18", lambda: resnet((3, 224, 224), 1000, depth=18), torchvision.models.resnet18, 11_689_512),
    ("resnet50", lambda: resnet((3, 224, 224), 1000, depth=50), torchvision.models.resnet50, 25_557_032),
    ("googlenet", lambda: googlenet((3, 224, 224), 1000),
     lambda: torchvision.models.googlenet(aux_logits=False, init_weights=True), 6_624_904),
]


@pytest.mark.parametrize("name,ours,theirs,count", PARITY, ids=[p[0] for p in PARITY])
def test_imagenet_shape_models_equal_torchvisions_parameter_for_parameter(name, ours, theirs, count):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model, reference = ours(), theirs()
    assert n_params(model) == count
    # Same names and shapes: torchvision's ImageNet state dicts load into ours.
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert model.torchvision_name == name


@pytest.mark.parametrize("depth,paper", [(20, 0.27e6), (32, 0.46e6), (44, 0.66e6), (56, 0.85e6), (110, 1.7e6)])
def test_cifar_resnets_have_the_papers_parameter_counts(depth, paper):
    with torch.device("meta"):
        model = resnet((3, 32, 32), 10, depth=depth)
    assert abs(n_params(model) - paper) / paper < 0.02
    blocks = [m for m in model.modules() if isinstance(m, torchvision.models.resnet.BasicBlock)]
    assert len(blocks) == 3 * (depth - 2) // 6  # 3 stages of n blocks: 6n + 2 layers
    assert [model.layer1[0].conv1.out_channels, model.layer2[0].conv1.out_channels,
            model.layer3[0].conv1.out_channels] == [16, 32, 64]


def zero_residual_branches(model):
    """Zero the convs inside the blocks (not the stem, not the projection shortcuts)."""
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d) and name.startswith("layer") and "downsample" not in name:
                m.weight.zero_()


@pytest.mark.parametrize("depth", [20, 18])
def test_residual_false_removes_exactly_the_skip_connections(depth):
    """With every block's convs at zero, a block's residual branch gives 0: the residual net passes
    its input on through the skips and its output still depends on the input; the plain net's is
    a constant."""
    x = torch.randn(4, 3, 16, 16)
    outputs = {}
    for residual in (True, False):
        torch.manual_seed(0)
        model = resnet((3, 16, 16), 5, depth=depth, residual=residual).eval()
        zero_residual_branches(model)
        outputs[residual] = model(x)
    assert not torch.allclose(outputs[True][0], outputs[True][1])
    assert torch.allclose(outputs[False], outputs[False][:1].expand(4, -1))
    plain, residual = resnet((3, 32, 32), 5, depth=depth, residual=False), resnet((3, 32, 32), 5, depth=depth)
    assert all(block.downsample is None for block in plain.modules() if hasattr(block, "downsample"))
    projections = sum(n_params(b.downsample) for b in residual.modules()
                      if getattr(b, "downsample", None) is not None)
    assert n_params(plain) == n_params(residual) - projections  # same layers; only the projection shortcuts go


def feature_map_sizes(model, x, types=(nn.Conv2d,)):
    sizes = []
    hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[2:])))
             for m in model.modules() if isinstance(m, types)]
    model(x)
    for h in hooks:
        h.remove()
    return sizes


def test_small_inputs_get_the_cifar_stem_and_large_ones_keep_imagenets():
    small, large = resnet((1, 8, 8), 10, depth=18), resnet((3, 224, 224), 1000, depth=18)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1) and small.conv1.in_channels == 1
    assert isinstance(small.maxpool, nn.Identity)
    assert large.conv1.kernel_size == (7, 7) and large.conv1.stride == (2, 2)
    assert feature_map_sizes(small.eval(), torch.zeros(1, 1, 8, 8))[-1] == (1, 1)  # 8 -> 8, 4, 2, 1
    assert resnet((3, 32, 32), 10, depth=18, small_input=False).conv1.kernel_size == (7, 7)
    with pytest.raises(UserError, match="small_input"):
        resnet((3, 32, 32), 10, depth=18, small_input="maybe")


def test_vgg_and_alexnet_drop_the_pools_that_do_not_fit_and_pool_globally():
    model = vgg((1, 8, 8), 10, depth=11)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == 3  # 8 -> 4 -> 2 -> 1; two pools go
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d) and model.classifier[0].in_features == 512
    assert [m.out_features for m in model.classifier if isinstance(m, nn.Linear)] == [512, 512, 10]
    wide = vgg((1, 8, 8), 10, depth=11, fc_width=4096)
    assert [m.out_features for m in wide.classifier if isinstance(m, nn.Linear)] == [4096, 4096, 10]
    assert sum(isinstance(m, nn.MaxPool2d) for m in vgg((3, 32, 32), 10, depth=11).features) == 5
    small = alexnet((3, 32, 32), 10)
    assert small.features[0].kernel_size == (3, 3) and small.classifier[1].in_features == 256
    assert feature_map_sizes(small.eval(), torch.zeros(1, 3, 32, 32), nn.MaxPool2d) == [(15, 15), (7, 7), (3, 3)]


def test_a_stem_that_does_not_fit_is_refused_with_the_sizes():
    with pytest.raises(UserError, match=r"layer 0 does not fit the 4x4 feature map \(it would be 0x0\).*small_input=true"):
        alexnet((3, 4, 4), 10, small_input=False)  # 11x11 stride 4: (4 - 11 + 2*2) / 4 + 1 < 1
    assert alexnet((3, 4, 4), 10)(torch.zeros(2, 3, 4, 4)).shape == (2, 10)


def test_one_dimensional_data_turns_each_conv_into_a_conv1d():
    """A signal is read as a (C, 1, L) image with 1 x k kernels: the first conv then computes
    exactly what a Conv1d with the same weights does."""
    model = resnet((40,), 3, layout="features", depth=20).eval()
    kernels = {m.kernel_size for m in model.modules() if isinstance(m, nn.Conv2d)}
    assert kernels == {(1, 3)}
    x = torch.randn(2, 40)
    conv1d = nn.Conv1d(1, 16, 3, padding=1, bias=False)
    conv1d.weight.data = model.conv1.weight.data[:, :, 0, :]
    assert torch.allclose(model.conv1(x[:, None, None, :])[:, :, 0, :], conv1d(x[:, None, :]), atol=1e-6)
    sequence = vgg((12, 5), 3, layout="sequence", depth=11)
    assert sequence.features[0].in_channels == 5  # F features are the channels, T steps the length
    assert sequence(torch.randn(2, 12, 5)).shape == (2, 3)


@pytest.mark.parametrize("name,norm,kind", [
    ("resnet", "layer", nn.GroupNorm), ("resnet", "group", nn.GroupNorm), ("resnet", "none", None),
    ("vgg", "batch", nn.BatchNorm2d), ("vgg", "group", nn.GroupNorm), ("googlenet", "layer", nn.GroupNorm),
    ("cnn", "batch", nn.BatchNorm2d), ("mlp", "layer", nn.LayerNorm), ("mlp", "batch", nn.BatchNorm1d),
])
def test_model_norm_puts_that_normalisation_everywhere(name, norm, kind):
    model = model_from_config(name, (3, 32, 32), 10, "image", f"model.norm={norm}")
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm))]
    assert all(type(m) is kind for m in norms) and (bool(norms) == (kind is not None))
    if norm == "layer" and kind is nn.GroupNorm:
        assert all(m.num_groups == 1 for m in norms)  # LayerNorm over (C, H, W)
    if norm == "group":
        assert all(m.num_groups == min(32, m.num_channels) for m in norms)  # 32, or fewer for 16 channels
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vgg_batch_norm_switch_and_norm_must_agree():
    with pytest.raises(UserError, match="disagree"):
        vgg((3, 32, 32), 10, depth=11, batch_norm=True, norm="layer")
    assert vgg((3, 32, 32), 10, depth=11, batch_norm=True).torchvision_name == "vgg11_bn"


@pytest.mark.parametrize("name", ["resnet", "vgg", "googlenet", "alexnet"])
def test_torchvision_models_take_the_activation_and_refuse_maxout(name):
    model = model_from_config(name, (3, 32, 32), 10, "image", "model.activation=leaky_relu", "model.negative_slope=0.2")
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    leaky = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert leaky and all(m.negative_slope == 0.2 for m in leaky)
    with pytest.raises(UserError, match="maxout"):
        model_from_config(name, (3, 32, 32), 10, "image", "model.activation=maxout")


def test_unknown_depths_are_refused():
    with pytest.raises(UserError, match="not a ResNet depth"):
        resnet((3, 32, 32), 10, depth=19)
    with pytest.raises(UserError, match="not a VGG"):
        vgg((3, 32, 32), 10, depth=12)


FAST = ["resnet", "vgg", "lenet", "cnn", "mlp", "lstm", "gru", "rnn"]  # resnet-20, vgg-11 by MODELS' overrides
SLOW = {"alexnet": [], "googlenet": [], "resnet18": ["model=resnet", "model.depth=18"],
        "vgg16": ["model=vgg", "model.depth=16"]}


@pytest.mark.parametrize("name", FAST + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW])
def test_each_model_trains_on_the_digits_then_tests(tmp_path, name):
    overrides = SLOW.get(name) or [f"model={name}", *MODELS[name]]
    # The big four: 4 steps, not an epoch (googlenet's epoch took 10 s); the step is what is tested.
    steps = ["trainer.max_steps=4"] if name in SLOW else []
    summary = train(tmp_path, *overrides, "trainer.epochs=1", *steps, "trainer.checkpoint=false", "logger.hparams=false")
    assert summary["status"] == "finished" and summary["epochs"] == 1 and summary["steps"] == (4 if steps else 21)
    assert 0.0 <= summary["test"]["acc"] <= 1.0 and summary["test"]["loss"] == summary["test"]["loss"]  # not NaN
