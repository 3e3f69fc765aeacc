"""DistillProgressBar: outer/inner description, total over the whole run, resume, no terminal."""

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.callbacks.progress.rich_progress import RichProgressBarTheme

from dream_pl.callbacks import DistillProgressBar, progress_text


class _Endless(torch.utils.data.IterableDataset):
    def __iter__(self):
        i = 0
        while True:
            yield torch.tensor([float(i)])
            i += 1


class _Manual(pl.LightningModule):
    """One manual optimiser step per batch, like the distillation module; logs ``loss`` to the bar."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.w = torch.nn.Parameter(torch.ones(1))
        self.seen: list[tuple[int, str, float, float]] = []  # (step, description, completed, total) at start

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        opt.zero_grad()
        loss = ((self.w * batch) ** 2).mean()
        self.manual_backward(loss)
        opt.step()
        self.log("loss", loss, prog_bar=True)

    def on_train_batch_start(self, batch, batch_idx):
        bar = self.trainer.progress_bar_callback
        if bar.progress is None:  # disabled
            return
        task = bar.train_progress_bar
        self.seen.append((self.global_step, task.description, task.completed, task.total))

    def configure_optimizers(self):
        return torch.optim.SGD([self.w], lr=1e-3)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(_Endless(), batch_size=None)


def _fit(model, max_steps, ckpt_path=None, checkpoint=None, **bar_kwargs):
    bar = DistillProgressBar(inner_loops=3, iterations=3, **bar_kwargs)
    trainer = pl.Trainer(
        max_steps=max_steps,
        max_epochs=-1,
        callbacks=[bar] if checkpoint is None else [bar, checkpoint],
        logger=False,
        enable_checkpointing=checkpoint is not None,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(model, ckpt_path=ckpt_path)
    return trainer, bar


@pytest.mark.parametrize(
    ("step", "text"),
    [
        (0, "outer 1/3 · inner 0/3"),
        (1, "outer 1/3 · inner 1/3"),
        (3, "outer 1/3 · inner 3/3"),
        (4, "outer 2/3 · inner 1/3"),
        (7, "outer 3/3 · inner 1/3"),
        (9, "outer 3/3 · inner 3/3"),
    ],
)
def test_progress_text_counts_outer_from_one_and_inner_within_outer(step, text):
    assert progress_text(step, inner_loops=3, iterations=3) == text


def test_progress_text_pads_to_the_totals_width():
    assert progress_text(241, inner_loops=100, iterations=1200) == "outer    3/1200 · inner  41/100"
    assert progress_text(119_999, inner_loops=100, iterations=1200) == "outer 1200/1200 · inner  99/100"
    assert progress_text(5, inner_loops=1, iterations=5) == "outer 5/5 · inner 1/1"


@pytest.mark.parametrize(("step", "inner_loops", "iterations"), [(-1, 3, 3), (0, 0, 3), (0, 3, 0)])
def test_progress_text_rejects_bad_arguments(step, inner_loops, iterations):
    with pytest.raises(ValueError, match="need step"):
        progress_text(step, inner_loops, iterations)
    if step == 0:
        with pytest.raises(ValueError, match="need step"):
            DistillProgressBar(inner_loops=inner_loops, iterations=iterations)


def test_bar_describes_outer_inner_over_the_whole_run(capsys):
    model = _Manual()
    trainer, bar = _fit(model, max_steps=7)
    assert trainer.progress_bar_callback is bar
    assert trainer.global_step == 7
    task = bar.train_progress_bar
    assert task.description == "outer 3/3 · inner 1/3"
    assert task.total == 7
    assert task.completed == 7
    # before each step: the position so far, against the run's total
    assert [s[1] for s in model.seen[:4]] == [
        "outer 1/3 · inner 0/3",
        "outer 1/3 · inner 1/3",
        "outer 1/3 · inner 2/3",
        "outer 1/3 · inner 3/3",
    ]
    assert [(s[2], s[3]) for s in model.seen] == [(float(i), 7.0) for i in range(7)]
    assert "loss" in bar.get_metrics(trainer, model)
    # what reached the (non-terminal) console
    out = capsys.readouterr().out
    assert "outer 3/3 · inner 1/3" in out
    assert "7/7" in out
    assert "loss" in out
    for text in (out, task.description):
        assert "Epoch" not in text
        assert "-2" not in text


@pytest.mark.parametrize("where", ["mid_run", "after_fit"])
def test_bar_resumes_at_the_checkpointed_step(tmp_path, where):
    ckpt = tmp_path / "mid.ckpt"
    if where == "mid_run":  # as the distillation's last.ckpt: Lightning skips on_train_epoch_start on resume
        checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="mid", every_n_train_steps=4, save_top_k=-1)
        _fit(_Manual(), max_steps=7, checkpoint=checkpoint)
    else:  # a finished 4-step fit: the resumed run starts a new epoch
        trainer, _ = _fit(_Manual(), max_steps=4)
        trainer.save_checkpoint(ckpt)
    assert torch.load(ckpt, weights_only=False)["global_step"] == 4

    resumed = _Manual()
    trainer, bar = _fit(resumed, max_steps=7, ckpt_path=str(ckpt))
    assert trainer.global_step == 7
    # the first resumed step starts at 4 of 7 (not 0 of 3 left), in outer iteration 2
    assert resumed.seen[0] == (4, "outer 2/3 · inner 1/3", 4.0, 7.0)
    assert [s[2] for s in resumed.seen] == [4.0, 5.0, 6.0]
    task = bar.train_progress_bar
    assert (task.description, task.completed, task.total) == ("outer 3/3 · inner 1/3", 7.0, 7.0)


def test_bar_keeps_the_theme_and_can_be_disabled():
    model = _Manual()
    _, bar = _fit(model, max_steps=2, theme=RichProgressBarTheme(description="bold"))
    assert bar.train_progress_bar.description == "[bold]outer 1/3 · inner 2/3"

    quiet = _Manual()
    trainer, bar = _fit(quiet, max_steps=2, refresh_rate=0)
    assert trainer.global_step == 2
    assert bar.progress is None
