"""The LightningModule: a classifier backbone, optionally trained jointly with TiDAL's TD module."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from tidal_lightning.callbacks.training_dynamics import TrainingDynamicsTracker

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


class ActiveLearningSystem(pl.LightningModule):
    """Classifier + (optional) TD module, trained with CE + λ·KL(p̄ ‖ TD module).

    Args:
        backbone: returns `(logits [B, K], stage maps)`.
        num_classes: K.
        optimizer: partial optimizer, called with all parameters (backbone and TD module).
        scheduler: partial LR scheduler (stepped per epoch), or None.
        td_module: TiDAL's TD prediction module; None trains the classifier alone.
        td_tracker: the callback that holds p̄'s running sums; required with `td_module`.
        td_weight: λ.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        td_module: nn.Module | None = None,
        td_tracker: TrainingDynamicsTracker | None = None,
        td_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if (td_module is None) != (td_tracker is None):
            raise ValueError("td_module and td_tracker come together: pass both or neither")
        self.save_hyperparameters(
            ignore=["backbone", "optimizer", "scheduler", "td_module", "td_tracker"]
        )
        self.backbone = backbone
        self.td_module = td_module
        self.td_tracker = td_tracker
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.test_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.test_class_accuracy = MulticlassAccuracy(num_classes, average=None)
        self.per_class_accuracy: Tensor | None = None

    def forward(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        return self.backbone(images)

    def training_step(
        self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int
    ) -> dict[str, Tensor]:
        images, targets, indices = batch
        logits, features = self.backbone(images)
        ce = F.cross_entropy(logits, targets)
        probs = logits.detach().float().softmax(dim=1)
        loss = ce
        if self.td_module is not None and self.td_tracker is not None:
            target = self.td_tracker.running_mean_target(indices, probs)
            td_log_probs = F.log_softmax(self.td_module(features).float(), dim=1)
            td_kl = F.kl_div(td_log_probs, target, reduction="batchmean")
            loss = ce + self.hparams["td_weight"] * td_kl
            self.log("train/td_kl", td_kl, on_step=False, on_epoch=True)
        self.log("train/ce", ce, on_step=False, on_epoch=True)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        return {"loss": loss, "probs": probs, "indices": indices}

    def test_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        images, targets, _ = batch
        logits, _ = self.backbone(images)
        self.test_accuracy.update(logits, targets)
        self.test_class_accuracy.update(logits, targets)
        self.log("test/acc", self.test_accuracy, on_step=False, on_epoch=True)

    def on_test_epoch_end(self) -> None:
        self.per_class_accuracy = self.test_class_accuracy.compute()
        self.test_class_accuracy.reset()

    @torch.inference_mode()
    def predict_batch(self, images: Tensor, with_td: bool) -> dict[str, Tensor]:
        """One normalised pool batch `[B, C, H, W]` -> `{"probs": [B, K], "td_probs": [B, K]}`."""
        logits, features = self.backbone(images)
        outputs = {"probs": logits.float().softmax(dim=1)}
        if with_td:
            if self.td_module is None:
                raise RuntimeError("TD-module outputs were asked for, but no TD module was trained")
            outputs["td_probs"] = self.td_module(features).float().softmax(dim=1)
        return outputs

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }
