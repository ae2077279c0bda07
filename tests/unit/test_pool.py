"""Labeled/pool bookkeeping and the initial set."""

import pytest
import torch

from tidal_lightning.al.pool import LabelPool, draw_initial
from tidal_lightning.seeding import derive_seed


def test_labeling_moves_samples_and_keeps_sets_disjoint() -> None:
    pool = LabelPool(10, torch.tensor([0, 2, 3, 5, 7, 9]))
    pool.label(torch.tensor([3, 7]))
    assert pool.labeled_indices.tolist() == [3, 7]
    assert pool.unlabeled_indices.tolist() == [0, 2, 5, 9]
    assert pool.num_labeled == 2 and pool.num_unlabeled == 4
    pool.label(torch.tensor([9]))
    assert set(pool.labeled_indices.tolist()).isdisjoint(pool.unlabeled_indices.tolist())


@pytest.mark.parametrize(
    ("indices", "message"), [([3], "already labeled"), ([4], "not in the pool"), ([0, 0], "twice")]
)
def test_bad_labeling_is_refused(indices: list[int], message: str) -> None:
    pool = LabelPool(10, torch.tensor([0, 2, 3, 5]))
    pool.label(torch.tensor([3]))
    with pytest.raises(ValueError, match=message):
        pool.label(torch.tensor(indices))
    assert pool.labeled_indices.tolist() == [3]


def test_class_balanced_initial_set() -> None:
    targets = torch.tensor([0] * 10 + [1] * 10 + [2] * 2)
    pool = torch.arange(22)
    picked = draw_initial(targets, pool, 9, 3, "class_balanced", torch.Generator().manual_seed(0))
    # 3 per class, but class 2 has only 2: the shortfall comes from the rest of the pool
    counts = torch.bincount(targets[picked], minlength=3).tolist()
    assert len(picked) == 9 and len(set(picked.tolist())) == 9
    assert counts[2] == 2 and counts[0] >= 3 and counts[1] >= 3


def test_random_initial_set_is_drawn_from_the_pool() -> None:
    pool = torch.tensor([1, 4, 6, 8, 9])
    picked = draw_initial(
        torch.zeros(10, dtype=torch.long), pool, 3, 1, "random", torch.Generator().manual_seed(0)
    )
    assert set(picked.tolist()) <= set(pool.tolist()) and len(set(picked.tolist())) == 3


def test_derived_seeds_depend_on_seed_cycle_and_stream_only() -> None:
    assert derive_seed(0, 1, "shuffle") == derive_seed(0, 1, "shuffle")
    assert (
        len(
            {
                derive_seed(0, 1, "shuffle"),
                derive_seed(1, 1, "shuffle"),
                derive_seed(0, 2, "shuffle"),
                derive_seed(0, 1, "augment"),
            }
        )
        == 4
    )
    assert 0 <= derive_seed(123, 4, "model") < 2**32


def test_multirun_flag_moves_before_the_overrides() -> None:
    from tidal_lightning.__main__ import multirun_flag_first

    argv = ["+experiment=cifar100_lt", "strategy=tidal_margin", "-m", "seed=0,1,2"]
    assert multirun_flag_first(argv) == [
        "-m",
        "+experiment=cifar100_lt",
        "strategy=tidal_margin",
        "seed=0,1,2",
    ]
    assert multirun_flag_first(["a=1"]) == ["a=1"]
