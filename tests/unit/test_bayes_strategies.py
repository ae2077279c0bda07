"""BatchBALD, EPIG, BAIT, ALFA-Mix, NoiseStability and query-time MC dropout, against values
computed independently: brute-force enumeration, explicit inverses, autograd, hand-worked cases."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import Tensor, nn

from tests.conftest import compose_config
from tidal_lightning import bench_query
from tidal_lightning.al.loop import build_system
from tidal_lightning.al.scoring import pool_pass
from tidal_lightning.errors import ConfigError
from tidal_lightning.models.backbones import SmallCNN
from tidal_lightning.models.system import ActiveLearningSystem
from tidal_lightning.seeding import make_generator
from tidal_lightning.strategies import alfa_mix, bait, batchbald, epig
from tidal_lightning.strategies.alfa_mix import (
    ALFAMix,
    alfa_mix_select,
    class_anchors,
    cluster_representatives,
    flip_candidates,
)
from tidal_lightning.strategies.bait import BAIT, FisherState, bait_select, mean_fisher
from tidal_lightning.strategies.bald import BALD
from tidal_lightning.strategies.base import PoolOutputs, QueryContext, build_strategy
from tidal_lightning.strategies.batchbald import (
    BatchBALD,
    JointConfigurations,
    batchbald_greedy,
    extend,
)
from tidal_lightning.strategies.epig import EPIG, epig_scores
from tidal_lightning.strategies.geometry import kmeans
from tidal_lightning.strategies.noise_stability import (
    NoiseStability,
    clean_weights,
    perturb_weights_,
)

DOUBLE = torch.float64


def random_mc_probs(n: int, samples: int, classes: int, seed: int, sharp: float = 2.0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, samples, classes, generator=generator, dtype=DOUBLE)
    return (sharp * logits).softmax(dim=2)


def entropy(p: Tensor) -> float:
    return float(torch.special.entr(p).sum())


# ------------------------------------------------------------ query-time MC dropout (#14)
def test_bald_trains_like_every_other_strategy_and_drops_out_only_at_query_time(
    tmp_path: Path,
) -> None:
    configs = {
        name: compose_config(["+experiment=smoke", f"strategy={name}"], tmp_path / name)
        for name in ("entropy", "bald", "batchbald", "epig")
    }
    assert {name: cfg.model.dropout for name, cfg in configs.items()} == dict.fromkeys(configs, 0.0)
    data = instantiate(configs["bald"].dataset)
    data.load()
    systems = {
        name: build_system(configs[name], data, build_strategy(configs[name].strategy))[0]
        for name in ("entropy", "bald")
    }
    for system in systems.values():
        assert system.backbone.dropout_p == 0.0
        assert isinstance(system.backbone.dropout, nn.Identity)  # no random numbers drawn
    # the same weights train to the same outputs: BALD's training forward is the baseline's
    systems["bald"].load_state_dict(systems["entropy"].state_dict())
    images = data.normalize(data.gather(torch.arange(8), "cpu"))
    for system in systems.values():
        system.train()
    bald_logits, _ = systems["bald"](images)
    torch.testing.assert_close(bald_logits, systems["bald"](images)[0])  # nothing random
    torch.testing.assert_close(bald_logits, systems["entropy"](images)[0])
    # the MC passes do drop units: p = strategy.dropout = 0.5, outputs vary across masks
    bald = systems["bald"].eval()
    assert bald.mc_dropout_p == 0.5 and bald.hparams["mc_dropout"] == 0.5
    masks = bald.mc_dropout_masks(10, torch.Generator().manual_seed(0))
    assert masks.shape == (10, bald.backbone.linear.in_features)
    assert 0.3 < masks.float().mean() < 0.7
    mc_probs = bald.predict_batch(images, frozenset({"mc_probs"}), masks)["mc_probs"]
    assert mc_probs.shape == (8, 10, data.num_classes)
    assert (mc_probs - mc_probs[:, :1]).abs().amax(dim=(0, 2))[1:].min() > 1e-4
    with pytest.raises(RuntimeError, match="dropout probability"):
        systems["entropy"].mc_dropout_masks(10, torch.Generator())


def test_training_with_dropout_is_one_override_away(tmp_path: Path) -> None:
    cfg = compose_config(["+experiment=smoke", "strategy=bald", "model.dropout=0.3"], tmp_path)
    data = instantiate(cfg.dataset)
    data.load()
    system, _, _ = build_system(cfg, data, build_strategy(cfg.strategy))
    assert system.backbone.dropout_p == 0.3 and isinstance(system.backbone.dropout, nn.Dropout)
    assert system.mc_dropout_p == 0.5  # the query-time p stays strategy.dropout


def tiny_scoring_setup(eval_batch_size: int) -> tuple[ActiveLearningSystem, Any]:
    torch.manual_seed(0)
    backbone = SmallCNN(num_classes=3, in_channels=1, width=4)
    system = ActiveLearningSystem(backbone, 3, optimizer=torch.optim.SGD, mc_dropout=0.5)
    images = torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8)
    datamodule = SimpleNamespace(
        gather=lambda indices, device: images[indices.cpu()].to(device),
        normalize=lambda x: x.float() / 255,
        eval_batch_size=eval_batch_size,
        train_targets=torch.zeros(12, dtype=torch.long),
    )
    return system, datamodule


def test_mc_outputs_share_masks_across_samples_and_batches() -> None:
    needs = frozenset({"embeddings", "mc_probs", "mc_mean_probs", "mc_mean_entropy"})
    outputs = {}
    for batch in (2, 5, 12):
        system, datamodule = tiny_scoring_setup(batch)
        outputs[batch] = pool_pass(
            system,
            datamodule,
            torch.arange(12),
            torch.arange(0),
            needs,
            torch.device("cpu"),
            mc_samples=6,
            generator=torch.Generator().manual_seed(4),
        ).outputs
    for batch in (2, 5):
        for name in needs:
            torch.testing.assert_close(outputs[batch][name], outputs[12][name])
    # recomputed independently: mask t zeroes the same embedding units for every sample
    system, _ = tiny_scoring_setup(12)
    masks = torch.rand(6, 32, generator=torch.Generator().manual_seed(4)) >= 0.5
    embeddings, out = outputs[12]["embeddings"], outputs[12]
    for t in range(6):
        expected = system.backbone.linear(embeddings * masks[t] * 2.0).softmax(dim=1)
        torch.testing.assert_close(out["mc_probs"][:, t], expected)
    torch.testing.assert_close(out["mc_mean_probs"], out["mc_probs"].mean(dim=1))
    mean_entropy = torch.special.entr(out["mc_probs"]).sum(dim=2).mean(dim=1)
    torch.testing.assert_close(out["mc_mean_entropy"], mean_entropy)


# ------------------------------------------------------------------------ BatchBALD
def brute_joint_mi(mc_probs: Tensor, picks: list[int]) -> float:
    """I(y_picks; w) by enumerating every label configuration of the picks."""
    samples, classes = mc_probs.shape[1:]
    joint_entropy = 0.0
    for labels in itertools.product(range(classes), repeat=len(picks)):
        per_mask = torch.ones(samples, dtype=DOUBLE)
        for i, y in zip(picks, labels, strict=True):
            per_mask = per_mask * mc_probs[i, :, y]
        p = float(per_mask.mean())
        joint_entropy -= p * math.log(p) if p > 0 else 0.0
    conditional = sum(entropy(mc_probs[i]) / samples for i in picks)
    return joint_entropy - conditional


def test_batchbald_greedy_against_brute_force_enumeration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mc_probs = random_mc_probs(6, 5, 3, seed=1)
    picked, values = batchbald_greedy(mc_probs, 3, 40_000, torch.Generator().manual_seed(0))
    expected_picks: list[int] = []
    expected_values = []
    for _ in range(3):
        best, best_value = -1, -math.inf
        for j in range(6):
            if j not in expected_picks:
                value = brute_joint_mi(mc_probs, [*expected_picks, j])
                if value > best_value:  # strict: ties go to the lowest position
                    best, best_value = j, value
        expected_picks.append(best)
        expected_values.append(best_value)
    assert picked.tolist() == expected_picks
    torch.testing.assert_close(values, torch.tensor(expected_values, dtype=DOUBLE))
    # the first pick is BALD's top sample
    bald = BALD().score(
        PoolOutputs(
            torch.arange(6),
            {
                "mc_mean_probs": mc_probs.mean(dim=1),
                "mc_mean_entropy": torch.special.entr(mc_probs).sum(dim=2).mean(dim=1),
            },
        )
    )
    assert int(bald.argmax()) == expected_picks[0]
    # the same with one candidate per block
    monkeypatch.setattr(batchbald, "BLOCK_ELEMENTS", 1)
    blocked, _ = batchbald_greedy(mc_probs, 3, 40_000, torch.Generator().manual_seed(0))
    assert blocked.tolist() == expected_picks


def test_batchbald_skips_a_duplicate_and_breaks_ties_by_position() -> None:
    # four masks; A splits them {1,2} | {3,4}, A' is A again, B splits them {1,3} | {2,4}
    # with 5% label noise, C says nothing
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=DOUBLE)
    b = torch.tensor([[0.95, 0.05], [0.05, 0.95], [0.95, 0.05], [0.05, 0.95]], dtype=DOUBLE)
    c = torch.full((4, 2), 0.5, dtype=DOUBLE)
    mc_probs = torch.stack([a, a, b, c])
    picked, values = batchbald_greedy(mc_probs, 2, 40_000, torch.Generator())
    # BALD would take A and A' (tied at log 2 > BALD(B)); A' adds nothing to A, B adds a bit
    assert picked.tolist() == [0, 2]
    noise = -(0.95 * math.log(0.95) + 0.05 * math.log(0.05))
    torch.testing.assert_close(
        values, torch.tensor([math.log(2), math.log(4) - noise], dtype=DOUBLE)
    )
    strategy = BatchBALD()
    selected = strategy.select(
        PoolOutputs(torch.arange(4), {"mc_probs": mc_probs}), 2, torch.Generator()
    )
    assert selected.tolist() == [0, 2]


def test_sampled_joint_entropy_is_close_to_exact() -> None:
    """12 picked binary labels, 4 masks: 4096 configurations, more than M = 2000, so the
    joint is sampled (switching at the 11th pick, extended at the 12th)."""
    samples, classes, num_picked = 4, 2, 12
    mc_probs = random_mc_probs(num_picked + 2, samples, classes, seed=3, sharp=1.0)
    generator = torch.Generator().manual_seed(0)
    joint = JointConfigurations(mc_probs.new_zeros(1, samples))
    picked: list[Tensor] = []
    for i in range(num_picked):
        picked.append(mc_probs[i])
        joint = extend(joint, picked, 2000, generator)
    assert joint.models is not None and joint.log_likelihoods.shape == (2000, samples)
    estimate = joint.joint_entropies(mc_probs[num_picked:])
    # exact, by enumeration: per-mask likelihood of every configuration of the picks
    configurations = torch.tensor(list(itertools.product(range(classes), repeat=num_picked)))
    likelihood = torch.ones(len(configurations), samples, dtype=DOUBLE)
    for i in range(num_picked):
        likelihood *= mc_probs[i].T[configurations[:, i]]
    marginal = likelihood.mean(dim=1)  # q(ŷ)
    for k, candidate in enumerate(mc_probs[num_picked:]):
        joint_probs = likelihood @ candidate / samples  # p(ŷ, c): [configurations, classes]
        exact = float(torch.special.entr(joint_probs).sum())
        # the estimator averages f(ŷ) = Σ_c p(ŷ,c)/q(ŷ) (-log p(ŷ,c)) over ŷ ~ q; its standard
        # error with M draws (stratified by mask: no larger than i.i.d.) is σ_f / √M
        f = torch.special.entr(joint_probs).sum(dim=1) / marginal
        assert float((marginal * f).sum()) == pytest.approx(exact)
        sigma = float(((marginal * f.square()).sum() - exact**2).sqrt())
        assert abs(float(estimate[k]) - exact) <= 4 * sigma / math.sqrt(2000)
        assert abs(float(estimate[k]) - exact) < 0.02  # and small in absolute terms


NEW_STRATEGIES = ("bald", "batchbald", "epig", "bait", "alfa_mix", "noise_stability")


@pytest.mark.parametrize(
    ("strategy", "override", "message"),
    [
        ("bald", "strategy.dropout=0", "strategy.dropout=0: the query-time dropout"),
        ("epig", "strategy.dropout=1.5", "strategy.dropout=1.5"),
        ("batchbald", "strategy.mc_samples=0", "strategy.mc_samples=0"),
        ("batchbald", "strategy.max_configurations=5", "strategy.max_configurations=5"),
        ("epig", "strategy.targets=0", "strategy.targets=0"),
        ("bait", "strategy.regularization=0", "strategy.regularization=0"),
        ("bait", "strategy.oversample=0", "strategy.oversample=0"),
        ("alfa_mix", "strategy.cap_step=0", "strategy.cap_step=0"),
        ("noise_stability", "strategy.noise_draws=0", "strategy.noise_draws=0"),
        ("noise_stability", "strategy.noise_scale=-1", "strategy.noise_scale=-1"),
    ],
)
def test_bad_settings_are_named(tmp_path: Path, strategy: str, override: str, message: str) -> None:
    cfg = compose_config(["+experiment=smoke", f"strategy={strategy}", override], tmp_path)
    problems = build_strategy(cfg.strategy).check_config(cfg)
    assert any(message in problem for problem in problems), problems


@pytest.mark.parametrize("strategy", NEW_STRATEGIES)
def test_the_shipped_settings_pass_their_checks(tmp_path: Path, strategy: str) -> None:
    cfg = compose_config(["+experiment=smoke", f"strategy={strategy}"], tmp_path)
    assert build_strategy(cfg.strategy).check_config(cfg) == []


# ---------------------------------------------------------------------------- EPIG
def brute_epig(pool: Tensor, targets: Tensor) -> Tensor:
    scores = torch.zeros(len(pool), dtype=DOUBLE)
    for x in range(len(pool)):
        total = 0.0
        for t in range(len(targets)):
            joint = torch.einsum("sa,sb->ab", pool[x], targets[t]) / pool.shape[1]
            outer = joint.sum(dim=1, keepdim=True) * joint.sum(dim=0, keepdim=True)
            total += float((joint * (joint / outer).log()).sum())
        scores[x] = total / len(targets)
    return scores


def test_epig_against_the_mutual_information_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = random_mc_probs(7, 6, 3, seed=5)
    targets = random_mc_probs(4, 6, 3, seed=6)
    expected = brute_epig(pool, targets)
    torch.testing.assert_close(epig_scores(pool, targets), expected)
    monkeypatch.setattr(epig, "BLOCK_ELEMENTS", 9)  # one pool sample per block
    torch.testing.assert_close(epig_scores(pool, targets), expected)
    assert (expected >= 0).all()


def test_epig_selects_the_highest_first_with_ties_by_position() -> None:
    mc_probs = random_mc_probs(6, 5, 3, seed=7)
    expected = brute_epig(mc_probs, mc_probs)  # every pool sample a target
    top = int(expected.argmax())
    mc_probs = torch.cat([mc_probs, mc_probs[top : top + 1]])  # a copy of the top at the end
    strategy = EPIG(mc_samples=5, targets=100)  # more than the pool: all 7 are targets
    pool = PoolOutputs(torch.arange(7), {"mc_probs": mc_probs})
    picked = strategy.select(pool, 3, torch.Generator().manual_seed(0))
    rest = [int(i) for i in expected.argsort(descending=True) if int(i) != top]
    assert picked.tolist() == [top, 6, rest[0]]


def test_epig_draws_its_targets_from_the_generator() -> None:
    mc_probs = random_mc_probs(10, 5, 3, seed=8)
    pool = PoolOutputs(torch.arange(10), {"mc_probs": mc_probs})
    strategy = EPIG(mc_samples=5, targets=3)
    first = strategy.select(pool, 4, torch.Generator().manual_seed(1))
    assert strategy.select(pool, 4, torch.Generator().manual_seed(1)).tolist() == first.tolist()
    targets = torch.randperm(10, generator=torch.Generator().manual_seed(1))[:3]
    expected = brute_epig(mc_probs, mc_probs[targets]).argsort(descending=True, stable=True)
    assert first.tolist() == expected[:4].tolist()


# ---------------------------------------------------------------------------- BAIT
def materialised_fisher_rows(probs: Tensor, embeddings: Tensor) -> Tensor:
    """`[N, K, K·D]`: row c is √p_c times the cross-entropy gradient of the last layer's
    weight for label c, taken with autograd."""
    num_classes, dim = probs.shape[1], embeddings.shape[1]
    rows = torch.zeros(len(probs), num_classes, num_classes * dim, dtype=DOUBLE)
    for i in range(len(probs)):
        # a linear layer with these softmax outputs at input h: logits log p (bias 0, W h)
        weight = torch.zeros(num_classes, dim, dtype=DOUBLE, requires_grad=True)
        logits = weight @ embeddings[i] + probs[i].log()
        for c in range(num_classes):
            (grad,) = torch.autograd.grad(
                F.cross_entropy(logits[None], torch.tensor([c])), weight, retain_graph=True
            )
            rows[i, c] = probs[i, c].sqrt() * grad.flatten()
    return rows


def brute_bait(
    probs: Tensor, embeddings: Tensor, labeled_probs: Tensor, labeled_embeddings: Tensor,
    budget: int, regularization: float,
) -> list[int]:  # fmt: skip
    """The authors' greedy with every Fisher materialised and every trace from an inverse."""
    rows = materialised_fisher_rows(probs, embeddings)
    labeled_rows = materialised_fisher_rows(labeled_probs, labeled_embeddings)
    fishers = rows.transpose(1, 2) @ rows  # [N, K·D, K·D]
    labeled_fishers = labeled_rows.transpose(1, 2) @ labeled_rows
    total = torch.cat([fishers, labeled_fishers]).mean(dim=0)
    size, num_labeled = total.shape[0], len(labeled_probs)
    weight = budget / (num_labeled + budget)
    matrix = regularization * torch.eye(size, dtype=DOUBLE)
    if num_labeled:
        matrix += num_labeled / (num_labeled + budget) * labeled_fishers.mean(dim=0)

    def trace(m: Tensor) -> float:
        return float(torch.trace(torch.linalg.inv(m) @ total))

    chosen: list[int] = []
    for _ in range(2 * budget):
        options = [
            (trace(matrix + weight * fishers[j]), j) for j in range(len(probs)) if j not in chosen
        ]
        best = min(options, key=lambda option: option[0])[1]  # min keeps the first of ties
        chosen.append(best)
        matrix = matrix + weight * fishers[best]
    while len(chosen) > budget:
        options = [(trace(matrix - weight * fishers[s]), s) for s in chosen]
        drop = min(options, key=lambda option: option[0])[1]
        chosen.remove(drop)
        matrix = matrix - weight * fishers[drop]
    return chosen


