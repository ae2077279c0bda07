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
from tidal_lightning.models.backbones import Backbone, global_average_pool
from tidal_lightning.models.loss_prediction import RANKING_LOSSES

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]
# `predict_batch` outputs computed from MC-dropout masks.
MC_OUTPUTS = frozenset({"mc_probs", "mc_mean_probs", "mc_mean_entropy"})


class ActiveLearningSystem(pl.LightningModule):
    """Classifier + optional auxiliary heads the query strategy reads.

    Loss: CE, plus λ·KL(p̄ ‖ TD module) with TiDAL's TD module, plus
    λ_loss·ranking loss with Learning Loss's loss-prediction module.

    Args:
        backbone: a `Backbone`: `embed` and `forward -> (logits [B, K], stage maps)`.
        num_classes: K.
        optimizer: partial optimizer, called with all parameters (backbone and heads).
        scheduler: partial LR scheduler (stepped per epoch), or None.
        td_module: TiDAL's TD prediction module; None trains without it.
        td_tracker: the callback that holds p̄'s running sums; required with `td_module`.
        td_weight: λ.
        loss_module: Learning Loss's loss-prediction module; None trains without it.
        loss_weight: weight of the ranking loss (1 in the paper).
        loss_margin: margin of the ranking loss (1 in the paper).
        loss_detach_epoch: from this epoch on the loss module sees detached stage maps, so
            its gradient no longer shapes the backbone (epoch 120 of 200 in the paper).
        mc_dropout: dropout probability of the MC-dropout passes at query time, on the
            embedding before the classifier; None uses the backbone's training dropout
            (`model.dropout`). The MC strategies pass theirs (`strategy.dropout`) through
            `system_options`, so they train exactly like every other strategy.
        loss_ranking: the ranking loss, a key of `RANKING_LOSSES`: `margin` (Learning Loss)
            or `bce` (TA-VAAL's sigmoid/BCE relaxation).

    The backbone's speed options (`model.channels_last`, `model.compile`, passed to the
    backbone by its config) are applied here: NHWC weights, and `torch.compile` of the
    backbone's forward (in place, so state-dict keys do not change).

    Training losses are summed on the device per epoch and logged once at its end, as
    batch-size-weighted means (what `self.log(..., on_epoch=True)` reports): a per-step
    `self.log` costs more host time per step than the whole TD module's bookkeeping.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        td_module: nn.Module | None = None,
        td_tracker: TrainingDynamicsTracker | None = None,
        td_weight: float = 1.0,
        loss_module: nn.Module | None = None,
        loss_weight: float = 1.0,
        loss_margin: float = 1.0,
        loss_detach_epoch: int = 120,
        mc_dropout: float | None = None,
        loss_ranking: str = "margin",
    ) -> None:
        super().__init__()
        if (td_module is None) != (td_tracker is None):
            raise ValueError("td_module and td_tracker come together: pass both or neither")
        self.save_hyperparameters(
            ignore=["backbone", "optimizer", "scheduler", "td_module", "td_tracker", "loss_module"]
        )
        self.backbone = backbone
        self.td_module = td_module
        self.td_tracker = td_tracker
        self.loss_module = loss_module
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.test_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.test_class_accuracy = MulticlassAccuracy(num_classes, average=None)
        self.per_class_accuracy: Tensor | None = None
        # [number of logged losses] batch-size-weighted sums and the samples seen this epoch
        self._loss_names: tuple[str, ...] = ()
        self._loss_sums: Tensor | None = None
        self._samples_seen = 0
        if backbone.channels_last:
            backbone.to(memory_format=torch.channels_last)
        if backbone.compile_forward:
            backbone.compile()

    def forward(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        return self.backbone(images)

    def training_step(
        self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int
    ) -> dict[str, Tensor]:
        images, targets, indices = batch
        logits, features = self.backbone(images)
        if self.loss_module is None:
            ce = F.cross_entropy(logits, targets)
        else:
            ce_per_sample = F.cross_entropy(logits, targets, reduction="none")
            ce = ce_per_sample.mean()
        probs = logits.detach().float().softmax(dim=1)
        loss = ce
        logged = {"train/ce": ce}
        if self.td_module is not None and self.td_tracker is not None:
            target = self.td_tracker.running_mean_target(indices, probs)
            td_log_probs = F.log_softmax(self._td_logits(features).float(), dim=1)
            td_kl = F.kl_div(td_log_probs, target, reduction="batchmean")
            loss = ce + self.hparams["td_weight"] * td_kl
            logged["train/td_kl"] = td_kl
        if self.loss_module is not None:
            if self.current_epoch >= self.hparams["loss_detach_epoch"]:
                features = [f.detach() for f in features]
            rank = RANKING_LOSSES[self.hparams["loss_ranking"]](
                self.loss_module(features).float(),
                ce_per_sample.detach().float(),
                self.hparams["loss_margin"],
            )
            loss = loss + self.hparams["loss_weight"] * rank
            logged["train/loss_rank"] = rank
        logged["train/loss"] = loss
        self._accumulate_losses(logged, len(targets))
        return {"loss": loss, "probs": probs, "indices": indices}

    def _td_logits(self, features: list[Tensor]) -> Tensor:
        """TD-module logits `[B, K]` from the stage maps.

        The TD module starts with global average pooling, so pooling here first gives the
        same logits, with the cheaper-backward pool (`global_average_pool`); the module's
        own pool then averages `[B, C, 1, 1]` maps, which costs nothing.
        """
        if self.td_module is None:
            raise RuntimeError("TD-module outputs were asked for, but no TD module was trained")
        return self.td_module([global_average_pool(f) for f in features])

    def _accumulate_losses(self, losses: dict[str, Tensor], batch_size: int) -> None:
        """Adds `batch_size * loss` to this epoch's on-device sums (no host sync)."""
        values = torch.stack([v.detach().float() for v in losses.values()]) * batch_size
        if self._loss_sums is None or self._loss_names != tuple(losses):
            self._loss_names = tuple(losses)
            self._loss_sums = torch.zeros_like(values)
            self._samples_seen = 0
        self._loss_sums += values
        self._samples_seen += batch_size

    def on_train_epoch_start(self) -> None:
        self._loss_sums = None

    def epoch_loss_means(self) -> dict[str, Tensor]:
        """This epoch's batch-size-weighted mean losses so far (`name -> []`, on the device)."""
        if self._loss_sums is None or not self._samples_seen:
            return {}
        means = self._loss_sums / self._samples_seen
        return dict(zip(self._loss_names, means, strict=True))

    def on_train_epoch_end(self) -> None:
        for name, value in self.epoch_loss_means().items():
            # sync_dist: under DDP the logged mean is over all ranks' samples (one
            # all-reduce per epoch; every rank takes the same number of equal batches)
            self.log(
                name,
                value,
                on_step=False,
                on_epoch=True,
                prog_bar=name == "train/loss",
                sync_dist=True,
            )

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
    def predict_batch(
        self,
        images: Tensor,
        needs: frozenset[str] = frozenset({"probs"}),
        mc_masks: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """One normalised batch `[B, C, H, W]` -> the named outputs in `needs`.

        Names: `probs` `[B, K]` (softmax), `td_probs` `[B, K]` (TD module), `embeddings`
        `[B, D]` (pooled penultimate features), `predicted_loss` `[B]` (loss module), and
        over the T dropout masks `mc_masks` (`[T, D]`, from `mc_dropout_masks`): `mc_probs`
        `[B, T, K]` (float32: N·T·K·4 bytes over a pool, 80 MB for 100k × 20 × 10 and ten
        times that for K = 100), `mc_mean_probs` `[B, K]` and `mc_mean_entropy` `[B]` (mean
        softmax and mean entropy over the masks). All three come from the same masks, so
        BALD and BatchBALD see the same draws for the same generator.
        """
        embedding, features = self.backbone.embed(images)
        outputs: dict[str, Tensor] = {}
        if "probs" in needs:
            outputs["probs"] = self.backbone.linear(embedding).float().softmax(dim=1)
        if "embeddings" in needs:
            outputs["embeddings"] = embedding.float()
        if "td_probs" in needs:
            outputs["td_probs"] = self._td_logits(features).float().softmax(dim=1)
        if "predicted_loss" in needs:
            if self.loss_module is None:
                raise RuntimeError(
                    "predicted losses were asked for, but no loss module was trained"
                )
            outputs["predicted_loss"] = self.loss_module(features).float()
        if MC_OUTPUTS & needs:
            if mc_masks is None:
                raise RuntimeError(f"{sorted(MC_OUTPUTS & needs)} need mc_masks")
            mc_probs = self._mc_probs(embedding, mc_masks)
            if "mc_probs" in needs:
                outputs["mc_probs"] = mc_probs
            if "mc_mean_probs" in needs:
                outputs["mc_mean_probs"] = mc_probs.mean(dim=1)
            if "mc_mean_entropy" in needs:
                outputs["mc_mean_entropy"] = torch.special.entr(mc_probs).sum(dim=2).mean(dim=1)
        return outputs

    @property
    def mc_dropout_p(self) -> float:
        """The dropout probability of the MC passes (`mc_dropout`, else `model.dropout`)."""
        p = self.hparams.get("mc_dropout")
        return float(self.backbone.dropout_p if p is None else p)

    def mc_dropout_masks(self, samples: int, generator: torch.Generator | None) -> Tensor:
        """`[T, D]` bool keep masks for the MC passes, one per sample t, shared by every input.

        Dropping unit d of the classifier's input for every input is the same as zeroing
        column d of its weight: each mask is one draw of the classifier's weights,
        `W · diag(m_t) / (1 - p)`. Sharing the draws across the pool makes the T passes T
        models, which is what joint predictions need (BatchBALD's joint entropy, EPIG's
        pool-target pairs); masks drawn per input would make any two inputs independent
        under the model (batchbald_redux's "consistent MC dropout"). Drawn once per pass,
        the masks do not depend on the batching, so a sharded pass draws the same ones.
        """
        p = self.mc_dropout_p
        if samples < 1 or not 0 < p < 1:
            raise RuntimeError(
                f"MC dropout needs mc_samples >= 1 and a dropout probability in (0, 1) "
                f"(strategy.dropout or model.dropout); got {samples}, {p}"
            )
        weight = self.backbone.linear.weight
        shape = (samples, weight.shape[1])
        return torch.rand(shape, generator=generator, device=weight.device) >= p

    def _mc_probs(self, embedding: Tensor, masks: Tensor) -> Tensor:
        """Softmax `[B, T, K]` of the classifier under each of the T masks `[T, D]`.

        The masks are applied to the weight (`[T, K, D]`, tiny) instead of the embedding,
        so the T passes are one `[B, D] @ [D, T·K]` product on the one backbone pass.
        """
        linear = self.backbone.linear
        samples, classes = len(masks), linear.out_features
        keep = masks.to(linear.weight.dtype) / (1.0 - self.mc_dropout_p)
        weights = (linear.weight[None] * keep[:, None, :]).flatten(0, 1)  # [T·K, D]
        bias = None if linear.bias is None else linear.bias.repeat(samples)
        logits = F.linear(embedding, weights, bias).view(len(embedding), samples, classes)
        return logits.float().softmax(dim=2)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }
