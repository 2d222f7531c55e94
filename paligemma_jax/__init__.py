"""paligemma_jax: PaliGemma 1 and 2 in JAX / Flax Linen.

Subpackages: `models` (pure model math), `data` (tokenizer, processor), `conversion` (HF
checkpoints). The names below are the small public API (see `paligemma_jax.api`).
"""

from paligemma_jax.api import compute_logits, load_checkpoint, make_processor
from paligemma_jax.models import VARIANTS, PaliGemmaConfig, get_variant

__all__ = ["VARIANTS", "PaliGemmaConfig", "compute_logits", "get_variant", "load_checkpoint",
           "make_processor"]
