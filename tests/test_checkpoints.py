"""``dream_pl.checkpoints``: the per-image checkpoint surgery (rows of images, labels, momentum) and the
run identity, on hand-made checkpoints shaped as Lightning writes them (no training)."""

import pytest
import torch
from omegaconf import OmegaConf

from dream_pl.checkpoints import (
    IDENTITY,
    gather_image_rows,
    identity,
    identity_mismatch,
    keep_image_rows,
    per_image_states,
    put_per_image_states,
)
from dream_pl.sharding import Shard, owned_classes

CLASSES, IPC = 4, 2  # class-major rows: class c holds rows 2c and 2c + 1


def checkpoint(stepped: bool = True) -> tuple[dict, torch.optim.Optimizer]:
    """A checkpoint of 4 classes x IPC 2 images of 1 x 2 x 2 (row r filled with r), and its live optimiser.

    ``optimizer_states`` holds the live optimiser's ``state_dict()``, which shares its per-parameter state.
    """
    images = torch.arange(CLASSES * IPC, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
    images.requires_grad_(True)
    opt = torch.optim.SGD([images], lr=0.1, momentum=0.9)
    if stepped:
        images.grad = -torch.arange(CLASSES * IPC, dtype=torch.float32).view(-1, 1, 1, 1).expand_as(images)
        opt.step()
    labels = torch.arange(CLASSES).repeat_interleave(IPC)
    ckpt = {
        "state_dict": {
            "synthetic.images": images.detach(),
            "synthetic.labels": labels,
            "net.w": torch.ones(1),
        },
        "optimizer_states": [opt.state_dict()],
    }
    return ckpt, opt


def rows_of(classes: tuple[int, ...]) -> list[int]:
    return [c * IPC + i for c in classes for i in range(IPC)]


def test_per_image_states_are_images_labels_and_the_image_momentum_once_stepped():
    ckpt, opt = checkpoint()
    states = per_image_states(ckpt)
    assert sorted(states) == ["momentum_buffer", "synthetic.images", "synthetic.labels"]
    assert states["synthetic.images"] is ckpt["state_dict"]["synthetic.images"]
    assert states["momentum_buffer"] is opt.state[opt.param_groups[0]["params"][0]]["momentum_buffer"]
    fresh, _ = checkpoint(stepped=False)  # no step yet: no momentum buffer to carry
    assert sorted(per_image_states(fresh)) == ["synthetic.images", "synthetic.labels"]


def test_putting_states_back_copies_the_optimiser_entries_and_leaves_the_live_optimiser_alone():
    ckpt, opt = checkpoint()
    live = opt.state[opt.param_groups[0]["params"][0]]["momentum_buffer"]
    before = live.clone()
    states = {k: v[:2] + 100 for k, v in per_image_states(ckpt).items()}
    put_per_image_states(ckpt, states)
    assert per_image_states(ckpt)["momentum_buffer"] is states["momentum_buffer"]
    assert ckpt["state_dict"]["synthetic.images"] is states["synthetic.images"]
    assert ckpt["state_dict"]["synthetic.labels"] is states["synthetic.labels"]
    assert torch.equal(ckpt["state_dict"]["net.w"], torch.ones(1))  # other entries untouched
    # the running optimiser still holds its own buffer, unchanged, and so does a fresh state_dict of it
    assert opt.state[opt.param_groups[0]["params"][0]]["momentum_buffer"] is live
    assert torch.equal(live, before)
    assert torch.equal(opt.state_dict()["state"][0]["momentum_buffer"], before)
    assert ckpt["optimizer_states"][0]["param_groups"] == opt.state_dict()["param_groups"]


def test_putting_states_without_momentum_leaves_the_optimiser_states_as_they_are():
    ckpt, _ = checkpoint(stepped=False)
    optimiser_states = ckpt["optimizer_states"][0]
    put_per_image_states(ckpt, {k: v[:2] for k, v in per_image_states(ckpt).items()})
    assert ckpt["optimizer_states"][0] is optimiser_states
    assert len(ckpt["state_dict"]["synthetic.images"]) == 2


@pytest.mark.parametrize(("rank", "world"), [(0, 2), (1, 2), (1, 3), (2, 5), (4, 5)])  # (4, 5): no class
def test_keep_image_rows_cuts_every_per_image_tensor_to_the_held_classes(rank, world):
    ckpt, opt = checkpoint()
    whole = {k: v.clone() for k, v in per_image_states(ckpt).items()}
    live = opt.state_dict()["state"][0]["momentum_buffer"].clone()
    classes = owned_classes(CLASSES, rank, world)
    keep_image_rows(ckpt, Shard(rank, world, classes), IPC)
    kept = per_image_states(ckpt)
    rows = rows_of(classes)
    for key in ("synthetic.images", "synthetic.labels", "momentum_buffer"):
        assert torch.equal(kept[key], whole[key][rows]), key
    assert kept["synthetic.labels"].tolist() == [c for c in classes for _ in range(IPC)]
    assert torch.equal(opt.state_dict()["state"][0]["momentum_buffer"], live)  # the live optimiser's


def test_keep_image_rows_of_one_process_changes_nothing():
    ckpt, _ = checkpoint()
    whole = per_image_states(ckpt)
    keep_image_rows(ckpt, Shard(0, 1, tuple(range(CLASSES))), IPC)
    for key, value in per_image_states(ckpt).items():
        assert torch.equal(value, whole[key]), key


def test_gather_image_rows_of_one_process_is_a_no_op_without_a_process_group():
    ckpt, _ = checkpoint()
    before = {k: v for k, v in per_image_states(ckpt).items()}
    optimiser_states = ckpt["optimizer_states"][0]
    shard = Shard.current(CLASSES)
    assert (shard.world, shard.sharded) == (1, False)
    gather_image_rows(ckpt, shard, IPC, CLASSES)
    assert ckpt["optimizer_states"][0] is optimiser_states
    for key, value in per_image_states(ckpt).items():
        assert value is before[key], key


def test_identity_flattens_the_identity_blocks_and_leaves_out_memory_knobs():
    config = {
        "dataset": {"name": "mnist_5k"},
        "ipc": 10,
        "seed": 0,
        "distill": {"factor": 2, "inner_loops": 100, "lr_img": 0.1},
        "model": {"name": "convnet", "width": 128},
        "matcher": {"metric": "mse"},
        "sampler": {"n_clusters": 128, "embed_chunk": 512},
        "iterations": 1200,
    }
    got = identity(OmegaConf.create(config))
    assert got == {
        "dataset.name": "mnist_5k",
        "ipc": 10,
        "seed": 0,
        "distill.factor": 2,
        "distill.inner_loops": 100,
        "model.name": "convnet",
        "model.width": 128,
        "matcher.metric": "mse",
        "sampler.n_clusters": 128,
    }  # lr_img, iterations (not identity) and sampler.embed_chunk (a memory knob) are not in it
    assert identity(config) == got  # a plain dict (a checkpoint's stored config) reads the same
    assert {key.split(".")[0] for key in got} <= {key.split(".")[0] for key in IDENTITY}


def test_identity_mismatch_says_absent_for_a_key_only_one_side_has():
    then = {"ipc": 1, "seed": 0, "sampler": {"n_clusters": 8}}
    now = OmegaConf.create({"ipc": 1, "seed": 0, "sampler": {"n_clusters": 8, "n_per_cluster": 2}})
    assert identity_mismatch(then, now) == [("sampler.n_per_cluster", "<absent>", 2)]
    assert identity_mismatch(then, OmegaConf.create(then)) == []
    embed = OmegaConf.create({**then, "sampler": {"n_clusters": 8, "embed_chunk": 64}})
    assert identity_mismatch(then, embed) == []  # a memory knob may change on resume
