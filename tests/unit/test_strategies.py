"""The added strategies' formulas and selections against values computed by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tidal_lightning.al.scoring import imbalance_ratio, query_diagnostics, spearman, td_agreement
from tidal_lightning.callbacks.pool_dynamics import PoolDynamicsRecorder
from tidal_lightning.models.loss_prediction import LossPredictionModule, ranking_loss
from tidal_lightning.strategies import scores
from tidal_lightning.strategies.badge import BADGE
from tidal_lightning.strategies.bald import BALD
from tidal_lightning.strategies.base import PoolOutputs
from tidal_lightning.strategies.cal import CAL
from tidal_lightning.strategies.dispersion import Dispersion
from tidal_lightning.strategies.geometry import (
    gradient_embedding,
    gradient_sq_distances,
    kcenter_greedy,
    kmeans_pp_gradient,
)
from tidal_lightning.strategies.kcenter_greedy import KCenterGreedy
from tidal_lightning.strategies.lloss import LearningLoss
from tidal_lightning.strategies.td_entropy_oracle import TDEntropyOracle
from tidal_lightning.strategies.td_margin_oracle import TDMarginOracle


def pool(**outputs: torch.Tensor) -> PoolOutputs:
    n = len(next(v for k, v in outputs.items() if not k.startswith("labeled_")))
    return PoolOutputs(torch.arange(n), outputs)


# ---------------------------------------------------------------- dispersion
class ScriptedModule(torch.nn.Module):
    """Predicts, at each recorded epoch, the next class of a fixed per-sample sequence."""

    def __init__(self, sequences: list[list[int]], num_classes: int) -> None:
        super().__init__()
        self.sequences = torch.tensor(sequences)  # [N, T]
        self.num_classes = num_classes
        self.calls = 0
        self.device = torch.device("cpu")

    def predict_batch(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        labels = self.sequences[: len(images), self.calls]
        self.calls += 1
        return {"probs": F.one_hot(labels, self.num_classes).float()}


def record(sequences: list[list[int]], num_classes: int, every: int) -> PoolDynamicsRecorder:
    recorder = PoolDynamicsRecorder(
        torch.zeros(len(sequences), 1, 2, 2, dtype=torch.uint8),
        normalize=lambda images: images.float(),
        num_classes=num_classes,
        every_n_epochs=every,
        record_probs=True,
    )
    module = ScriptedModule(sequences, num_classes)
    recorder.on_fit_start(None, module)  # type: ignore[arg-type]
    for epoch in range(len(sequences[0]) * every):
        recorder.on_train_epoch_end(SimpleNamespace(current_epoch=epoch), module)  # type: ignore[arg-type]
    return recorder


def test_dispersion_of_a_known_label_sequence() -> None:
    # sample 0 predicts 1,1,2,1,0 over 5 epochs: modal class 1 in 3 epochs -> 1 - 3/5 = 0.4;
    # sample 1 never changes its mind -> 0; sample 2 is split 2/2/1 -> 1 - 2/5 = 0.6
    recorder = record([[1, 1, 2, 1, 0], [2, 2, 2, 2, 2], [0, 1, 0, 1, 2]], 3, every=1)
    assert recorder.recorded_epochs == 5
    assert recorder.label_counts.tolist() == [[1, 3, 1], [0, 0, 5], [2, 2, 1]]
    scores_ = Dispersion().score(pool(**recorder.outputs()))
    torch.testing.assert_close(scores_, torch.tensor([0.4, 0.0, 0.6]))
    # the recorded TD of one-hot predictions is the label frequency
    torch.testing.assert_close(recorder.outputs()["pool_td"][0], torch.tensor([0.2, 0.6, 0.2]))


def test_recording_every_second_epoch_records_half_of_them() -> None:
    recorder = record([[1, 0, 1]], 2, every=2)  # 6 epochs, recorded after epochs 1, 3, 5
    assert recorder.recorded_epochs == 3
    assert recorder.label_counts.tolist() == [[1, 2]]
    torch.testing.assert_close(
        Dispersion().score(pool(**recorder.outputs())), torch.tensor([1 / 3])
    )


def test_nothing_recorded_is_an_error_not_a_division_by_zero() -> None:
    recorder = PoolDynamicsRecorder(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), lambda x: x, 2)
    with pytest.raises(RuntimeError, match="no epoch was recorded"):
        recorder.outputs()


# ---------------------------------------------------------------- TD oracles
def test_td_oracles_read_the_recorded_td_not_the_module() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    module = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    actual = torch.tensor([[0.6, 0.4], [0.1, 0.9]])
    outputs = pool(probs=probs, td_probs=module, pool_td=actual)
    # H(0.6, 0.4) = 0.673012, H(0.1, 0.9) = 0.325083
    torch.testing.assert_close(
        TDEntropyOracle().score(outputs), torch.tensor([0.673012, 0.325083]), atol=1e-6, rtol=0
    )
    # margin from the classifier's class: 0.6 - 0.4 = 0.2, 0.9 - 0.1 = 0.8 (negated)
    torch.testing.assert_close(TDMarginOracle().score(outputs), torch.tensor([-0.2, -0.8]))


def test_td_agreement_by_hand() -> None:
    actual = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.8, 0.2]])
    predicted = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.6, 0.4]])
    # KL: 0; 1·ln(1/0.5) = ln 2; 0.8 ln(0.8/0.6) + 0.2 ln(0.2/0.4) = 0.230146 - 0.138629
    expected_kl = (0.0 + math.log(2) + 0.8 * math.log(0.8 / 0.6) + 0.2 * math.log(0.5)) / 3
    agreement = td_agreement(predicted, actual)
    assert agreement["td_pool_kl"] == pytest.approx(expected_kl, abs=1e-6)
    # entropies: predicted ln2, ln2, 0.673 -> ranks 1, 2, 0 (the tie broken by position);
    # actual ln2, 0, 0.500 -> ranks 2, 0, 1; centred (0, 1, -1)·(1, -1, 0) = -1, over 2
    assert agreement["td_pool_spearman"] == pytest.approx(-0.5)
    assert spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 30.0])) == 1.0
    assert spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])) == -1.0
    # ranks (0, 1, 2) vs (2, 0, 1): centred (-1, 0, 1)·(1, -1, 0) = -1, over 2 -> -0.5
    assert spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 1.0, 2.0])) == -0.5


# ---------------------------------------------------------------- BALD
def test_bald_on_fixed_mc_probabilities() -> None:
    mc = torch.tensor(  # [T=2, N=3, K=2]
        [
            [[1.0, 0.0], [0.5, 0.5], [0.8, 0.2]],
            [[0.0, 1.0], [0.5, 0.5], [0.4, 0.6]],
        ]
    )
    outputs = pool(
        mc_mean_probs=mc.mean(dim=0), mc_mean_entropy=torch.special.entr(mc).sum(-1).mean(0)
    )
    # 0: the samples disagree completely: H(0.5, 0.5) - 0 = ln 2
    # 1: they agree on an uncertain answer: ln 2 - ln 2 = 0
    # 2: H(0.6, 0.4) - (H(0.8, 0.2) + H(0.4, 0.6)) / 2 = 0.673012 - (0.500402 + 0.673012) / 2
    expected = torch.tensor([math.log(2), 0.0, 0.673012 - (0.500402 + 0.673012) / 2])
    torch.testing.assert_close(BALD().score(outputs), expected, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- CoreSet
def test_kcenter_greedy_on_a_line_takes_the_farthest_point_first() -> None:
    labeled = torch.tensor([[0.0]])
    points = torch.tensor([[1.0], [3.0], [10.0], [6.0]])
    # distances to {0}: 1, 3, 10, 6 -> 10 first; then to {0, 10}: 1, 3, -, 4 -> 6;
    # then to {0, 10, 6}: 1, 3 -> 3
    for chunk in (1, 1024):
        assert kcenter_greedy(points, labeled, 3, chunk).tolist() == [2, 3, 1]
    outputs = pool(embeddings=points, labeled_embeddings=labeled)
    assert KCenterGreedy().select(outputs, 2, torch.Generator()).tolist() == [2, 3]


def test_kcenter_greedy_never_picks_a_point_twice_among_duplicates() -> None:
    points = torch.zeros(4, 2)
    assert sorted(kcenter_greedy(points, torch.zeros(1, 2), 4).tolist()) == [0, 1, 2, 3]


# ---------------------------------------------------------------- Learning Loss
def test_ranking_loss_on_a_hand_made_batch() -> None:
    predicted = torch.tensor([3.0, 1.0, 2.0, 0.5])
    target = torch.tensor([1.0, 2.0, 0.5, 0.2])
    # pairs (0, 3) and (1, 2): predicted differences 2.5 and -1; true differences 0.8 and
    # 1.5, both positive (sign +1): max(0, 1 - 2.5) = 0, max(0, 1 + 1) = 2 -> mean 1.0
    assert float(ranking_loss(predicted, target, margin=1.0)) == pytest.approx(1.0)
    # an odd batch: the middle sample has no partner and does not count
    odd_predicted = torch.tensor([3.0, 1.0, 7.0, 2.0, 0.5])
    odd_target = torch.tensor([1.0, 2.0, -5.0, 0.5, 0.2])
    assert float(ranking_loss(odd_predicted, odd_target)) == pytest.approx(1.0)
    # wrong order on a pair with a true difference of -0.3: sign -1, pred diff 0.4 -> 1.4
    assert float(ranking_loss(torch.tensor([0.4, 0.0]), torch.tensor([0.1, 0.4]))) == pytest.approx(
        1.4
    )


def test_loss_prediction_module_and_detach_epoch() -> None:
    module = LossPredictionModule((8, 16, 32, 64), hidden=4)
    maps = [torch.randn(3, c, 2, 2) for c in (8, 16, 32, 64)]
    assert module(maps).shape == (3,)
    assert LearningLoss().detach_epoch(200) == 120  # the paper's schedule
    assert LearningLoss().detach_epoch(10) == 6
    assert LearningLoss().score(pool(predicted_loss=torch.tensor([0.1, 0.3]))).tolist() == [
        pytest.approx(0.1),
        pytest.approx(0.3),
    ]


# ---------------------------------------------------------------- BADGE
def test_badge_gradient_embedding_matches_autograd() -> None:
    torch.manual_seed(0)
    num, dim, classes = 5, 3, 4
    hidden = torch.randn(num, dim)
    layer = torch.nn.Linear(dim, classes)
    probs = layer(hidden).softmax(dim=1).detach()
    expected = []
    for i in range(num):
        layer.zero_grad()
        logits = layer(hidden[i : i + 1])
        F.cross_entropy(logits, logits.argmax(dim=1)).backward()
        assert layer.weight.grad is not None
        expected.append(layer.weight.grad.flatten().clone())
    embedding = gradient_embedding(probs, hidden)
    torch.testing.assert_close(embedding, torch.stack(expected), atol=1e-6, rtol=1e-5)
    # the kernel-trick distances equal those between the materialised embeddings
    residual = probs - F.one_hot(probs.argmax(dim=1), classes).float()
    sq_norms = embedding.square().sum(dim=1)
    for center in range(num):
        explicit = (embedding - embedding[center]).square().sum(dim=1)
        torch.testing.assert_close(
            gradient_sq_distances(residual, hidden, sq_norms, center), explicit, atol=1e-5, rtol=0
        )


def test_badge_starts_at_the_largest_gradient_and_is_seeded() -> None:
    torch.manual_seed(1)
    probs = torch.randn(50, 3).softmax(dim=1)
    embeddings = torch.randn(50, 6)
    norms = gradient_embedding(probs, embeddings).norm(dim=1)
    first = kmeans_pp_gradient(probs, embeddings, 10, torch.Generator().manual_seed(0))
    again = BADGE().select(
        pool(probs=probs, embeddings=embeddings), 10, torch.Generator().manual_seed(0)
    )
    other = kmeans_pp_gradient(probs, embeddings, 10, torch.Generator().manual_seed(1))
    assert int(first[0]) == int(norms.argmax())
    assert len(set(first.tolist())) == 10
    assert first.tolist() == again.tolist()
    assert first.tolist() != other.tolist()


def test_badge_d2_sampling_never_picks_a_zero_distance_point() -> None:
    # two distinct gradient embeddings, each repeated: after one of each is chosen every
    # remaining D² is 0 and the draw falls back to uniform over the unchosen
    probs = torch.tensor([[0.6, 0.4]] * 3 + [[0.3, 0.7]] * 3)
    embeddings = torch.ones(6, 2)
    picked = kmeans_pp_gradient(probs, embeddings, 6, torch.Generator().manual_seed(0))
    assert sorted(picked.tolist()) == list(range(6))
    assert {int(picked[0]) // 3, int(picked[1]) // 3} == {0, 1}


# ---------------------------------------------------------------- CAL
def test_cal_on_a_two_dimensional_toy() -> None:
    labeled_embeddings = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    labeled_probs = torch.tensor([[0.9, 0.1], [0.1, 0.9]])
    embeddings = torch.tensor([[0.5, 0.0], [0.0, 0.5], [9.0, 9.0]])
    probs = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.5, 0.5]])
    outputs = pool(
        embeddings=embeddings,
        probs=probs,
        labeled_embeddings=labeled_embeddings,
        labeled_probs=labeled_probs,
    )
    # k = 1: 0 agrees with its neighbour -> 0; 1 disagrees: KL((.9,.1) ‖ (.1,.9)) = 0.8 ln 9;
    # 2's neighbour is (10, 10): KL((.1,.9) ‖ (.5,.5)) = 0.1 ln 0.2 + 0.9 ln 1.8
    kl_far = 0.1 * math.log(0.2) + 0.9 * math.log(1.8)
    expected = torch.tensor([0.0, 0.8 * math.log(9), kl_far])
    torch.testing.assert_close(CAL(neighbours=1).score(outputs), expected, atol=1e-6, rtol=0)
    # k = 2 averages over both labeled samples; chunking does not change the result
    both = torch.tensor([0.8 * math.log(9) / 2, 0.8 * math.log(9) / 2, kl_far])
    torch.testing.assert_close(
        CAL(neighbours=2, chunk_size=1).score(outputs), both, atol=1e-6, rtol=0
    )
    assert CAL(neighbours=1).select(outputs, 1, torch.Generator()).tolist() == [1]


# ---------------------------------------------------------------- diagnostics
def test_query_diagnostics_and_imbalance_ratio() -> None:
    diagnostics = query_diagnostics(torch.tensor([2, 2, 0, 2]), num_classes=4)
    assert [diagnostics[f"queried_class_{c}"] for c in range(4)] == [1, 0, 3, 0]
    assert diagnostics["query_distinct_classes"] == 2
    assert imbalance_ratio(torch.tensor([10, 2, 5])) == 5.0
    assert imbalance_ratio(torch.tensor([3, 0])) == math.inf
    assert scores.dispersion(torch.tensor([[5, 0]])).tolist() == [0.0]
