"""Training tasks: what a trial trains on and how it is evaluated.

* :class:`LanguageModelingTask` (C.4.1, C.3.6): next-token batches from :func:`text.lm_batch`;
  evaluation is the mean loss over ``data.eval_batches`` random validation batches drawn from a
  fixed-seed generator, and PPL = exp(loss in nats).
* :class:`ImageClassificationTask` (E.2.1): MNIST batches; evaluation covers the whole validation
  split once and reports its loss and error = 1 - accuracy.

:func:`make_task` picks one by ``cfg.model.kind``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from signlock.trainables import mnist, text
from signlock.trainables.config import TrialConfig

EVAL_SEED_OFFSET = 10_007  # evaluation batches come from their own fixed-seed generator
DEFAULT_IMAGE_EVAL_BATCH = 512
MAX_PPL_EXPONENT = 700.0  # exp(700) is near the float64 limit; larger losses would overflow

Batch = tuple[torch.Tensor, torch.Tensor]


class Task(ABC):
    """Batches, loss and evaluation of one dataset family."""

    vocab_size: int | None
    """Token vocabulary for language models; ``None`` for image classification."""

    def __init__(self, cfg: TrialConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device

    def train_batch(self, generator: torch.Generator) -> Batch:
        """The next training batch, drawn from ``generator`` and moved to the device."""
        x, y = self._draw_train_batch(generator)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy in nats, computed in float32."""
        logits = model(x)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Validation metrics of ``model``, measured in eval mode; its mode is restored after."""
        was_training = model.training
        model.eval()
        try:
            return self._evaluate(model)
        finally:
            model.train(was_training)

    @abstractmethod
    def _draw_train_batch(self, generator: torch.Generator) -> Batch: ...

    @abstractmethod
    def _evaluate(self, model: nn.Module) -> dict[str, float]: ...


class LanguageModelingTask(Task):
    """Next-token prediction on a text corpus (C.4.1) or the synthetic corpus (C.3.6)."""

    def __init__(self, cfg: TrialConfig, device: torch.device) -> None:
        super().__init__(cfg, device)
        self.corpus = text.load_lm_data(cfg.data)
        self.vocab_size = self.corpus.vocab_size

    def _draw_train_batch(self, generator: torch.Generator) -> Batch:
        data = self.cfg.data
        return text.lm_batch(self.corpus, "train", data.batch_size, data.seq_len, generator)

    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        """Mean loss over ``eval_batches`` random val batches, PPL = exp(loss in nats) (C.4.1)."""
        data = self.cfg.data
        generator = torch.Generator().manual_seed(self.cfg.seed + EVAL_SEED_OFFSET)
        batch_size = data.eval_batch_size or data.batch_size
        total = 0.0
        for _ in range(data.eval_batches):
            x, y = text.lm_batch(self.corpus, "val", batch_size, data.seq_len, generator)
            total += float(self.loss(model, x.to(self.device), y.to(self.device)))
        val_loss = total / data.eval_batches
        return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, MAX_PPL_EXPONENT))}


class ImageClassificationTask(Task):
    """MNIST digit classification (E.2.1)."""

    def __init__(self, cfg: TrialConfig, device: torch.device) -> None:
        super().__init__(cfg, device)
        self.images = mnist.load_mnist(cfg.data)
        self.vocab_size = None

    def _draw_train_batch(self, generator: torch.Generator) -> Batch:
        return mnist.image_batch(self.images, self.cfg.data.batch_size, generator)

    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        """Loss and error = 1 - accuracy over the whole validation split (E.2.1)."""
        batch_size = self.cfg.data.eval_batch_size or DEFAULT_IMAGE_EVAL_BATCH
        loss_sum, wrong, count = 0.0, 0, 0
        for x, y in mnist.iter_eval_batches(self.images.x_val, self.images.y_val, batch_size):
            x, y = x.to(self.device), y.to(self.device)
            logits = model(x).float()
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            wrong += int((logits.argmax(dim=-1) != y).sum())
            count += y.numel()
        return {"val_loss": loss_sum / count, "val_error": wrong / count}


def make_task(cfg: TrialConfig, device: torch.device) -> Task:
    """The task of ``cfg.model.kind``: the MLP classifies MNIST, every other model is a LM."""
    if cfg.model.kind == "mlp":
        return ImageClassificationTask(cfg, device)
    return LanguageModelingTask(cfg, device)


__all__ = [
    "EVAL_SEED_OFFSET",
    "ImageClassificationTask",
    "LanguageModelingTask",
    "Task",
    "make_task",
]
