"""Models of the paper: the GPT-style causal character LM and the MNIST VisionMLP.

One ``GPT`` class covers TinyCharLM (C.4.1: ``GPT(ModelConfig(), vocab)``), the synthetic-task LM
of C.3.6 (12 layers, d 256, 4 heads, d_ff 1024, context 128) and the billion-scale family of C.5
(``SCALE_CONFIGS``, Table 1). ``VisionMLP`` is the two-hidden-layer MLP of E.2.1.

The pieces follow nanoGPT: attention -> MLP -> block -> model. ``build_model`` is the one entry
point the trainer uses: it builds on the ``meta`` device, materialises on the target device and
applies the baseline GPT-like initialisation of C.4.1/C.5/E.2.1 (``init_weights``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from signlock.trainables.config import ModelConfig
from signlock.trainables.errors import ConfigError

TINYSHAKESPEARE_VOCAB = 65  # character vocabulary of Tiny Shakespeare (C.4.1, C.5)

_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def torch_dtype(cfg: ModelConfig) -> torch.dtype:
    """The storage dtype of the weights (C.5 stores them in bf16; LayerNorm stays fp32)."""
    return _DTYPES[cfg.dtype]


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

    def __init__(self, cfg: ModelConfig) -> None:
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

    def __init__(self, cfg: ModelConfig) -> None:
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

    def __init__(self, cfg: ModelConfig) -> None:
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

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
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


# ---------------------------------------------------------------------------------------------
# Vision
# ---------------------------------------------------------------------------------------------


class VisionMLP(nn.Module):
    """MNIST MLP of E.2.1: Flatten -> Linear(784, h1) -> ReLU -> Linear(h1, h2) -> ReLU ->
    Linear(h2, 10), with the hidden widths from ``cfg.hidden_sizes`` (paper: [256, 256]).
    The Linear layers are ``layers.0``, ``layers.1``, ... in order."""

    def __init__(self, cfg: ModelConfig, in_features: int = 784, n_classes: int = 10) -> None:
        super().__init__()
        widths = [in_features, *cfg.hidden_sizes, n_classes]
        dtype = torch_dtype(cfg)
        self.flatten = nn.Flatten()
        self.layers = nn.ModuleList(
            nn.Linear(d_in, d_out, bias=True, dtype=dtype) for d_in, d_out in pairwise(widths)
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x).to(self.layers[0].weight.dtype)  # (B, 784) from (B, 1, 28, 28)
        for layer in self.layers[:-1]:
            x = self.act(layer(x))  # (B, h_i)
        return self.layers[-1](x)  # (B, n_classes)


# ---------------------------------------------------------------------------------------------
# Initialisation, parameters
# ---------------------------------------------------------------------------------------------


def init_weights(model: nn.Module, cfg: ModelConfig) -> None:
    """Baseline "GPT-like" initialisation (C.4.1, C.5, E.2.1), in place, from the global RNG.

    Every ``nn.Linear`` and ``nn.Embedding`` weight ~ N(0, σ_init²), biases 0, LayerNorm weight 1
    and bias 0. A GPT's position embedding is N(0, σ_init²) for ``pos_init="normal"`` and zero for
    ``pos_init="zero"`` (C.5). Modules are visited in registration order, so the draws are
    reproducible for a seeded RNG."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=cfg.sigma_init)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.LayerNorm):
                _init_layer_norm(module)
        if cfg.pos_init == "zero":  # after the loop: a GPT is visited before its embeddings
            for module in model.modules():
                if isinstance(module, GPT):
                    nn.init.zeros_(module.pos_emb.weight)


def _init_layer_norm(module: nn.LayerNorm) -> None:
    if module.weight is not None:
        nn.init.ones_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def matrix_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Named parameters with ``dim >= 2`` in registration order: the default target set of the
    interventions and of the sign tracker ("all matrix-shaped parameters", C.4.1, C.4.2)."""
    return [(name, p) for name, p in model.named_parameters() if p.dim() >= 2]


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (shared tensors counted once); works on ``meta`` models."""
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# Builders (registry by ``cfg.kind``)
# ---------------------------------------------------------------------------------------------


def _build_gpt(cfg: ModelConfig, vocab_size: int | None) -> nn.Module:
    if vocab_size is None:
        raise ConfigError(
            "vocab_size", None, "an integer >= 1 (taken from the dataset) when model.kind='gpt'"
        )
    return GPT(cfg, vocab_size)


def _build_mlp(cfg: ModelConfig, vocab_size: int | None) -> nn.Module:
    del vocab_size  # the MNIST MLP has a fixed 784 -> 10 interface (E.2.1)
    return VisionMLP(cfg)


MODEL_BUILDERS: dict[str, Callable[[ModelConfig, int | None], nn.Module]] = {
    "gpt": _build_gpt,
    "mlp": _build_mlp,
}


def build_model(
    cfg: ModelConfig, *, vocab_size: int | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """Build the model of ``cfg.kind`` on ``device`` and apply ``init_weights``.

    The module tree is created on the ``meta`` device (no memory, no wasted default init), then
    materialised with ``to_empty`` and initialised in place, so even the 12.9B model of C.5 is
    only ever allocated once, directly on its device. ``device="meta"`` returns the
    un-materialised model (for parameter counting and shape checks)."""
    if cfg.kind not in MODEL_BUILDERS:
        raise ConfigError("model.kind", cfg.kind, "one of " + ", ".join(MODEL_BUILDERS))
    device = torch.device(device)
    with torch.device("meta"):
        model = MODEL_BUILDERS[cfg.kind](cfg, vocab_size)
    if device.type == "meta":
        return model
    model = model.to_empty(device=device)
    init_weights(model, cfg)
    return model


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


def scale_model_config(name: str) -> ModelConfig:
    """The ``ModelConfig`` of a C.5 scale-family member: d_ff = 4·d_model, head dim 64 (n_heads
    from Table 1), context 64, zero-initialised positions, bf16 weights with fp32 LayerNorm,
    per-block gradient checkpointing, σ_init = 0.02, and bias-free block Linears (with biases
    Table 1's counts come out one unit of the last printed digit high in six rows)."""
    if name not in SCALE_CONFIGS:
        raise ConfigError("model.scale", name, "one of " + ", ".join(SCALE_CONFIGS))
    spec = SCALE_CONFIGS[name]
    return ModelConfig(
        kind="gpt",
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
