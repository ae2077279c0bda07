"""Distance-based selection on the device, chunked so memory stays O(N · chunk), never O(N²).

Used by CoreSet (k-center greedy), BADGE (k-means++ seeding on gradient embeddings), CAL
(nearest labeled neighbours), NoiseStability (k-center greedy) and ALFA-Mix (k-means).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sq_distances(points: Tensor, centers: Tensor) -> Tensor:
    """Squared Euclidean distances `[P, D], [T, D] -> [P, T]`, as one matrix product.

    `‖x‖² + ‖c‖² − 2 x·c`, clamped at 0 against rounding: cheaper than `torch.cdist`, whose
    per-call overhead dominates for the thin blocks of a greedy selection.
    """
    inner = points @ centers.T
    return (
        points.square().sum(dim=1, keepdim=True) + centers.square().sum(dim=1) - 2.0 * inner
    ).clamp(min=0.0)


def min_sq_distances(points: Tensor, centers: Tensor, chunk_size: int = 1024) -> Tensor:
    """Squared Euclidean distance from each point to its nearest center, `[N, D], [M, D] -> [N]`.

    Points and centers are processed `chunk_size` at a time, so the largest temporary is
    `[chunk, chunk]` whatever N and M are (a 1M pool against 100k labeled centers too).
    With no centers every distance is +inf.
    """
    nearest = torch.full((len(points),), float("inf"), device=points.device)
    for first in range(0, len(points), chunk_size):
        part = points[first : first + chunk_size]
        for start in range(0, len(centers), chunk_size):
            block = torch.cdist(part, centers[start : start + chunk_size]).square()
            nearest[first : first + chunk_size] = torch.minimum(
                nearest[first : first + chunk_size], block.min(dim=1).values
            )
    return nearest


# Rows per block of a point-to-one-point distance pass: its temporaries stay ~16 MB of float32
# at D = 512 (the whole `[N, D]` difference of a 1M pool would be 2 GB).
_ROWS_PER_BLOCK = 8192


def sq_distances_to(points: Tensor, point: Tensor) -> Tensor:
    """`||points_i - point||²` for every row, `[N, D], [D] -> [N]`, in row blocks (bounded)."""
    out = torch.empty(len(points), device=points.device, dtype=points.dtype)
    for first in range(0, len(points), _ROWS_PER_BLOCK):
        block = points[first : first + _ROWS_PER_BLOCK]
        out[first : first + _ROWS_PER_BLOCK] = (block - point).square().sum(dim=1)
    return out


def kcenter_greedy(points: Tensor, centers: Tensor, budget: int, chunk_size: int = 1024) -> Tensor:
    """Sener & Savarese's greedy k-center: repeatedly take the point farthest from all centers.

    Args:
        points: `[N, D]` candidate embeddings.
        centers: `[M, D]` embeddings that are already centers (the labeled set).
        budget: how many points to pick (<= N).
        chunk_size: points and centers per distance block; memory is O(N + chunk²).

    Returns:
        `[budget]` positions into `points`, in the order they were picked (on `points.device`).
        Ties go to the lowest position.
    """
    nearest = min_sq_distances(points, centers, chunk_size)
    picked = torch.empty(budget, dtype=torch.long, device=points.device)
    for step in range(budget):
        # argmax returns the first maximum, and picked points have distance 0 to themselves,
        # so no point is picked twice while others remain at a positive distance.
        choice = nearest.argmax()
        picked[step] = choice
        new = sq_distances_to(points, points[choice])
        nearest = torch.minimum(nearest, new)
        nearest[choice] = -1.0  # below any distance, even when every distance is 0
    return picked


def gradient_embedding(probs: Tensor, embeddings: Tensor) -> Tensor:
    """BADGE's gradient embedding, materialised: `[N, K], [N, D] -> [N, K·D]`.

    It is the gradient of the cross-entropy with respect to the last linear layer's weight,
    taking the predicted class as the label: `(p - onehot(argmax p)) ⊗ h`. Only for tests
    and small inputs; selection uses `gradient_sq_distances`, which never builds it.
    """
    residual = probs - F.one_hot(probs.argmax(dim=1), probs.shape[1]).to(probs.dtype)
    return (residual[:, :, None] * embeddings[:, None, :]).flatten(1)


def gradient_sq_distances(
    residual: Tensor, embeddings: Tensor, sq_norms: Tensor, center: Tensor
) -> Tensor:
    """Squared distances from every gradient embedding to the one at position `center`, `[N]`.

    For outer products `<a_i ⊗ h_i, a_j ⊗ h_j> = (a_i · a_j)(h_i · h_j)`, so a distance costs
    O(K + D) per point instead of O(K · D): a CIFAR-100 ResNet-18 pool of 10k samples would
    otherwise need 10k × 51,200 floats (2 GB).

    Args:
        residual: `[N, K]` `p - onehot(argmax p)`.
        embeddings: `[N, D]`.
        sq_norms: `[N]` squared norms of the gradient embeddings.
        center: position (0-dim tensor or int) of the center.
    """
    inner = (residual @ residual[center]) * (embeddings @ embeddings[center])
    return (sq_norms + sq_norms[center] - 2.0 * inner).clamp(min=0.0)


def kmeans_pp_gradient(
    probs: Tensor, embeddings: Tensor, budget: int, generator: torch.Generator
) -> Tensor:
    """BADGE (Ash et al. 2020): k-means++ seeding on the gradient embeddings.

    The first center is the embedding with the largest norm (as in the authors' code); each
    next one is drawn with probability proportional to its squared distance to the nearest
    chosen center.

    Args:
        probs: `[N, K]` softmax of the pool samples.
        embeddings: `[N, D]` their penultimate embeddings.
        budget: number of centers (<= N).
        generator: on the same device as the inputs.

    Returns:
        `[budget]` distinct positions, in the order they were chosen.
    """
    residual = probs - F.one_hot(probs.argmax(dim=1), probs.shape[1]).to(probs.dtype)
    sq_norms = residual.square().sum(dim=1) * embeddings.square().sum(dim=1)
    picked = torch.empty(budget, dtype=torch.long, device=probs.device)
    chosen = torch.zeros(len(probs), dtype=torch.bool, device=probs.device)
    choice = sq_norms.argmax()
    nearest = torch.full_like(sq_norms, float("inf"))
    for step in range(budget):
        picked[step] = choice
        chosen[choice] = True
        if step + 1 == budget:
            break
        distance = gradient_sq_distances(residual, embeddings, sq_norms, choice)
        nearest = torch.minimum(nearest, distance).masked_fill(chosen, 0.0)
        # All remaining points coincide with a center: D² sampling is undefined, so draw
        # uniformly among the unchosen (kept on the device: no host round trip).
        weights = torch.where(nearest.sum() > 0, nearest, (~chosen).to(nearest.dtype))
        choice = torch.multinomial(weights, 1, generator=generator)[0]
    return picked


def nearest_neighbours(
    queries: Tensor, references: Tensor, k: int, chunk_size: int = 1024
) -> Tensor:
    """Positions of the `k` nearest references (Euclidean) of each query, `[N, k]`.

    Queries are processed `chunk_size` at a time: the largest temporary is `[chunk, M]`.
    """
    k = min(k, len(references))
    blocks = []
    for start in range(0, len(queries), chunk_size):
        distances = torch.cdist(queries[start : start + chunk_size], references)
        blocks.append(distances.topk(k, dim=1, largest=False).indices)
    return torch.cat(blocks)


def kmeans(
    points: Tensor,
    clusters: int,
    generator: torch.Generator,
    max_iterations: int = 300,
    tolerance: float = 1e-4,
    chunk_size: int = 1024,
) -> tuple[Tensor, Tensor]:
    """k-means: k-means++ seeding, then Lloyd's iterations, on the device.

    Seeding draws the first center uniformly and each next one with probability
    proportional to the squared distance to the nearest center so far. Lloyd's iterations
    stop when no assignment changes, when the centers move less (summed squared shift)
    than `tolerance` times the mean per-dimension variance of the points (scikit-learn's
    rule), or after `max_iterations`. A cluster that loses all its points keeps its center.

    Args:
        points: `[N, D]`.
        clusters: k (<= N).
        generator: on `points.device`.
        chunk_size: points per distance block; memory O(chunk_size · k).

    Returns:
        `[k, D]` centers and `[N]` int64 cluster of each point. Ties go to the lowest cluster.
    """
    num_points = len(points)
    first = torch.randint(num_points, (1,), generator=generator, device=points.device)
    chosen = [first[0]]
    nearest = (points - points[first]).square().sum(dim=1)
    for _ in range(1, clusters):
        # all points coincide with a center: draw uniformly (no host round trip)
        weights = torch.where(nearest.sum() > 0, nearest, torch.ones_like(nearest))
        choice = torch.multinomial(weights, 1, generator=generator)[0]
        chosen.append(choice)
        nearest = torch.minimum(nearest, (points - points[choice]).square().sum(dim=1))
    centers = points[torch.stack(chosen)].clone()
    threshold = tolerance * points.var(dim=0, unbiased=False).mean()
    assignment = nearest_centers(points, centers, chunk_size)
    for _ in range(max_iterations):
        sums = torch.zeros_like(centers).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=clusters).to(points.dtype)
        moved = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centers)
        shift = (moved - centers).square().sum()
        centers = moved
        new_assignment = nearest_centers(points, centers, chunk_size)
        unchanged = bool((new_assignment == assignment).all())
        assignment = new_assignment
        if unchanged or bool(shift <= threshold):
            break
    return centers, assignment


def nearest_centers(points: Tensor, centers: Tensor, chunk_size: int = 1024) -> Tensor:
    """`[N]` position of each point's nearest center (Euclidean; ties to the lowest).

    Points go `chunk_size` at a time: the largest temporary is `[chunk, k]`.
    """
    return torch.cat(
        [
            torch.cdist(points[start : start + chunk_size], centers).argmin(dim=1)
            for start in range(0, len(points), chunk_size)
        ]
    )


def knn_mean_distance(points: Tensor, k: int, chunk_size: int = 1024) -> Tensor:
    """Mean Euclidean distance of each point to its `k` nearest *other* points, `[N]`.

    Each point's own zero distance is dropped (one zero per row, so exact duplicates still
    count as neighbours at distance 0). Rows are processed `chunk_size` at a time: the
    largest temporary is `[chunk, N]`. Needs `1 <= k < N`.
    """
    blocks = []
    for start in range(0, len(points), chunk_size):
        distances = torch.cdist(points[start : start + chunk_size], points)
        nearest = distances.topk(k + 1, dim=1, largest=False).values  # ascending
        blocks.append(nearest[:, 1:].mean(dim=1))
    return torch.cat(blocks)


def nearest_other_label_distance(points: Tensor, labels: Tensor, chunk_size: int = 1024) -> Tensor:
    """Distance from each point to the nearest point with another label, `[N]` (inf if none).

    Rows are processed `chunk_size` at a time: memory O(chunk · N).
    """
    blocks = []
    for start in range(0, len(points), chunk_size):
        distances = torch.cdist(points[start : start + chunk_size], points)
        same = labels[start : start + chunk_size, None] == labels[None, :]
        blocks.append(distances.masked_fill(same, float("inf")).min(dim=1).values)
    return torch.cat(blocks)
