"""The DDP helpers without a process group, the loader's shards, and the tracker's epoch buffers.

The same code under a real 2-process group is tested in tests/integration/test_ddp.py.
"""

import itertools
from pathlib import Path

import pytest
import torch

from tidal_lightning import distributed
from tidal_lightning.callbacks.training_dynamics import TrainingDynamicsTracker
from tidal_lightning.data.loader import TensorBatchLoader
from tidal_lightning.errors import ConfigError


def test_helpers_are_no_ops_without_a_process_group() -> None:
    assert not distributed.is_distributed()
    assert (distributed.world_size(), distributed.rank()) == (1, 0)
    values = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce_sum_(values) is values and values.tolist() == [1.0, 2.0]
    assert distributed.broadcast_(values) is values and values.tolist() == [1.0, 2.0]
    assert distributed.gather_strided(torch.arange(3), 3).tolist() == [0, 1, 2]
    assert distributed.shard(4).tolist() == [0, 1, 2, 3]
    bn = torch.nn.BatchNorm1d(2)
    bn.running_mean.fill_(3.0)
    distributed.broadcast_buffers_(bn)
    assert bn.running_mean.tolist() == [3.0, 3.0]


@pytest.mark.parametrize(
    ("n", "replicas", "shards"),
    [
        (7, 2, [[0, 2, 4, 6], [1, 3, 5]]),
        (7, 3, [[0, 3, 6], [1, 4], [2, 5]]),
        (2, 3, [[0], [1], []]),
    ],
)
def test_strided_shards_by_hand(n: int, replicas: int, shards: list[list[int]]) -> None:
    got = [distributed.shard(n, replicas, r).tolist() for r in range(replicas)]
    assert got == shards
    assert [distributed.shard_size(n, replicas, r) for r in range(replicas)] == [
        len(s) for s in shards
    ]


def test_shard_refuses_a_rank_outside_the_group() -> None:
    with pytest.raises(ValueError, match="rank 2"):
        distributed.shard(5, 2, 2)


def _old_loader_batches(indices: torch.Tensor, batch_size: int, seed: int, epochs: int) -> list:
    """The loader before DDP support, written out: one permutation per epoch, lone tail merged."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(epochs):
        order = indices[torch.randperm(len(indices), generator=generator)].tolist()
        batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
        if len(batches) > 1 and len(batches[-1]) == 1:
            tail = batches.pop()
            batches[-1] += tail
        out.append(batches)
    return out


def _loader(indices: torch.Tensor, batch_size: int, seed: int, **kwargs: int) -> TensorBatchLoader:
    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1)
    return TensorBatchLoader(
        images,
        torch.arange(40) + 100,
        indices,
        batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )


@pytest.mark.parametrize(("m", "batch_size"), [(13, 4), (9, 4), (8, 4), (17, 2)])
def test_one_process_batches_are_the_pre_ddp_batches(m: int, batch_size: int) -> None:
    indices = torch.randperm(40, generator=torch.Generator().manual_seed(m))[:m]
    loader = _loader(indices, batch_size, seed=3)
    got = [[b[2].tolist() for b in loader] for _ in range(3)]
    assert got == _old_loader_batches(indices, batch_size, seed=3, epochs=3)
    assert len(loader) == len(got[0])


@pytest.mark.parametrize(
    ("m", "batch_size", "replicas"), [(13, 2, 2), (13, 4, 2), (11, 2, 2), (23, 3, 3), (6, 4, 3)]
)
def test_shards_are_disjoint_cover_the_set_and_have_equal_batch_counts(
    m: int, batch_size: int, replicas: int
) -> None:
    indices = torch.randperm(40, generator=torch.Generator().manual_seed(m))[:m]
    loaders = [
        _loader(indices, batch_size, 7, num_replicas=replicas, replica=r) for r in range(replicas)
    ]
    one_process = _old_loader_batches(indices, batch_size, seed=7, epochs=2)
    for epoch in range(2):
        per_rank = [list(loader) for loader in loaders]
        counts = {len(batches) for batches in per_rank}
        assert counts == {len(loaders[0])}, "every rank must step the same number of times"
        seen = [torch.cat([b[2] for b in batches]).tolist() for batches in per_rank]
        assert sorted(itertools.chain(*seen)) == sorted(indices.tolist())  # disjoint, covering
        # every rank drew the single-process permutation and kept its strided share
        permutation = list(itertools.chain(*one_process[epoch]))
        assert seen == [permutation[r::replicas] for r in range(replicas)]
        for batches in per_rank:
            assert min(len(b[2]) for b in batches) >= 2
            for images, targets, batch in batches:  # rows gathered for the right samples
                assert images.flatten().tolist() == batch.tolist()
                assert (targets - 100).tolist() == batch.tolist()


def test_too_few_samples_for_the_processes_is_a_config_error() -> None:
    loader = _loader(torch.arange(5), 2, 0, num_replicas=3, replica=0)
    with pytest.raises(ConfigError, match=r"trainer\.devices"):
        len(loader)


def _epoch(tracker: TrainingDynamicsTracker, batches: list[tuple[list[int], torch.Tensor]]) -> None:
    """One Lightning epoch as the trainer drives the tracker's hooks."""
    tracker.on_train_epoch_start(None, None)  # type: ignore[arg-type]
    for indices, probs in batches:
        tracker.on_train_batch_end(
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            {"probs": probs, "indices": torch.tensor(indices)},
            None,
            0,
        )
    tracker.on_train_epoch_end(None, None)  # type: ignore[arg-type]


