"""The method group: DC, DSA, DM, IDC and DREAM+ as recipes of the one loop, and DREAM+'s options.

The recipes are checked against their sources' values; DC's loop is checked by hand (match, step, train the
network on the synthetic set, match on the trained network); the bad combinations are refused in one line.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from hydra.errors import ConfigCompositionException

from dream_pl.config import ConfigError, composition_error, validate
from dream_pl.data import RealSet, load_dataset
from dream_pl.engine import Engine, effective_lr_img
from dream_pl.matchers import GradientMatcher
from dream_pl.matchers.gradient import feature_distance
from dream_pl.models import network_factory
from dream_pl.schemas import METHODS
from dream_pl.workflow import engine_parts


def make_engine(cfg) -> Engine:
    data = load_dataset(cfg.dataset.name)
    engine = Engine(**engine_parts(cfg, RealSet.from_data(data, "train"), data.spec))
    engine.prepare()
    engine.initialize()
    return engine


@pytest.mark.parametrize("method", METHODS)
def test_every_method_composes_with_every_sampler_and_init_and_passes_the_checks(compose_train, method):
    for sampler, init in (("dream", "kmeans"), ("random", "random")):
        cfg = compose_train(
            [f"method={method}", f"sampler={sampler}", f"init={init}", "dataset=fashion_mnist"]
        )
        validate(cfg)
        assert cfg.distill.method == method


def test_the_recipes_are_their_sources_values(compose_train):
    dc = compose_train(["method=dc", "dataset=fashion_mnist"])
    d = (
        dc.distill
    )  # DC main.py: lr_img 0.1, batch_real 256, SGD(lr 0.01, momentum 0.5), get_loops(10) = 10, 50
    assert (d.inner_loops, d.net_epochs, d.factor, d.batch_real, d.lr_img, d.lr_rule) == (
        10,
        50,
        1,
        256,
        0.1,
        "normalized",
    )
    assert (d.net_data, d.momentum_net, d.weight_decay_net, d.match_dsa, d.clamp) == (
        "synthetic",
        0.5,
        0.0,
        "none",
        False,
    )
    assert (dc.matcher.metric, dc.matcher.fc, dc.matcher.bias, dc.iterations) == ("cos", True, False, 1000)
    dsa = compose_train(["method=dsa"]).distill
    assert dsa.match_dsa == dsa.net_dsa == "color_crop_cutout_flip_scale_rotate"
    dm = compose_train(["method=dm"])  # main_DM.py: lr_img 1, batch_real 256, a new untrained net per match
    assert (dm.distill.inner_loops, dm.distill.net_data, dm.distill.lr_img, dm.iterations) == (
        1,
        "none",
        1.0,
        20000,
    )
    assert dm.matcher._target_.endswith("DistributionMatcher")
    plus = compose_train(["method=dream_plus"])
    assert (plus.matcher.feature_weight, plus.distill.warmup_epochs, plus.distill.inner_loops) == (
        1.0,
        1.0,
        100,
    )
    idc = compose_train([])
    assert (
        idc.distill.method,
        idc.distill.net_data,
        idc.distill.warmup_epochs,
        idc.matcher.feature_weight,
    ) == ("idc", "real", 0.0, 0.0)


@pytest.mark.parametrize(("ipc", "epochs"), [(1, 1), (10, 50), (20, 25), (50, 10)])
def test_dc_trains_its_network_as_many_epochs_as_its_table_says(compose_train, ipc, epochs):
    cfg = compose_train(["method=dc", f"ipc={ipc}", "dataset=fashion_mnist"])
    assert (cfg.distill.inner_loops, cfg.distill.net_epochs) == (ipc, epochs)


@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        (["method=dc", "ipc=7"], ["distill.net_epochs=None", "1, 10, 20, 30, 40, 50", "ipc=7"]),
        (["method=dm", "distill.net_epochs=3"], ["distill.net_epochs=3 is not used by method=dm", "null"]),
        (["method=idc", "distill.net_epochs=3"], ["distill.net_epochs=3 is not used by method=idc"]),
        (["method=dc", "distill.n_data=500"], ["distill.n_data=500 is not used by method=dc"]),
        (
            ["method=dc", "trainer=ddp"],
            ["net_data=synthetic", "trainer=ddp", "allowed with trainer=ddp: real"],
        ),
        (["distill.net_data=nothing"], ["distill.net_data='nothing'", "real, synthetic, none"]),
        (["distill.lr_rule=dm"], ["distill.lr_rule='dm'", "idc, normalized"]),
        (["distill.warmup_epochs=-1"], ["distill.warmup_epochs=-1.0", ">= 0"]),
    ],
)
def test_a_method_refuses_what_it_does_not_use_in_one_line(compose_train, overrides, said):
    with pytest.raises(ConfigError) as err:
        validate(compose_train(overrides))
    assert "\n" not in str(err.value)
    for part in said:
        assert part in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        (["method=dm", "matcher.metric=l1"], ["matcher.metric", "DistributionMatcher"]),
        (["method=dc", "matcher=distribution"], ["method/dc", "'metric' not in 'DistributionMatcher'"]),
    ],
)
def test_a_method_given_a_loss_key_it_does_not_have_is_refused_while_composing(
    compose_train, overrides, said
):
    with pytest.raises(ConfigCompositionException) as raised:
        compose_train(overrides)
    message = str(composition_error(raised.value))
    assert "\n" not in message
    for part in said:
        assert part in message


def test_normalised_lr_is_the_same_step_on_pixels():
    """DC steps n = (x - mean) / std by lr; the same step on pixels x is lr * std^2 (one channel: exact)."""
    std = torch.tensor([0.3081])
    assert effective_lr_img(0.1, 10, 28, 28, rule="normalized", std=std) == pytest.approx(0.1 * 0.3081**2)
    g_n = torch.randn(
        5
    )  # dL/dn; dL/dx = g_n / std; x steps by lr_x * g_n / std, i.e. n by lr_x * g_n / std^2
    lr_x = effective_lr_img(0.1, 10, 28, 28, rule="normalized", std=std)
    torch.testing.assert_close(lr_x * g_n / std**2, 0.1 * g_n)


def test_dc_by_hand_match_step_train_on_the_synthetic_set_match_again(tmp_path, tiny_cfg):
    """One DC outer iteration of two matches, written out: joint image step (SGD, momentum 0.5), then
    net_epochs full-batch SGD steps on the synthetic set (10 images < batch 16), then a match on the trained
    network; after the last match the network is not trained (DC breaks out before it)."""
    cfg = tiny_cfg(tmp_path, "method=dc", "sampler=random", "init=random", "distill.n_data=null")
    cfg.distill.net_epochs = 3
    engine, ref = make_engine(cfg), make_engine(copy.deepcopy(cfg))
    lr = ref.image_opt.param_groups[0]["lr"]
    assert lr == pytest.approx(0.1 * 0.3081**2)
    x0 = ref.synthetic.images.detach().clone()
    g0 = ref.match_pass(ref.draw_real_indices(0))[1]
    x1 = x0 - lr * g0
    net = copy.deepcopy(ref.net)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.5, weight_decay=0.0)
    labels = torch.arange(10).repeat_interleave(1)
    for _ in range(3):  # 3 epochs x ceil(10 / 16) = 3 updates, each on the whole set
        opt.zero_grad()
        F.cross_entropy(net(ref.real.normalize(x1)), labels).backward()
        opt.step()
    ref.net.load_state_dict(net.state_dict())
    with torch.no_grad():
        ref.synthetic.images.copy_(x1)
    g1 = ref.match_pass(ref.draw_real_indices(1))[1]
    x2 = x1 - lr * (0.5 * g0 + g1)
    logs = [engine.step(0), engine.step(1)]
    torch.testing.assert_close(engine.synthetic.images.detach(), x2, rtol=1e-5, atol=1e-7)
    for p, q in zip(engine.net.parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    assert float(logs[0]["net_loss"]) > 0
    assert float(logs[1]["net_loss"]) == 0.0  # the last match: no training


def test_dm_never_trains_and_draws_a_network_per_match(tmp_path, tiny_cfg):
    cfg = tiny_cfg(tmp_path, "method=dm", "sampler=random", "init=random", "distill.n_data=null")
    cfg.distill.inner_loops = 1  # the tiny runs' 2 stand over DM's
    engine, ref = make_engine(cfg), make_engine(copy.deepcopy(cfg))
    for step in range(3):
        log = engine.step(step)
        assert (log["outer"], float(log["net_loss"])) == (float(step), 0.0)
        ref.draw_network(step)
        for p, q in zip(engine.net.parameters(), ref.net.parameters(), strict=True):
            assert torch.equal(p, q)
    assert not all(
        torch.equal(p, q)
        for p, q in zip(engine.net.parameters(), make_engine(cfg).net.parameters(), strict=False)
    )


def test_the_clamp_is_idcs_and_dc_leaves_the_images_unbounded(tmp_path, tiny_cfg):
    for method, clamped in (("idc", True), ("dc", False)):
        cfg = tiny_cfg(tmp_path, f"method={method}", "sampler=random", "init=random")
        if method == "dc":
            cfg.distill.n_data = None
        engine = make_engine(cfg)
        with torch.no_grad():
            engine.synthetic.images.fill_(1.5)
        engine.project()
        assert bool((engine.synthetic.images == 1.0).all()) is clamped


def test_warm_up_trains_each_fresh_network_on_real_data_before_its_first_match(tmp_path, tiny_cfg):
    """DREAM+: warmup_epochs x 4,000 images / batch 16 updates; 0.01 epochs = 3 updates."""
    cold, warm = (
        make_engine(tiny_cfg(tmp_path, "sampler=random", "init=random", f"distill.warmup_epochs={e}"))
        for e in (0.0, 0.01)
    )
    for engine in (cold, warm):
        engine.draw_network(0)
    assert warm.warm_up(0) > 0
    changed = [
        not torch.equal(p, q) for p, q in zip(warm.net.parameters(), cold.net.parameters(), strict=True)
    ]
    assert all(changed)
    assert "time/warmup_s" in warm.step(0)
    assert "time/warmup_s" not in warm.step(1)


def test_the_feature_term_adds_dreams_plus_mean_feature_distance():
    """weight x metric(mean real feature, mean synthetic feature) on top of the gradient loss."""
    torch.manual_seed(0)
    net = network_factory("convnet", channels=1, num_classes=3, size=28, width=4)()
    x_real, x_syn = torch.randn(6, 1, 28, 28), torch.randn(2, 1, 28, 28, requires_grad=True)
    y_real, y_syn = torch.zeros(6, dtype=torch.long), torch.zeros(2, dtype=torch.long)
    plain = GradientMatcher("mse")(net, x_real, y_real, x_syn, y_syn)
    both = GradientMatcher("mse", feature_weight=2.0)(net, x_real, y_real, x_syn, y_syn)
    f_r, f_s = net.embed(x_real).mean(0), net.embed(x_syn).mean(0)
    torch.testing.assert_close(both - plain, 2.0 * (f_r - f_s).pow(2).sum(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(feature_distance(net, x_real, x_syn, "mse"), (f_r - f_s).pow(2).sum())
    assert torch.autograd.grad(both, x_syn)[0].abs().sum() > 0
    with pytest.raises(ValueError, match=r"matcher.feature_weight=-1 must be a number >= 0"):
        GradientMatcher("mse", feature_weight=-1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", ["dc", "dream_plus"])
def test_a_methods_captured_passes_equal_the_same_passes_run_eagerly(tmp_path, tiny_cfg, method):
    """The synthetic-set feed (DC) and the warm-up and feature term (DREAM+) replay from CUDA graphs exactly
    as they run eagerly: 6 inner steps, float64."""
    from dream_pl.graphs import GraphRunner

    extra = ["distill.n_data=null"] if method == "dc" else ["distill.warmup_epochs=0.01"]
    cfg = tiny_cfg(tmp_path, f"method={method}", "sampler=random", "init=random", *extra)
    if method == "dc":
        cfg.distill.net_epochs = 2

    def built(run=None) -> Engine:
        data = load_dataset(cfg.dataset.name)
        parts = engine_parts(cfg, RealSet.from_data(data, "train"), data.spec)
        engine = Engine(**parts, **({"run": run} if run else {}))
        engine.synthetic.to(device="cuda", dtype=torch.float64)
        engine.net.to(device="cuda", dtype=torch.float64)
        engine.prepare()
        engine.initialize()
        return engine

    runner = GraphRunner()
    captured, eager = built(runner), built()
    for step in range(6):
        captured.step(step)
        eager.step(step)
    assert runner.enabled
    torch.testing.assert_close(captured.synthetic.images, eager.synthetic.images, rtol=1e-9, atol=1e-12)
    for p, q in zip(captured.net.parameters(), eager.net.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)
