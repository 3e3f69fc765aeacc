"""Tests for the coreset rules on hand-made 1-D examples whose greedy orders are worked out below."""

import pytest
import torch

from dream_pl.coreset import herding, kcenter


def column(values: list[float]) -> torch.Tensor:
    return torch.tensor(values).view(-1, 1)


# --- herding --------------------------------------------------------------------------------------


def test_herding_greedy_order_by_hand():
    # points 0, 1, 2, 10; class mean mu = 13/4 = 3.25.
    # t=1: |x - 3.25| = 3.25, 2.25, 1.25, 6.75            -> 2 (x=2), running mean 2
    # t=2: (2 + x)/2 = 1, 1.5, 6 -> 2.25, 1.75, 2.75      -> 1 (x=1), running mean 1.5
    # t=3: (3 + x)/3 = 1, 13/3 -> 2.25, 1.083             -> 3 (x=10), not the nearer x=0
    # t=4: only 0 is left                                  -> 0
    x = column([0.0, 1.0, 2.0, 10.0])
    assert herding(x, 4).tolist() == [2, 1, 3, 0]
    assert herding(x, 2).tolist() == [2, 1]


def test_herding_2d_by_hand():
    # points (0,0), (4,0), (0,4), (1,1): mu = (5/4, 5/4)
    # t=1: squared distances 3.125, 9.125, 9.125, 0.125  -> 3 (1,1)
    # t=2: means with (1,1): (.5,.5) 1.125; (2.5,.5) 2.125; (.5,2.5) 2.125  -> 0
    # t=3: running mean (.5,.5): ((1,1)+(4,0))/3 = (5/3,1/3) and ((1,1)+(0,4))/3 = (1/3,5/3),
    #      both at squared distance (5/12)^2 + (11/12)^2, an exact tie -> the first, 1
    x = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [1.0, 1.0]])
    assert herding(x, 4).tolist() == [3, 0, 1, 2]


def test_herding_never_repeats_duplicates():
    x = column([1.0, 1.0, 1.0, 5.0, 1.0])
    picked = herding(x, 5).tolist()
    assert sorted(picked) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("k", [0, 5])
def test_herding_rejects_bad_k(k):
    with pytest.raises(ValueError, match=f"k={k}, M=4"):
        herding(column([0.0, 1.0, 2.0, 3.0]), k)


# --- k-center -------------------------------------------------------------------------------------

# points 0, 1, 3, 7, 15 on a line: the farthest-first order from each possible first point,
# e.g. from 7: farthest is 15; then distances to {7, 15}: 0 -> 7, 1 -> 6, 3 -> 4 -> 0;
# then to {7, 15, 0}: 1 -> 1, 3 -> 3 -> 3; then 1.
LINE = [0.0, 1.0, 3.0, 7.0, 15.0]
FARTHEST_FIRST = {
    0: [0, 4, 3, 2, 1],
    1: [1, 4, 3, 2, 0],
    2: [2, 4, 3, 0, 1],
    3: [3, 4, 0, 2, 1],
    4: [4, 0, 3, 2, 1],
}
SEEDS = 11


def seeded_first(m: int, seed: int) -> int:
    return int(torch.randint(m, (1,), generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("seed", range(SEEDS))
def test_kcenter_farthest_first_order_by_hand(seed):
    first = seeded_first(len(LINE), seed)
    expected = FARTHEST_FIRST[first]
    assert kcenter(column(LINE), 5, seed=seed).tolist() == expected
    assert kcenter(column(LINE), 3, seed=seed).tolist() == expected[:3]


def test_kcenter_seeds_cover_several_first_points():
    # guards the test above: its seeds start from every point of the line
    assert {seeded_first(len(LINE), s) for s in range(SEEDS)} == set(range(len(LINE)))


def test_kcenter_never_repeats_duplicates():
    x = column([0.0, 0.0, 0.0, 1.0, 0.0])
    for seed in range(3):
        picked = kcenter(x, 5, seed=seed).tolist()
        assert sorted(picked) == [0, 1, 2, 3, 4]


def test_kcenter_does_not_touch_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    kcenter(column(LINE), 3, seed=7)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("k", [0, 6])
def test_kcenter_rejects_bad_k(k):
    with pytest.raises(ValueError, match=f"k={k}, M=5"):
        kcenter(column(LINE), k)