def test_a_sample_shown_twice_in_an_epoch_counts_once_with_the_mean_of_its_views() -> None:
    tracker = TrainingDynamicsTracker(num_samples=3, num_classes=2)
    # epoch 1: sample 1 twice (a padding sampler's duplicate), sample 0 once, sample 2 never
    _epoch(
        tracker,
        [([0, 1], torch.tensor([[0.2, 0.8], [0.5, 0.5]])), ([1], torch.tensor([[0.7, 0.3]]))],
    )
    assert tracker.epoch_counts.tolist() == [1, 1, 0]
    torch.testing.assert_close(
        tracker.prob_sums, torch.tensor([[0.2, 0.8], [0.6, 0.4], [0.0, 0.0]])
    )
    # inside epoch 2 the target still excludes epoch 2: (S + p) / (n + 1)
    tracker.on_train_epoch_start(None, None)  # type: ignore[arg-type]
    p = torch.tensor([[0.0, 1.0]])
    torch.testing.assert_close(
        tracker.running_mean_target(torch.tensor([1]), p), torch.tensor([[0.3, 0.7]])
    )
    tracker.on_train_batch_end(None, None, {"probs": p, "indices": torch.tensor([1])}, None, 0)  # type: ignore[arg-type]
    torch.testing.assert_close(
        tracker.running_mean_target(torch.tensor([1]), p), torch.tensor([[0.3, 0.7]])
    )
    tracker.on_train_epoch_end(None, None)  # type: ignore[arg-type]
    assert tracker.epoch_counts.tolist() == [1, 2, 0]
    torch.testing.assert_close(tracker.mean_probs(torch.tensor([1])), torch.tensor([[0.3, 0.7]]))


def test_epoch_buffers_give_bit_identical_sums_to_direct_adds() -> None:
    generator = torch.Generator().manual_seed(0)
    tracker = TrainingDynamicsTracker(num_samples=6, num_classes=4)
    expected = torch.zeros(6, 4)
    for _ in range(4):
        probs = torch.rand(6, 4, generator=generator).softmax(dim=1)
        order = torch.randperm(6, generator=generator)
        _epoch(
            tracker,
            [(order[:3].tolist(), probs[order[:3]]), (order[3:].tolist(), probs[order[3:]])],
        )
        expected = expected + probs
    assert torch.equal(tracker.prob_sums, expected)
    assert tracker.epoch_counts.tolist() == [4] * 6


def test_only_rank_zero_writes_the_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DDP child (rank 1) keeps the state in memory but writes no run file."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    from tidal_lightning.al.records import RunRecords
    from tidal_lightning.al.state import RunState

    state = RunState(config={"seed": 0}, label_rounds=[torch.arange(3)])
    records = RunRecords(tmp_path, num_classes=2)
    targets = torch.tensor([0, 1, 0, 1])

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert not distributed.is_main_process()
    state.save(tmp_path)
    records.write([], state.label_rounds, targets, {"status": "running"})
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(rank_zero_only, "rank", 0)
    assert distributed.is_main_process()
    state.save(tmp_path)
    records.write([], state.label_rounds, targets, {"status": "running"})
    assert {"state.pt", "queries.csv", "results.csv", "run_summary.json"} <= {
        p.name for p in tmp_path.iterdir()
    }
