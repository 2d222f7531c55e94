"""Published PaliGemma variants as data: `get_variant("paligemma2_10b_448")`.

The vocabulary is big_vision's 257,152 rows (256,000 Gemma pieces + 1,024 <loc> + 128 <seg>), so
parameter counts equal the published ones; HF checkpoints carry 64 extra rows (257,216), and a
model loaded from a checkpoint takes its row count from the checkpoint.
"""

from __future__ import annotations

from paligemma_jax.models.config import GemmaConfig, PaliGemmaConfig, SigLIPConfig

BIG_VISION_VOCAB = 257_152
HF_VOCAB = 257_216
RESOLUTIONS = (224, 448, 896)

# The Gemma decoders behind each PaliGemma size (numerics.md §5.3).
_GEMMA_2B = GemmaConfig(version=1, width=2048, depth=18, mlp_dim=16384, num_heads=8,
                        num_kv_heads=1, head_dim=256, vocab_size=BIG_VISION_VOCAB)
_GEMMA2 = dict(version=2, head_dim=256, vocab_size=BIG_VISION_VOCAB, attn_logit_softcap=50.0,
               final_logit_softcap=30.0)
_GEMMA2_2B = GemmaConfig(width=2304, depth=26, mlp_dim=9216, num_heads=8, num_kv_heads=4,
                         **_GEMMA2)
_GEMMA2_9B = GemmaConfig(width=3584, depth=42, mlp_dim=14336, num_heads=16, num_kv_heads=8,
                         **_GEMMA2)
_GEMMA2_27B = GemmaConfig(width=4608, depth=46, mlp_dim=36864, num_heads=32, num_kv_heads=16,
                          **{**_GEMMA2, "head_dim": 128}, query_pre_attn_scalar=144.0)

_LLMS = {
    "paligemma_3b": _GEMMA_2B,
    "paligemma2_3b": _GEMMA2_2B,
    "paligemma2_10b": _GEMMA2_9B,
    "paligemma2_28b": _GEMMA2_27B,
}

VARIANTS: dict[str, PaliGemmaConfig] = {
    f"{family}_{res}": PaliGemmaConfig(vision=SigLIPConfig(image_size=res), text=llm)
    for family, llm in _LLMS.items() for res in RESOLUTIONS
}


def get_variant(name: str, **overrides) -> PaliGemmaConfig:
  """The config of a published variant, with optional `PaliGemmaConfig.replace` overrides."""
  if name not in VARIANTS:
    raise ValueError(f"unknown variant {name!r}; valid variants: {', '.join(VARIANTS)}")
  config = VARIANTS[name]
  return config.replace(**overrides) if overrides else config
