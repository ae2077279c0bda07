"""TiDAL's running-mean target and the tracker that feeds it."""

import pytest
import pytorch_lightning as pl
import torch

from tidal_lightning.callbacks.training_dynamics import TrainingDynamicsTracker
from tidal_lightning.data.loader import TensorBatchLoader
from tidal_lightning.models.backbones import SmallCNN
from tidal_lightning.models.system import ActiveLearningSystem
from tidal_lightning.models.td_module import TDModule


def test_running_mean_over_three_epochs_by_hand() -> None:
    tracker = TrainingDynamicsTracker(num_samples=4, num_classes=2)
    index = torch.tensor([2])
    epochs = [torch.tensor([[0.2, 0.8]]), torch.tensor([[0.6, 0.4]]), torch.tensor([[0.5, 0.5]])]
    # epoch 1: p1; epoch 2: (0.2+0.6)/2, (0.8+0.4)/2; epoch 3: 1.3/3, 1.7/3
    expected = [[0.2, 0.8], [0.4, 0.6], [1.3 / 3, 1.7 / 3]]
    for probs, want in zip(epochs, expected, strict=True):
        target = tracker.running_mean_target(index, probs)
        torch.testing.assert_close(target, torch.tensor([want]))
        tracker.on_train_batch_end(None, None, {"probs": probs, "indices": index}, None, 0)  # type: ignore[arg-type]
    assert tracker.epoch_counts.tolist() == [0, 0, 3, 0]
    torch.testing.assert_close(tracker.mean_probs(index), torch.tensor([[1.3 / 3, 1.7 / 3]]))


def test_state_dict_round_trip_and_reset() -> None:
    tracker = TrainingDynamicsTracker(3, 2)
    tracker.on_train_batch_end(
        None,
        None,
        {"probs": torch.tensor([[0.1, 0.9]]), "indices": torch.tensor([1])},
        None,
        0,  # type: ignore[arg-type]
    )
    other = TrainingDynamicsTracker(3, 2)
    other.load_state_dict(tracker.state_dict())
    torch.testing.assert_close(other.prob_sums, tracker.prob_sums)
    other.reset()
    assert other.prob_sums.sum() == 0 and other.epoch_counts.sum() == 0


def _system(td_weight: float) -> tuple[ActiveLearningSystem, TrainingDynamicsTracker]:
    torch.manual_seed(0)
    backbone = SmallCNN(num_classes=3, in_channels=1, width=4)
    tracker = TrainingDynamicsTracker(num_samples=20, num_classes=3)
    system = ActiveLearningSystem(
        backbone,
        3,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        td_module=TDModule(backbone.stage_channels, 3, hidden=8),
        td_tracker=tracker,
        td_weight=td_weight,
    )
    return system, tracker


ACCELERATORS = [
    "cpu",
    pytest.param(
        "gpu",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
        ],
    ),
]


@pytest.mark.parametrize("accelerator", ACCELERATORS)
def test_every_labeled_sample_is_counted_once_per_epoch(accelerator: str) -> None:
    system, tracker = _system(1.0)
    images = torch.randint(0, 255, (20, 1, 8, 8), dtype=torch.uint8)
    targets = torch.randint(0, 3, (20,))
    labeled = torch.tensor([0, 3, 4, 7, 8, 11, 15])

    class Data(pl.LightningDataModule):
        def train_dataloader(self):  # type: ignore[no-untyped-def]
            return TensorBatchLoader(
                images, targets, labeled, 3, True, torch.Generator().manual_seed(0)
            )

        def on_after_batch_transfer(self, batch, dataloader_idx):  # type: ignore[no-untyped-def]
            x, y, i = batch
            return x.float() / 255, y, i

    trainer = pl.Trainer(
        max_epochs=3,
        accelerator=accelerator,
        logger=False,
        callbacks=[tracker],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(system, datamodule=Data())
    counts = tracker.epoch_counts
    assert counts[labeled].tolist() == [3] * len(labeled)
    assert counts.sum() == 3 * len(labeled)
    # each recorded epoch adds one probability vector per sample
    torch.testing.assert_close(tracker.prob_sums[labeled].sum(dim=1), torch.full((7,), 3.0))
    # the buffers live where the module trained (Lightning moves the module back to the CPU
    # after fit; the tracker's buffers stay on the accelerator)
    trained_on = "cuda" if accelerator == "gpu" else "cpu"
    assert tracker.prob_sums.device.type == tracker.epoch_counts.device.type == trained_on


def test_td_loss_gradient_reaches_the_backbone() -> None:
    grads = []
    for weight in (0.0, 1.0):
        system, _ = _system(weight)
        batch = (torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 2, 3]))
        system.log = lambda *a, **k: None  # type: ignore[method-assign]  # no trainer attached
        system.training_step(batch, 0)["loss"].backward()
        grads.append(system.backbone.stages[0][0].weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])
