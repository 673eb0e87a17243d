"""The GPT family: causal Transformer language models on character corpora or the synthetic
next-token corpus.

One ``GPT`` class covers TinyCharLM (C.4.1: ``GPT(GPTConfig(), vocab)``), the synthetic-task LM
of C.3.6 (12 layers, d 256, 4 heads, d_ff 1024, context 128) and the billion-scale family of C.5
(``SCALE_CONFIGS``, Table 1). The pieces follow nanoGPT: attention -> MLP -> block -> model.
The task (:class:`LanguageModelingTask`) draws next-token batches from :func:`text.lm_batch`;
evaluation is the mean loss over ``data.eval_batches`` random validation batches from a
fixed-seed generator, and PPL = exp(loss in nats) (C.4.1). The planner's activation model
counts the tensors this GPT saves for backward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from signlock.trainables import text
from signlock.trainables.config import ModelConfig, TrialConfig
from signlock.trainables.errors import ConfigError
from signlock.trainables.families.base import (
    FP32,
    Family,
    element_size,
    gaussian_init,
    torch_dtype,
)
from signlock.trainables.schema import VAL_LOSS, VAL_PPL
from signlock.trainables.tasks import EVAL_SEED_OFFSET, Batch, Task

TINYSHAKESPEARE_VOCAB = 65  # character vocabulary of Tiny Shakespeare (C.4.1, C.5)
TEXT8_VOCAB = 27  # text8: lowercase a-z and space
TEXT_FILE_VOCAB = 256  # an arbitrary text file: byte-sized upper bound (known only after reading)
MAX_PPL_EXPONENT = 700.0  # exp(700) is near the float64 limit; larger losses would overflow
LN_STATS_BYTES = 2 * FP32  # mean and rstd per token and LayerNorm


def _require(ok: bool, field_name: str, value: object, allowed: str) -> None:
    if not ok:
        raise ConfigError(field_name, value, allowed)


@dataclass(kw_only=True)
class GPTConfig(ModelConfig):
    """A causal Transformer LM: TinyCharLM by default (C.4.1), the scale family (C.5) and the
    synthetic LM (C.3.6). ``vocab_size`` is taken from the dataset."""

    kind: Literal["gpt"] = "gpt"
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 256
    context_length: int = 256
    pos_init: Literal["normal", "zero"] = "normal"  # C.5 zero-initialises positions
    linear_bias: bool = True  # C.5's Table 1 counts match bias-free block Linears

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("d_model", "n_layers", "n_heads", "d_ff", "context_length"):
            value = getattr(self, name)
            _require(value >= 1, f"model.{name}", value, "an integer >= 1")
        _require(
            self.d_model % self.n_heads == 0,
            "model.n_heads",
            self.n_heads,
            f"a divisor of model.d_model={self.d_model}",
        )


# ---------------------------------------------------------------------------------------------
# Transformer pieces
# ---------------------------------------------------------------------------------------------


class LayerNorm(nn.LayerNorm):
    """LayerNorm with fp32 parameters and fp32 arithmetic (C.5): the input is cast to fp32,
    normalised and cast back to its own dtype. For fp32 models this is a plain LayerNorm."""

    def __init__(self, d_model: int) -> None:
        super().__init__(d_model, dtype=torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        y = F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)
        return y.to(x.dtype)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with explicit q/k/v/o projections (C.3.6) and PyTorch's
    SDPA kernel with ``is_causal=True`` and dropout 0 (C.5)."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        d, dtype = cfg.d_model, torch_dtype(cfg)
        self.n_heads = cfg.n_heads
        self.head_dim = d // cfg.n_heads
        self.q = nn.Linear(d, d, bias=cfg.linear_bias, dtype=dtype)
        self.k = nn.Linear(d, d, bias=cfg.linear_bias, dtype=dtype)
        self.v = nn.Linear(d, d, bias=cfg.linear_bias, dtype=dtype)
        self.o = nn.Linear(d, d, bias=cfg.linear_bias, dtype=dtype)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape  # (B, T, C)
        q = self._split_heads(self.q(x))  # (B, nh, T, hd)
        k = self._split_heads(self.k(x))  # (B, nh, T, hd)
        v = self._split_heads(self.v(x))  # (B, nh, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): re-assemble the heads
        return self.o(y)  # (B, T, C)


class MLP(nn.Module):
    """Two-layer feed-forward network with GELU (C.3.6, C.5): d -> d_ff -> d, biases on."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        dtype = torch_dtype(cfg)
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.linear_bias, dtype=dtype)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.linear_bias, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(x))  # (B, T, d_ff)
        return self.fc2(x)  # (B, T, C)


class Block(nn.Module):
    """Pre-LayerNorm Transformer block (C.5): x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))  # (B, T, C)
        return x + self.mlp(self.ln2(x))  # (B, T, C)


class GPT(nn.Module):
    """Causal Transformer LM (C.3.6, C.4.1, C.5): token embedding + learned absolute position
    embedding, ``n_layers`` pre-LN blocks, final LayerNorm and an untied bias-free LM head.
    No dropout anywhere. With ``cfg.dtype == "bfloat16"`` every weight is bf16 except the
    LayerNorms (fp32, C.5); with ``cfg.gradient_checkpointing`` each block is checkpointed while
    training (C.5)."""

    def __init__(self, cfg: GPTConfig, vocab_size: int) -> None:
        super().__init__()
        if vocab_size < 1:
            raise ConfigError("vocab_size", vocab_size, "an integer >= 1")
        dtype = torch_dtype(cfg)
        self.vocab_size = vocab_size
        self.context_length = cfg.context_length
        self.gradient_checkpointing = cfg.gradient_checkpointing
        self.tok_emb = nn.Embedding(vocab_size, cfg.d_model, dtype=dtype)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.d_model, dtype=dtype)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, vocab_size, bias=False, dtype=dtype)

    def _check_input(self, idx: torch.Tensor) -> None:
        if idx.dim() != 2:
            raise ConfigError("input shape", tuple(idx.shape), "(batch, time) token indices")
        if idx.shape[1] > self.context_length:
            raise ConfigError(
                "input length T",
                idx.shape[1],
                f"<= model.context_length={self.context_length} "
                "(the size of the learned position embedding)",
            )

    def _run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        self._check_input(idx)
        T = idx.shape[1]
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.tok_emb(idx) + self.pos_emb(pos)  # (B, T, C)
        for block in self.blocks:
            x = self._run_block(block, x)  # (B, T, C)
        x = self.ln_f(x)  # (B, T, C)
        return self.lm_head(x)  # (B, T, vocab)


def build_gpt(cfg: GPTConfig, vocab_size: int | None) -> GPT:
    if vocab_size is None:
        raise ConfigError(
            "vocab_size", None, "an integer >= 1 (taken from the dataset) when model.kind='gpt'"
        )
    return GPT(cfg, vocab_size)


def init_gpt(model: nn.Module, cfg: GPTConfig) -> None:
    """The baseline initialisation (C.4.1, C.5); the position embedding is N(0, σ_init²) for
    ``pos_init="normal"`` and zero for ``pos_init="zero"`` (C.5)."""
    gaussian_init(model, cfg.sigma_init)
    if cfg.pos_init == "zero":  # after the baseline: a GPT is visited before its embeddings
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, GPT):
                    nn.init.zeros_(module.pos_emb.weight)


# ---------------------------------------------------------------------------------------------
# Task
# ---------------------------------------------------------------------------------------------


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
        return {VAL_LOSS: val_loss, VAL_PPL: math.exp(min(val_loss, MAX_PPL_EXPONENT))}


def sequence_length(cfg: TrialConfig) -> int:
    """Tokens per training sequence: whole synthetic rows (C.3.6), else ``seq_len`` blocks."""
    data = cfg.data
    return data.synthetic_seq_len if data.dataset == "synthetic" else data.seq_len


def check_sequence_length(cfg: TrialConfig) -> None:
    """The model sees sequences of synthetic_seq_len (C.3.6) or seq_len tokens."""
    field_name = "synthetic_seq_len" if cfg.data.dataset == "synthetic" else "seq_len"
    context = cfg.model.context_length  # type: ignore[attr-defined]
    _require(
        sequence_length(cfg) <= context,
        f"data.{field_name}",
        sequence_length(cfg),
        f"<= model.context_length={context}",
    )


def tokens_per_step(cfg: TrialConfig) -> int:
    """Training tokens per optimizer step: batch × sequence length."""
    return cfg.data.batch_size * sequence_length(cfg)


def planned_vocab_size(cfg: TrialConfig) -> int:
    """The vocabulary the task will take from the dataset, known before reading it."""
    by_dataset = {
        "synthetic": cfg.data.synthetic_vocab,
        "text8": TEXT8_VOCAB,
        "tinyshakespeare": TINYSHAKESPEARE_VOCAB,
    }
    return by_dataset.get(cfg.data.dataset, TEXT_FILE_VOCAB)


# ---------------------------------------------------------------------------------------------
# Planner: activations saved for backward
# ---------------------------------------------------------------------------------------------


def block_bytes_per_token(model: GPTConfig) -> int:
    """Activation bytes one pre-LN block saves for backward, per token: both LayerNorm inputs
    (cast to fp32, C.5) and their statistics; the LayerNorm outputs, q, k, v and the attention
    output at the compute dtype; the log-sum-exp per head (fp32); the MLP's hidden pre- and
    post-GELU activations."""
    s, d = element_size(model), model.d_model
    layer_norms = 2 * (FP32 * d + LN_STATS_BYTES)
    attention = s * 5 * d + FP32 * model.n_heads  # ln1 out, q, k, v, attention output
    mlp = s * d + 2 * s * model.d_ff  # ln2 out, fc1 out, GELU out
    return layer_norms + attention + mlp


def head_bytes_per_token(model: GPTConfig, vocab: int) -> int:
    """The final LayerNorm (input in fp32, statistics, output) and the fp32 log-softmax of the
    cross-entropy."""
    s, d = element_size(model), model.d_model
    return FP32 * d + LN_STATS_BYTES + s * d + FP32 * vocab


def loss_backward_bytes_per_token(model: GPTConfig, vocab: int) -> int:
    """Buffers the loss's backward allocates while every activation is still held: the fp32
    gradient of the log-softmax and of the logits (plus their cast back for bf16 logits)."""
    cast_back = element_size(model) * vocab if model.dtype == "bfloat16" else 0
    return 2 * FP32 * vocab + cast_back


def activation_bytes_per_token(model: GPTConfig, vocab: int) -> tuple[int, int]:
    """(without, with) per-block gradient checkpointing. Checkpointing keeps each block's input
    and recomputes one block at a time in backward."""
    block = block_bytes_per_token(model)
    head = head_bytes_per_token(model, vocab) + loss_backward_bytes_per_token(model, vocab)
    full = model.n_layers * block + head
    checkpointed = model.n_layers * element_size(model) * model.d_model + block + head
    return full, checkpointed


def step_activation_bytes(cfg: TrialConfig, vocab: int | None) -> tuple[int, int]:
    """One training step's activations: per token × batch × sequence length."""
    full, checkpointed = activation_bytes_per_token(cfg.model, vocab or 1)  # type: ignore[arg-type]
    tokens = tokens_per_step(cfg)
    return full * tokens, checkpointed * tokens


def label(cfg: TrialConfig) -> str:
    """``gpt d128 L2 h4 ff256 V65``."""
    m: GPTConfig = cfg.model  # type: ignore[assignment]
    return f"gpt d{m.d_model} L{m.n_layers} h{m.n_heads} ff{m.d_ff} V{planned_vocab_size(cfg)}"


# ---------------------------------------------------------------------------------------------
# Billion-scale family (C.5, Table 1)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleSpec:
    """One row of Table 1 (C.5). ``table_params_billion`` is the paper's "Params (B)" column
    (None for the test-only debug size)."""

    d_model: int
    n_layers: int
    n_heads: int
    table_params_billion: float | None


SCALE_CONFIGS: dict[str, ScaleSpec] = {
    "scale-debug": ScaleSpec(d_model=64, n_layers=2, n_heads=1, table_params_billion=None),
    "scale-31m": ScaleSpec(d_model=512, n_layers=10, n_heads=8, table_params_billion=0.032),
    "scale-64m": ScaleSpec(d_model=768, n_layers=9, n_heads=12, table_params_billion=0.064),
    "scale-126m": ScaleSpec(d_model=1024, n_layers=10, n_heads=16, table_params_billion=0.126),
    "scale-260m": ScaleSpec(d_model=1344, n_layers=12, n_heads=21, table_params_billion=0.260),
    "scale-399m": ScaleSpec(d_model=1664, n_layers=12, n_heads=26, table_params_billion=0.399),
    "scale-604m": ScaleSpec(d_model=2048, n_layers=12, n_heads=32, table_params_billion=0.604),
    "scale-1.2b": ScaleSpec(d_model=2048, n_layers=24, n_heads=32, table_params_billion=1.209),
    "scale-1.8b": ScaleSpec(d_model=2048, n_layers=36, n_heads=32, table_params_billion=1.813),
    "scale-2.4b": ScaleSpec(d_model=2048, n_layers=48, n_heads=32, table_params_billion=2.417),
    "scale-5.4b": ScaleSpec(d_model=3072, n_layers=48, n_heads=48, table_params_billion=5.437),
    "scale-9.7b": ScaleSpec(d_model=4096, n_layers=48, n_heads=64, table_params_billion=9.665),
    "scale-12.9b": ScaleSpec(d_model=4096, n_layers=64, n_heads=64, table_params_billion=12.887),
}

SCALE_CONTEXT_LENGTH = 64  # C.5: learned absolute positions of length L = 64


def scale_model_config(name: str) -> GPTConfig:
    """The ``GPTConfig`` of a C.5 scale-family member: d_ff = 4·d_model, head dim 64 (n_heads
    from Table 1), context 64, zero-initialised positions, bf16 weights with fp32 LayerNorm,
    per-block gradient checkpointing, σ_init = 0.02, and bias-free block Linears (with biases
    Table 1's counts come out one unit of the last printed digit high in six rows)."""
    if name not in SCALE_CONFIGS:
        raise ConfigError("model.scale", name, "one of " + ", ".join(SCALE_CONFIGS))
    spec = SCALE_CONFIGS[name]
    return GPTConfig(
        d_model=spec.d_model,
        n_layers=spec.n_layers,
        n_heads=spec.n_heads,
        d_ff=4 * spec.d_model,
        context_length=SCALE_CONTEXT_LENGTH,
        pos_init="zero",
        sigma_init=0.02,
        dtype="bfloat16",
        gradient_checkpointing=True,
        linear_bias=False,
    )


def scale_name(model: ModelConfig) -> str | None:
    """The Table-1 (C.5) name of ``model`` if it is one of the scale family."""
    return next((name for name in SCALE_CONFIGS if scale_model_config(name) == model), None)


FAMILY = Family(
    name="gpt",
    title="causal Transformer language model (C.3.6, C.4, C.5)",
    config_class=GPTConfig,
    build_model=build_gpt,
    make_task=LanguageModelingTask,
    datasets=text.LM_DATASETS,
    objective="next-token cross-entropy",
    unit="tokens",
    units_per_step=tokens_per_step,
    vocab_size=planned_vocab_size,
    activation_bytes=step_activation_bytes,
    validation_metric=VAL_PPL,
    label=label,
    init_weights=init_gpt,
    check_trial=check_sequence_length,
)
