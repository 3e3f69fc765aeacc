"""One progress bar over an evaluation: sets x repeats x epochs, naming the set and the architecture.

Evaluation is most of a run's wall-clock on a CPU (a 1,000-epoch IPC 10 repeat is ~46 min on 2 cores), so it
shows where it is, in ``dream_pl.train``'s final evaluation, in ``dream_pl.evaluate`` and in the periodic
evaluations while distilling (there as a second line of the distillation's own bar).
"""

from __future__ import annotations

from types import TracebackType

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class EvaluationBar:
    """A bar of ``total`` network-epochs, on its own display or as a task of a running ``progress``.

    ``describe`` names what trains now; ``advance`` (the ``on_epoch`` of
    :func:`dream_pl.evaluation.protocol.evaluate_set`) moves it by the networks one epoch trained.
    ``enabled=False`` shows nothing (tests, benchmarks, ``trainer.enable_progress_bar=false``).
    """

    def __init__(self, total: int, *, enabled: bool = True, progress: Progress | None = None) -> None:
        self.enabled, self.own = enabled, progress is None
        self.progress = progress if progress is not None else _progress()
        self.total, self.done = total, 0
        self.task: int | None = None

    def __enter__(self) -> EvaluationBar:
        if self.enabled:
            if self.own:
                self.progress.start()
            self.task = self.progress.add_task("evaluating", total=self.total)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, trace: TracebackType | None
    ) -> None:
        if not self.enabled or self.task is None:
            return
        if self.own:
            self.progress.stop()
        else:  # a line of someone else's display: leave it as it was
            self.progress.remove_task(self.task)

    def describe(self, label: str, model: str, repeats: int) -> None:
        """Say which set trains on which architecture (``repeats`` networks)."""
        if self.enabled and self.task is not None:
            s = "s" * (repeats != 1)
            self.progress.update(
                self.task, description=f"evaluating {label} on {model} ({repeats} network{s})"
            )

    def advance(self, networks: int) -> None:
        """One epoch of ``networks`` networks."""
        self.done += networks
        if self.enabled and self.task is not None:
            self.progress.update(self.task, completed=self.done)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("network-epochs"),
        TimeElapsedColumn(),
    )
