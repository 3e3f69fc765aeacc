"""The evaluation's progress: one bar of network-epochs, naming the set and the architecture it trains."""

import dataclasses
import io

from rich.console import Console
from rich.progress import Progress

from dream_pl.data import load_dataset
from dream_pl.evaluation.progress import EvaluationBar
from dream_pl.evaluation.protocol import evaluate_set
from dream_pl.models import network_factory


def test_every_epoch_of_every_network_moves_the_bar(mnist_protocol):
    """2 repeats x 3 epochs, looped on the CPU: six network-epochs, reported epoch by epoch."""
    data = load_dataset("mnist_5k")
    images, labels = data.train_images[:20].float() / 255, data.train_labels[:20]
    protocol = dataclasses.replace(mnist_protocol, epochs=3, repeats=2, dsa="", cutmix_p=0.0)
    ticks = []
    spec = data.spec
    evaluate_set(
        network_factory("convnet", channels=1, num_classes=10, size=28, width=4),
        images,
        labels,
        (data.test_images[:50], data.test_labels[:50]),
        model="convnet",
        mean=spec.mean,
        std=spec.std,
        num_classes=10,
        protocol=protocol,
        accelerator="cpu",
        on_epoch=ticks.append,
    )
    assert ticks == [2, 2, 2]


def test_the_bar_names_the_set_and_architecture_and_counts_network_epochs():
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    shared = Progress(console=console)
    with shared, EvaluationBar(6, progress=shared) as bar:
        bar.describe("distilled", "convnet", 2)
        for _ in range(3):
            bar.advance(2)
        (task,) = shared.tasks
        assert (task.description, task.completed, task.total) == (
            "evaluating distilled on convnet (2 networks)",
            6,
            6,
        )
    assert shared.tasks == []  # a line of another display (the distillation's bar) is removed when done


def test_a_disabled_bar_shows_nothing_and_still_counts():
    shared = Progress(console=Console(file=io.StringIO()))
    with EvaluationBar(4, enabled=False, progress=shared) as bar:
        bar.describe("random real (ipc 1)", "resnet10", 1)
        bar.advance(1)
    assert (shared.tasks, bar.done) == ([], 1)