def bait_inputs(n: int, labeled: int, classes: int, dim: int, seed: int) -> tuple[Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    probs = torch.randn(n + labeled, classes, generator=generator, dtype=DOUBLE).softmax(dim=1)
    embeddings = torch.randn(n + labeled, dim, generator=generator, dtype=DOUBLE).relu() + 0.1
    return probs[:n], embeddings[:n], probs[n:], embeddings[n:]


def test_bait_fisher_matches_autograd_gradients() -> None:
    probs, embeddings, _, _ = bait_inputs(5, 0, 3, 4, seed=0)
    rows = materialised_fisher_rows(probs, embeddings)
    expected = (rows.transpose(1, 2) @ rows).mean(dim=0)
    torch.testing.assert_close(mean_fisher(probs, embeddings), expected)


def test_bait_greedy_against_explicit_inverses(monkeypatch: pytest.MonkeyPatch) -> None:
    probs, embeddings, labeled_probs, labeled_embeddings = bait_inputs(9, 3, 3, 2, seed=1)
    expected = brute_bait(probs, embeddings, labeled_probs, labeled_embeddings, 3, 0.5)
    picked = bait_select(probs, embeddings, labeled_probs, labeled_embeddings, 3, 0.5)
    assert picked.tolist() == expected
    monkeypatch.setattr(bait, "BLOCK_ELEMENTS", 20)  # a few samples per block
    picked = bait_select(probs, embeddings, labeled_probs, labeled_embeddings, 3, 0.5)
    assert picked.tolist() == expected
    # no labeled set yet: M = λI
    expected = brute_bait(probs, embeddings, labeled_probs[:0], labeled_embeddings[:0], 2, 1.0)
    picked = bait_select(probs, embeddings, labeled_probs[:0], labeled_embeddings[:0], 2, 1.0)
    assert picked.tolist() == expected


def test_bait_state_is_small_per_sample_and_its_updates_are_exact() -> None:
    n, classes, dim, budget = 7, 3, 4, 2
    probs, embeddings, labeled_probs, labeled_embeddings = bait_inputs(n, 4, classes, dim, seed=2)
    state = FisherState.start(probs, embeddings, labeled_probs, labeled_embeddings, budget, 1.0)
    size = classes * dim
    shapes = {name: tuple(getattr(state, name).shape) for name in vars(state)}
    assert shapes == {
        "fisher": (size, size),
        "inverse": (size, size),
        "inner": (n, classes, classes),
        "outer": (n, classes, classes),
        "factors": (n, classes, classes),
        "embeddings": (n, dim),
    }  # per sample O(K² + D), never (K·D)²
    rows = materialised_fisher_rows(probs, embeddings)
    weight = budget / (4 + budget)
    lift = torch.stack([torch.kron(torch.eye(classes, dtype=DOUBLE), h[None]) for h in embeddings])
    matrix = torch.linalg.inv(state.inverse)
    for position, sign in ((2, 1.0), (5, 1.0), (2, -1.0)):
        state.update(torch.tensor(position), sign, None)
        matrix = matrix + sign * weight * rows[position].T @ rows[position]
        inverse = torch.linalg.inv(matrix)
        torch.testing.assert_close(state.inverse, inverse)
        torch.testing.assert_close(state.inner, lift @ inverse @ lift.transpose(1, 2))
        outer = lift @ inverse @ state.fisher @ inverse @ lift.transpose(1, 2)
        torch.testing.assert_close(state.outer, outer)


def test_bait_refuses_matrices_larger_than_allowed() -> None:
    pool = PoolOutputs(
        torch.arange(4),
        {
            "probs": torch.full((4, 100), 0.01),
            "embeddings": torch.ones(4, 512),
            "labeled_probs": torch.full((2, 100), 0.01),
            "labeled_embeddings": torch.ones(2, 512),
        },
    )
    with pytest.raises(ConfigError, match=r"\[51200, 51200\] matrices \(29\.3 GB\) > strategy"):
        BAIT().select(pool, 2, torch.Generator())


# ------------------------------------------------------------------------ ALFA-Mix
def test_alfa_mix_flips_on_a_hand_made_two_dimensional_case() -> None:
    # head: the larger coordinate wins; anchors: class 0 at (2, 0.1), class 1 at (0, 2)
    weight, bias = torch.eye(2, dtype=DOUBLE), torch.zeros(2, dtype=DOUBLE)
    labeled = torch.tensor([[2.0, 0.0], [2.0, 0.2], [0.0, 2.0]], dtype=DOUBLE)
    anchors = class_anchors(labeled, torch.tensor([0, 0, 1]), 2)
    torch.testing.assert_close(anchors, torch.tensor([[2.0, 0.1], [0.0, 2.0]], dtype=DOUBLE))
    # z0 sits by the boundary; z1 and z2 are far from it. Each moves along its loss gradient
    # (-1, 1)/√2 (or (1, -1)/√2) by ε · (distance to the farthest anchor), ε = cap/√2:
    # z0 by 0.1414·1.4866 = 0.210 at cap 0.2 -> (0.851, 1.049): flipped;
    # z1 = (3, 0) by 0.7071·3.6056 = 2.550 only at cap 1.0 -> (1.197, 1.803): flipped;
    # z2 = (0, 3) by 0.7071·3.5228 = 2.491 at cap 1.0 -> (1.761, 1.239): flipped; at cap 0.8
    # both stay (z1 -> (1.558, 1.442), z2 -> (1.409, 1.591)).
    z = torch.tensor([[1.0, 0.9], [3.0, 0.0], [0.0, 3.0]], dtype=DOUBLE)
    assert flip_candidates(z, anchors, weight, bias, budget=0).tolist() == [True, False, False]
    assert flip_candidates(z, anchors, weight, bias, budget=1).tolist() == [True, True, True]


def literal_alfa_mix_candidates(
    z: Tensor, anchors: Tensor, head: nn.Linear, budget: int, cap_step: float
) -> Tensor:
    """The authors' closed-form loop, literally: autograd gradient, elementwise α, mixing."""
    embedding = z.clone().requires_grad_(True)
    predicted = head(z).argmax(dim=1)
    loss = F.cross_entropy(head(embedding), predicted)
    (grads,) = torch.autograd.grad(loss, embedding)
    candidates = torch.zeros(len(z), dtype=torch.bool)
    cap = 0.0
    while cap < 1.0:
        cap += cap_step
        eps = cap / math.sqrt(z.shape[1])
        for anchor in anchors:
            diff = anchor[None] - z
            alpha = (eps * diff.norm(dim=1) / grads.norm(dim=1))[:, None] * grads / (diff + 1e-8)
            mixed = (1 - alpha) * z + alpha * anchor[None]
            candidates |= head(mixed).argmax(dim=1) != predicted
        if candidates.sum() > budget:
            break
    return candidates


@pytest.mark.parametrize("block", [alfa_mix.BLOCK_ELEMENTS, 1])
def test_alfa_mix_candidates_match_the_authors_closed_form(
    monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    monkeypatch.setattr(alfa_mix, "BLOCK_ELEMENTS", block)
    generator = torch.Generator().manual_seed(0)
    head = nn.Linear(8, 4).double()
    z = torch.randn(300, 8, generator=generator, dtype=DOUBLE).relu()
    labeled = torch.randn(40, 8, generator=generator, dtype=DOUBLE).relu()
    anchors = class_anchors(labeled, torch.arange(40) % 4, 4)
    for budget in (5, 60, 400):
        expected = literal_alfa_mix_candidates(z, anchors, head, budget, 0.2)
        with torch.no_grad():
            got = flip_candidates(z, anchors, head.weight, head.bias, budget)
        assert int(expected.sum()) > 0 and got.tolist() == expected.tolist()


def test_kmeans_finds_separated_clusters_deterministically() -> None:
    generator = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = centers.repeat_interleave(20, dim=0) + 0.1 * torch.randn(60, 2, generator=generator)
    found, assignment = kmeans(points, 3, torch.Generator().manual_seed(1))
    groups = assignment.view(3, 20)
    assert (groups == groups[:, :1]).all() and len(set(groups[:, 0].tolist())) == 3
    torch.testing.assert_close(found[groups[:, 0]], points.view(3, 20, 2).mean(dim=1))
    again, _ = kmeans(points, 3, torch.Generator().manual_seed(1))
    assert torch.equal(found, again)


def test_cluster_representatives_take_the_member_nearest_each_center() -> None:
    # two clusters of three; the middle member of each is nearest its center
    features = torch.tensor(
        [[0.0, 0.0], [5.0, 5.1], [0.1, 0.0], [5.0, 5.0], [0.2, 0.0], [5.0, 4.8]]
    )
    picked = cluster_representatives(features, 2, torch.Generator().manual_seed(0))
    assert sorted(picked.tolist()) == [2, 3]


def test_alfa_mix_tops_up_few_candidates_with_a_seeded_draw() -> None:
    weight, bias = torch.eye(2, dtype=DOUBLE), torch.zeros(2, dtype=DOUBLE)
    anchors = torch.tensor([[2.0, 0.1], [0.0, 2.0]], dtype=DOUBLE)
    z = torch.tensor([[1.0, 0.9], [3.0, 0.0], [0.0, 3.0], [5.0, 0.0], [0.0, 6.0]], dtype=DOUBLE)
    # budget 0 at the first cap would stop with {z0}; with budget 3 the caps grow to 1.0 and
    # z0, z1, z2 flip (see the hand-made case), z3 and z4 never do: three candidates
    first = alfa_mix_select(z, anchors, weight, bias, 4, torch.Generator().manual_seed(0))
    assert len(set(first.tolist())) == 4 and set(first.tolist()[:3]) == {0, 1, 2}
    again = alfa_mix_select(z, anchors, weight, bias, 4, torch.Generator().manual_seed(0))
    assert first.tolist() == again.tolist()
    # through the strategy: the head comes from the trained system
    head = nn.Linear(2, 2).double()
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.zero_()
    context: Any = SimpleNamespace(system=SimpleNamespace(backbone=SimpleNamespace(linear=head)))
    pool = PoolOutputs(
        torch.arange(5),
        {
            "embeddings": z,
            "labeled_embeddings": torch.tensor([[2.0, 0.0], [2.0, 0.2], [0.0, 2.0]], dtype=DOUBLE),
        },
        labeled_targets=torch.tensor([0, 0, 1]),
        context=context,
    )
    picked = ALFAMix().select(pool, 4, torch.Generator().manual_seed(0))
    assert picked.tolist() == first.tolist()


# ------------------------------------------------------------------ NoiseStability
class TinyBackbone(nn.Module):
    """embed = the two input pixels; a 2 -> 3 linear head with known weights."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 3)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 2.0], [-1.0, 0.0]]))
            self.linear.bias.copy_(torch.tensor([0.1, -0.2, 0.0]))

    def embed(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        return x.flatten(1), []


def noise_setup(scale: float) -> tuple[NoiseStability, PoolOutputs, TinyBackbone, Tensor]:
    images = torch.tensor(
        [[[[3, 1]]], [[[0, 4]]], [[[2, 2]]], [[[5, 0]]], [[[1, 3]]]], dtype=torch.uint8
    )
    backbone = TinyBackbone()
    datamodule = SimpleNamespace(
        gather=lambda indices, device: images[indices.cpu()].to(device),
        normalize=lambda x: x.float() / 4,
        eval_batch_size=2,
    )
    context = QueryContext(
        system=SimpleNamespace(backbone=backbone),  # type: ignore[arg-type]
        datamodule=datamodule,  # type: ignore[arg-type]
        device=torch.device("cpu"),
        seed=3,
        cycle=1,
        labeled_indices=torch.arange(0),
        pool_indices=torch.arange(5),
    )
    inputs = images.flatten(1).float() / 4
    clean = backbone.linear(inputs).softmax(dim=1).detach()
    pool = PoolOutputs(torch.arange(5), {"probs": clean}, context=context)
    return NoiseStability(noise_draws=3, noise_scale=scale), pool, backbone, inputs


def test_noise_stability_features_and_picks_by_hand() -> None:
    strategy, pool, backbone, inputs = noise_setup(scale=0.2)
    clean_weight = backbone.linear.weight.detach().clone()
    generator = make_generator(3, 1, "noise_stability")
    expected = []
    for _ in range(3):
        noise = torch.randn(3, 2, generator=generator)
        weight = clean_weight + noise * (0.2 * clean_weight.norm() / noise.norm())
        noisy = (inputs @ weight.T + backbone.linear.bias.detach()).softmax(dim=1)
        expected.append((noisy - pool["probs"]) / pool["probs"].norm(dim=1, keepdim=True))
    features = strategy.features(pool)
    torch.testing.assert_close(features, torch.cat(expected, dim=1))
    # k-center greedy from the origin, by hand: largest change first, then the farthest
    picks: list[int] = []
    distance = features.norm(dim=1)
    for _ in range(3):
        choice = max((float(distance[i]), -i) for i in range(5) if i not in picks)[1] * -1
        picks.append(choice)
        distance = torch.minimum(distance, (features - features[choice]).norm(dim=1))
    assert strategy.select(pool, 3, torch.Generator()).tolist() == picks
    assert strategy.select(pool, 3, torch.Generator()).tolist() == picks  # deterministic
    torch.testing.assert_close(backbone.linear.weight, clean_weight)  # the model is untouched


def test_noise_is_relative_to_each_weight_and_biases_stay_clean() -> None:
    torch.manual_seed(0)
    model = SmallCNN(num_classes=3, in_channels=1, width=4)
    clean = {name: p.detach().clone() for name, p in model.named_parameters()}
    weights = clean_weights(model)
    assert len(weights) == 9  # four convolutions, four BatchNorm scales, the classifier
    perturb_weights_(model, weights, 0.01, torch.Generator().manual_seed(0))
    for name, parameter in model.named_parameters():
        change = parameter.detach() - clean[name]
        if name.endswith(".weight"):  # convolutions, BatchNorm scales, the classifier
            assert float(change.norm()) == pytest.approx(0.01 * float(clean[name].norm()), rel=1e-4)
        else:
            assert torch.equal(change, torch.zeros_like(change))


# --------------------------------------------------------------------- bench_query
@pytest.mark.parametrize(
    "name",
    [
        # 31 small-CNN passes over the pool: seconds on a busy CPU
        pytest.param(name, marks=pytest.mark.slow) if name == "noise_stability" else name
        for name in bench_query.STRATEGIES
    ],
)
def test_bench_query_measures_every_new_strategy(name: str) -> None:
    row = bench_query.measure(name, 64, "small_cnn", 5, 10)
    assert torch.is_grad_enabled()  # nothing leaks into the tests that follow
    assert row["strategy"] == name and row["pool"] == 64 and row["budget"] == 5
    assert row["seconds"] >= 0 and row["peak_rss_mb"] >= row["rss_before_mb"] > 0
