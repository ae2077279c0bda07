"""Long-tail counts, the batch loader and batched augmentation."""

import pytest
import torch

from tidal_lightning.data.augment import random_crop_flip
from tidal_lightning.data.loader import TensorBatchLoader
from tidal_lightning.data.longtail import long_tail_counts, long_tail_indices


def test_cifar10_long_tail_counts_at_ratio_100() -> None:
    # int(5000 * 100 ** (-c / 9)) for c = 0..9, as in the TiDAL code
    assert long_tail_counts(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def test_ratio_one_keeps_everything_and_ratio_below_one_is_refused() -> None:
    assert long_tail_counts(7, 3, 1) == [7, 7, 7]
    with pytest.raises(ValueError, match="imbalance_ratio"):
        long_tail_counts(7, 3, 0.5)


def test_long_tail_indices_keep_the_profile_and_follow_the_seed() -> None:
    targets = torch.arange(3).repeat_interleave(100)[
        torch.randperm(300, generator=torch.Generator().manual_seed(1))
    ]
    kept = long_tail_indices(targets, 3, 10, torch.Generator().manual_seed(0))
    assert torch.bincount(targets[kept]).tolist() == [100, 31, 10]  # 100 * 10 ** (-c / 2)
    assert len(torch.unique(kept)) == len(kept)
    again = long_tail_indices(targets, 3, 10, torch.Generator().manual_seed(0))
    other = long_tail_indices(targets, 3, 10, torch.Generator().manual_seed(5))
    assert kept.tolist() == again.tolist() and kept.tolist() != other.tolist()


@pytest.mark.parametrize(
    ("n", "batch", "sizes"), [(10, 4, [4, 4, 2]), (9, 4, [4, 5]), (1, 4, [1]), (8, 4, [4, 4])]
)
def test_loader_sizes_never_leave_a_single_sample_batch(
    n: int, batch: int, sizes: list[int]
) -> None:
    images = torch.zeros(20, 1, 2, 2, dtype=torch.uint8)
    loader = TensorBatchLoader(
        images,
        torch.zeros(20, dtype=torch.long),
        torch.arange(5, 5 + n),
        batch,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    batches = list(loader)
    assert [len(b[2]) for b in batches] == sizes == [len(b[0]) for b in batches]
    assert len(loader) == len(sizes)
    assert sorted(torch.cat([b[2] for b in batches]).tolist()) == list(range(5, 5 + n))


def test_loader_gathers_the_right_rows() -> None:
    images = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1)
    targets = torch.tensor([10, 11, 12, 13, 14, 15])
    ((x, y, i),) = list(TensorBatchLoader(images, targets, torch.tensor([4, 1, 3]), 8))
    assert (
        i.tolist() == [4, 1, 3] and y.tolist() == [14, 11, 13] and x.flatten().tolist() == [4, 1, 3]
    )


def test_shuffling_loader_needs_a_generator() -> None:
    with pytest.raises(ValueError, match="generator"):
        TensorBatchLoader(torch.zeros(2, 1, 1, 1), torch.zeros(2), torch.arange(2), 1, shuffle=True)


def test_crop_is_a_shifted_window_of_the_zero_padded_image() -> None:
    image = torch.arange(1, 26, dtype=torch.uint8).view(1, 1, 5, 5).repeat(64, 2, 1, 1)
    out = random_crop_flip(image, pad=2, flip=False, generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(image[0], (2, 2, 2, 2))
    windows = {
        tuple(padded[:, dy : dy + 5, dx : dx + 5].flatten().tolist())
        for dy in range(5)
        for dx in range(5)
    }
    seen = {tuple(o.flatten().tolist()) for o in out}
    assert seen <= windows
    assert len(seen) > 10  # 25 offsets, 64 draws: most of them appear
    assert torch.equal(out[:, 0], out[:, 1])  # one offset per sample, shared by its channels


def test_flip_mirrors_about_half_and_no_op_settings_are_identity() -> None:
    image = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).repeat(200, 1, 1, 1)
    out = random_crop_flip(image, pad=0, flip=True, generator=torch.Generator().manual_seed(0))
    mirrored = (out == image.flip(3)).flatten(1).all(1)
    kept = (out == image).flatten(1).all(1)
    assert bool((mirrored ^ kept).all()) and 70 < int(mirrored.sum()) < 130
    same = random_crop_flip(image, pad=0, flip=False, generator=torch.Generator())
    assert torch.equal(same, image)


def test_normalize_standardises_each_channel_by_hand() -> None:
    from tidal_lightning.data.datamodules import CIFAR10

    data = CIFAR10(root="unused")
    images = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1).repeat(2, 1, 2, 2)
    out = data.normalize(images)
    # (x / 255 - mean_c) / std_c:
    # (0 - 0.4914) / 0.2470, (1 - 0.4822) / 0.2435, (0.2 - 0.4465) / 0.2616
    expected = torch.tensor([-1.989474, 2.126489, -0.942278]).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
