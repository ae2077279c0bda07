"""The pool-scale chunking of the distance helpers and CAL against brute-force references."""

from __future__ import annotations

import pytest
import torch

from tidal_lightning.strategies import geometry
from tidal_lightning.strategies.cal import contrastive_scores
from tidal_lightning.strategies.geometry import kcenter_greedy, min_sq_distances


def points(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("chunk", [1, 3, 7, 1024])
def test_min_sq_distances_in_blocks_of_points_and_centers_equal_brute_force(chunk: int) -> None:
    pool, centers = points(23, 4, 0), points(10, 4, 1)
    brute = ((pool[:, None, :].double() - centers[None]) ** 2).sum(-1).min(dim=1).values
    got = min_sq_distances(pool, centers, chunk)
    torch.testing.assert_close(got, brute.float(), rtol=1e-5, atol=1e-5)
    assert torch.isinf(min_sq_distances(pool, centers[:0], chunk)).all()


def test_kcenter_greedy_in_row_blocks_equals_a_brute_force_greedy(monkeypatch) -> None:
    pool, centers = points(40, 3, 2), points(5, 3, 3)
    monkeypatch.setattr(geometry, "_ROWS_PER_BLOCK", 6)  # several blocks per distance pass
    picked = kcenter_greedy(pool, centers, 8, chunk_size=4).tolist()
    # brute force: the farthest point from every center so far, lowest position on ties
    chosen, expected = centers.clone(), []
    for _ in range(8):
        distance = ((pool[:, None, :] - chosen[None]) ** 2).sum(-1).min(dim=1).values
        distance[expected] = -1.0
        best = int(distance.argmax())
        expected.append(best)
        chosen = torch.cat([chosen, pool[best : best + 1]])
    assert picked == expected


@pytest.mark.parametrize("chunk", [2, 5, 1024])
def test_cal_scores_chunked_over_the_pool_equal_a_per_sample_loop(chunk: int) -> None:
    generator = torch.Generator().manual_seed(4)
    embeddings, labeled = points(13, 3, 5), points(6, 3, 6)
    probs = torch.rand(13, 4, generator=generator).softmax(dim=1)
    labeled_probs = torch.rand(6, 4, generator=generator).softmax(dim=1)
    got = contrastive_scores(embeddings, probs, labeled, labeled_probs, 3, chunk)
    for i in range(13):
        near = ((labeled - embeddings[i]) ** 2).sum(dim=1).argsort()[:3]
        kl = (labeled_probs[near] * (labeled_probs[near] / probs[i]).log()).sum(dim=1)
        torch.testing.assert_close(got[i], kl.mean())
