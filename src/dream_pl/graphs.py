"""CUDA-graph capture of fixed-shape steps: one replay instead of hundreds of small kernel launches.

A distillation step or an evaluator step on a tiny set is a few milliseconds of arithmetic spread over
hundreds of kernels, each launched from Python; on a GPU the launches, not the arithmetic, set the pace.
A step qualifies for capture when (i) its shapes are fixed, (ii) the host never reads a device value in
it, and (iii) its random draws come from CUDA generators that are registered with the graph. Then
:class:`GraphedStep` captures it once and each call replays it: the kernels, their random draws
(a registered generator continues its stream on each replay exactly as an eager call would) and nothing
else. ``torch.compile`` is not used for the matching pass: its autograd cannot differentiate a graph that
itself contains a backward pass, which gradient matching needs (second order into the images).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

COMPILE_MODES = ("auto", "on", "off")


def use_graphs(mode: str, device: torch.device) -> bool:
    """Capture CUDA graphs? ``auto`` and ``on``: on a CUDA device (graphs are CUDA-only); ``off``: never."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile={mode!r} is not one of {', '.join(COMPILE_MODES)}")
    return mode != "off" and device.type == "cuda"


def static_formulation(mode: str, device: torch.device) -> bool:
    """Run the capturable formulation (device-side decisions): when capturing, and with ``on`` anywhere.

    ``compile=on`` on a CPU runs the same device-side code eagerly (for tests and for CPU/GPU parity);
    ``auto`` keeps the host-decided path on a CPU, which is the cheaper one there.
    """
    return use_graphs(mode, device) or mode == "on"


class GraphedStep:
    """``fn(*inputs)`` captured in one CUDA graph; calling the object replays it.

    Args:
        fn: the step; returns a tensor or a tuple of tensors (the static outputs, overwritten by each replay:
            read or copy them before the next one). It may only read ``inputs`` and tensors that live as
            long as the graph (parameters updated in place, buffers), never allocate on the host's behalf
            or read a device value back.
        inputs: static input tensors; the caller fills them in place before each replay.
        state: every tensor ``fn`` changes in place (parameters, momentum buffers, accumulators). The
            warm-up run before capture (it initialises cuBLAS/cuDNN work spaces on a side stream) runs
            ``fn`` for real; ``state`` and the generators are restored afterwards, so capturing changes
            nothing.
        generators: the CUDA generators ``fn`` draws from, registered with the graph: re-seed them before a
            replay to make its draws a function of the seed.
    """

    def __init__(
        self,
        fn: Callable[..., Tensor | tuple[Tensor, ...]],
        inputs: Sequence[Tensor] = (),
        *,
        state: Sequence[Tensor] = (),
        generators: Sequence[torch.Generator] = (),
        warmup: int = 1,
    ) -> None:
        self.inputs = tuple(inputs)
        saved = [t.detach().clone() for t in state]
        seeds = [g.get_state() for g in generators]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():
            for t, s in zip(state, saved, strict=True):
                t.copy_(s)
        for g, s in zip(generators, seeds, strict=True):
            g.set_state(s)
        self.graph = torch.cuda.CUDAGraph()
        for g in generators:
            self.graph.register_generator_state(g)
        with torch.cuda.graph(self.graph):
            self.outputs = fn(*self.inputs)

    def __call__(self) -> Tensor | tuple[Tensor, ...]:
        """Replay with the current contents of the inputs; returns the static outputs."""
        self.graph.replay()
        return self.outputs


class GraphRunner:
    """Replays each named pass of the engine from a CUDA graph (a :class:`dream_pl.engine.Runner`).

    A pass is captured on first use and again whenever a tensor it reads or changes was replaced (a
    checkpoint load, a move to another device). If a capture fails (an op this torch cannot capture), the
    runner says so once and runs every pass eagerly from then on: the same computation, unreplayed.
    """

    def __init__(self) -> None:
        self.graphs: dict[str, tuple[tuple[int, ...], GraphedStep]] = {}
        self.enabled = True

    def __call__(
        self,
        name: str,
        fn: Callable[..., Any],
        inputs: list[Tensor],
        *,
        state: list[Tensor],
        reads: list[Tensor],
        generators: list[torch.Generator],
    ) -> Any:
        """``fn(*inputs)``, replayed; ``state``/``reads``: the tensors it changes in place / only reads."""
        if not self.enabled:
            return fn(*inputs)
        key = tuple(t.data_ptr() for t in (*inputs, *state, *reads))
        cached = self.graphs.get(name)
        if cached is None or cached[0] != key:
            try:
                cached = (key, GraphedStep(fn, inputs, state=state, generators=generators))
            except RuntimeError as error:
                log.warning("capturing the %s pass failed (%s); every pass runs eagerly", name, error)
                self.enabled, self.graphs = False, {}
                return fn(*inputs)
            self.graphs[name] = cached
        return cached[1]()


def sgd_step_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    buffers: Sequence[Tensor],
    *,
    lr: float | Tensor,
    momentum: float,
    weight_decay: float,
) -> None:
    """``torch.optim.SGD``'s update (no dampening, no Nesterov), in place, with explicit momentum buffers.

    Buffers start at zero: ``0 * momentum + g`` is ``g``, exactly torch's first step (which copies ``g``).
    ``lr`` may be a 0-d tensor, so a captured step follows a schedule that changes it in place.
    """
    with torch.no_grad():
        for p, g, buf in zip(params, grads, buffers, strict=True):
            if weight_decay:
                g = g.add(p, alpha=weight_decay)
            buf.mul_(momentum).add_(g)
            if isinstance(lr, Tensor):
                p.sub_(buf * lr)
            else:
                p.add_(buf, alpha=-lr)
