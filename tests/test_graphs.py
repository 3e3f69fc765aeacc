"""``dream_pl.graphs``: the explicit SGD step against ``torch.optim.SGD``; pass capture (CUDA only)."""

import pytest
import torch

from dream_pl.graphs import GraphRunner, sgd_step_, static_formulation, use_graphs

MOMENTUM, WEIGHT_DECAY = 0.9, 5e-4


def _params(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, generator=g), torch.randn(5, generator=g), torch.randn((), generator=g)]


def _grads(step: int, like: list[torch.Tensor]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=g) for p in like]


@pytest.mark.parametrize("lr_kind", ["float", "tensor"])
def test_sgd_step_is_torch_sgd_with_momentum_and_weight_decay(lr_kind):
    """Five steps of the explicit update equal ``torch.optim.SGD``'s (no dampening, no Nesterov)."""
    lr = 0.05
    mine = _params()
    theirs = [p.clone().requires_grad_(True) for p in mine]
    opt = torch.optim.SGD(theirs, lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    buffers = [torch.zeros_like(p) for p in mine]
    step_lr = torch.tensor(lr) if lr_kind == "tensor" else lr
    for step in range(5):
        grads = _grads(step, mine)
        sgd_step_(mine, grads, buffers, lr=step_lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        for p, g in zip(theirs, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        for p, q, buf in zip(mine, theirs, buffers, strict=True):
            torch.testing.assert_close(p, q.detach(), rtol=0, atol=1e-7)
            torch.testing.assert_close(buf, opt.state[q]["momentum_buffer"], rtol=0, atol=1e-7)


def test_the_first_step_of_zero_buffers_is_torch_copy_of_the_gradient():
    """torch's first step copies ``g + wd * p`` into the buffer; ``0 * momentum + g`` must be that exactly."""
    mine = _params(1)
    theirs = [p.clone().requires_grad_(True) for p in mine]
    opt = torch.optim.SGD(theirs, lr=0.1, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    grads = _grads(0, mine)
    buffers = [torch.zeros_like(p) for p in mine]
    sgd_step_(mine, grads, buffers, lr=0.1, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    for p, g in zip(theirs, grads, strict=True):
        p.grad = g.clone()
    opt.step()
    for p, q, buf, g, start in zip(mine, theirs, buffers, grads, _params(1), strict=True):
        assert torch.equal(buf, opt.state[q]["momentum_buffer"])
        assert torch.equal(buf, g.add(start, alpha=WEIGHT_DECAY))
        assert torch.equal(p, q.detach())


def test_a_tensor_lr_changed_in_place_is_followed():
    """A 0-d tensor lr is read at each call (a captured step follows a schedule that writes it in place)."""
    p, buf = torch.ones(3), torch.zeros(3)
    lr = torch.tensor(1.0)
    sgd_step_([p], [torch.ones(3)], [buf], lr=lr, momentum=0.0, weight_decay=0.0)
    lr.fill_(0.5)
    sgd_step_([p], [torch.ones(3)], [buf], lr=lr, momentum=0.0, weight_decay=0.0)
    assert torch.equal(p, torch.full((3,), -0.5))


def test_graphs_are_cuda_only_and_compile_on_runs_the_static_formulation_anywhere():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [use_graphs(m, cpu) for m in ("auto", "on", "off")] == [False, False, False]
    assert [use_graphs(m, cuda) for m in ("auto", "on", "off")] == [True, True, False]
    assert [static_formulation(m, cpu) for m in ("auto", "on", "off")] == [False, True, False]
    with pytest.raises(ValueError, match="compile='max'"):
        use_graphs("max", cpu)


def test_a_disabled_runner_runs_the_pass_eagerly_on_the_cpu():
    """The fallback after a failed capture: every pass is ``fn(*inputs)``, nothing captured."""
    runner = GraphRunner()
    runner.enabled = False
    x = torch.arange(3.0)
    out = runner("match", lambda t: t * 2, [x], state=[], reads=[], generators=[])
    assert torch.equal(out, x * 2)
    assert runner.graphs == {}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_pass_is_captured_once_recaptured_when_a_read_tensor_is_replaced_and_replays_equal_eager():
    device = torch.device("cuda")
    weight = torch.randn(8, 8, device=device, dtype=torch.float64)
    x = torch.randn(4, 8, device=device, dtype=torch.float64)
    acc = torch.zeros(4, 8, device=device, dtype=torch.float64)
    calls = []

    def fn(inp):
        calls.append(1)  # Python runs only while warming up and capturing, never on a replay
        acc.add_(inp @ weight)
        return acc * 2

    runner = GraphRunner()
    out = runner("pass", fn, [x], state=[acc], reads=[weight], generators=[]).clone()
    expected = 2 * (x @ weight)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)  # capture changed nothing
    first, traced = runner.graphs["pass"], len(calls)
    x.copy_(torch.randn_like(x))  # new contents of the static input
    out = runner("pass", fn, [x], state=[acc], reads=[weight], generators=[]).clone()
    expected = expected + 2 * (x @ weight)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert runner.graphs["pass"] is first
    assert len(calls) == traced
    old = weight  # kept alive, so the replacement cannot reuse its address
    weight = torch.randn(8, 8, device=device, dtype=torch.float64)  # a replaced tensor (a checkpoint load)
    out = runner("pass", fn, [x], state=[acc], reads=[weight], generators=[]).clone()
    expected = expected + 2 * (x @ weight)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    assert runner.graphs["pass"] is not first
    assert len(calls) > traced
    assert old.data_ptr() != weight.data_ptr()
    assert runner.enabled
