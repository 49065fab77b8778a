"""The speedrun bench's variants: what `bench/speedrun.py` trains and compares.

Every variant is the `small` GPT-2 (4 layers, width 256, context 256, bytes) plus GPTConfig fields
and an optimizer. Each gets a learning-rate sweep on its first seed (a comparison at one untuned
lr says nothing); the baseline and the best stacks also get a second seed at the sweep's best lr,
so the seed noise sits next to the gain.
The learning rates bracket what the CPU sanity checks found (AdamW ~2e-3 for `small`; Muon ~0.02).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from minigpt_jax.model import MODERN


@dataclass(frozen=True)
class Variant:
    name: str
    model: dict = field(default_factory=dict)  # GPTConfig fields on top of the `small` preset
    optimizer: str = "adamw"
    lrs: tuple[float, ...] = (1e-3, 2e-3, 4e-3)  # AdamW's lr; Muon's muon_lr when optimizer=muon
    seeds: tuple[int, ...] = (0,)
    adamw_lr: float = 2e-3  # the AdamW group's lr while a Muon variant sweeps muon_lr


BASELINE = "gpt2"
BEST = "best-stack"

VARIANTS: tuple[Variant, ...] = (
    Variant(BASELINE, seeds=(0, 1)),
    # Each change alone on top of the baseline.
    Variant("rope", dict(pos_emb="rope")),
    Variant("rmsnorm", dict(norm="rmsnorm")),
    Variant("no-bias", dict(bias=False)),
    Variant("qk-norm", dict(qk_norm=True)),
    Variant("relu2", dict(mlp="relu2")),
    Variant("swiglu", dict(mlp="swiglu")),
    Variant("untied-head", dict(tie_embeddings=False)),
    Variant("zero-init-proj", dict(zero_init_proj=True)),
    Variant("softcap", dict(logit_softcap=15.0)),
    # Everything that helps, with AdamW, then with Muon on the hidden matrices.
    Variant(BEST, MODERN, seeds=(0, 1)),
    Variant(f"{BEST}+muon", MODERN, optimizer="muon", lrs=(0.01, 0.02, 0.04), seeds=(0, 1)),
    # Beyond attention (issue 16): gated DeltaNet everywhere, and hybrids with one attention layer
    # in four (layer 3 of 4), on GPT-2's stack and on the best one.
    Variant("gated-deltanet", dict(mixer="gated_deltanet"), seeds=(0, 1)),
    Variant("hybrid-1in4", dict(mixer="gated_deltanet", attention_every=4), seeds=(0, 1)),
    Variant(
        f"{BEST}-hybrid-1in4", {**MODERN, "mixer": "gated_deltanet", "attention_every": 4},
        seeds=(0, 1),
    ),
    # The hybrid against the best transformer row on equal terms: the same stack with Muon.
    Variant(
        f"{BEST}-hybrid-1in4+muon",
        {**MODERN, "mixer": "gated_deltanet", "attention_every": 4},
        optimizer="muon", lrs=(0.01, 0.02, 0.04), seeds=(0, 1),
    ),
)

# --quick: the pipeline end to end in a few minutes (two variants, one lr, tiny budget).
QUICK_VARIANTS: tuple[Variant, ...] = (
    Variant(BASELINE, lrs=(2e-3,)),
    Variant(f"{BEST}+muon", MODERN, optimizer="muon", lrs=(0.02,)),
)
