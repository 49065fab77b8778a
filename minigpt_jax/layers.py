"""The model's interchangeable parts: dense layers, norms and MLPs, chosen by GPTConfig fields.

GPT-2's choices (LayerNorm with bias, GELU MLP of width 4d, N(0, 0.02) init with residual outputs
scaled by 1/sqrt(2L)) are the defaults; the alternatives are the ones modded-nanogpt's records kept.
Names stay GPT-2's (`c_fc`, `c_proj`, `ln_1`, ...) whatever the variant, so checkpoints,
sharding and Hugging Face export see one layout.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import jax.numpy as jnp

if TYPE_CHECKING:
    from minigpt_jax.model import GPTConfig

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "relu2", "swiglu")


def dense(features: int, config: GPTConfig, name: str, std: float = 0.02) -> nn.Dense:
    init = nn.initializers.zeros if std == 0 else nn.initializers.normal(std)
    return nn.Dense(
        features,
        use_bias=config.bias,
        dtype=config.dtype,
        param_dtype=jnp.float32,
        kernel_init=init,
        bias_init=nn.initializers.zeros,
        name=name,
    )


def residual_std(config: GPTConfig) -> float:
    """Init std of the layers that write into the residual stream (attention and MLP outputs):
    GPT-2's 0.02 / sqrt(2 n_layer), or 0 under `zero_init_proj` (each block starts as the identity,
    as in modded-nanogpt)."""
    return 0.0 if config.zero_init_proj else 0.02 / math.sqrt(2 * config.n_layer)


def norm(config: GPTConfig, name: str) -> nn.Module:
    """LayerNorm (GPT-2) or RMSNorm, always in float32: the residual stream stays float32 too."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(epsilon=1e-5, dtype=jnp.float32, param_dtype=jnp.float32, name=name)
    return nn.LayerNorm(
        epsilon=1e-5, use_bias=config.bias, dtype=jnp.float32, param_dtype=jnp.float32, name=name
    )


def rms_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """x / rms(x) over the last axis, no learned scale (QK-norm: unit-RMS queries and keys)."""
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)


def mlp_width(config: GPTConfig) -> int:
    """Hidden width: 4d, or for SwiGLU (three matrices, not two) 2/3 * 4d rounded to the nearest
    multiple of 64, so the MLP keeps GPT-2's parameter count within a few percent."""
    if config.mlp != "swiglu":
        return 4 * config.n_embd
    return max(64, round(8 * config.n_embd / 3 / 64) * 64)


class MLP(nn.Module):
    """GELU (GPT-2), ReLU^2 (So et al., Primer) or SwiGLU (Shazeer 2020; gate and value fused in
    one `c_fc` matmul of twice the width)."""

    config: GPTConfig

    @nn.compact
    def __call__(self, x_BTD: jax.Array, deterministic: bool) -> jax.Array:
        cfg = self.config
        F = mlp_width(cfg)
        if cfg.mlp == "swiglu":
            gate_BTF, value_BTF = jnp.split(dense(2 * F, cfg, "c_fc")(x_BTD), 2, axis=-1)
            h_BTF = nn.silu(gate_BTF) * value_BTF
        elif cfg.mlp == "relu2":
            h_BTF = jnp.square(nn.relu(dense(F, cfg, "c_fc")(x_BTD)))
        else:
            h_BTF = nn.gelu(dense(F, cfg, "c_fc")(x_BTD), approximate=True)
        y_BTD = dense(cfg.n_embd, cfg, "c_proj", std=residual_std(cfg))(h_BTF)
        return nn.Dropout(cfg.dropout)(y_BTD, deterministic=deterministic)
