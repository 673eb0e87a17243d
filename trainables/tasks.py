"""Training tasks: what a trial trains on and how it is evaluated.

:class:`Task` is what the trainer drives: batches, the loss and evaluation. Each trial family
(:mod:`signlock.trainables.families`) names its task; :func:`make_task` asks it. The image
classifiers (the MLP and the CNN) share :class:`ImageClassificationTask` (E.2.1): random training
batches, and evaluation over the whole validation split once, reporting its loss and error =
1 - accuracy. The language-modelling task is the GPT family's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from signlock.trainables import mnist
from signlock.trainables.config import TrialConfig
from signlock.trainables.mnist import ImageData
from signlock.trainables.schema import VAL_ERROR, VAL_LOSS

EVAL_SEED_OFFSET = 10_007  # evaluation batches come from their own fixed-seed generator
DEFAULT_IMAGE_EVAL_BATCH = 512

Batch = tuple[torch.Tensor, torch.Tensor]


class Task(ABC):
    """Batches, loss and evaluation of one trial family's data."""

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


class ImageClassificationTask(Task):
    """Classification of ``images`` (MNIST digits in E.2.1, or a family's own images)."""

    def __init__(self, cfg: TrialConfig, device: torch.device, images: ImageData) -> None:
        super().__init__(cfg, device)
        self.images = images
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
        return {VAL_LOSS: loss_sum / count, VAL_ERROR: wrong / count}


def make_task(cfg: TrialConfig, device: torch.device) -> Task:
    """The task of ``cfg``'s trial family."""
    from signlock.trainables.families import family_of  # the families import this module

    return family_of(cfg).make_task(cfg, device)


__all__ = [
    "EVAL_SEED_OFFSET",
    "ImageClassificationTask",
    "Task",
    "make_task",
]
