"""Pure model math: configs, variants, SigLIP, Gemma, PaliGemma, masks and the KV cache."""

from paligemma_jax.models.config import (GemmaConfig, PaliGemmaConfig, QuantizationConfig,
                                         SigLIPConfig)
from paligemma_jax.models.gemma import Gemma
from paligemma_jax.models.kv_cache import KVCache
from paligemma_jax.models.masks import (default_positions, mask_ar_from_token_type_ids,
                                        prefix_lm_mask, sliding_window_mask)
from paligemma_jax.models.paligemma import (PaliGemma, attention_masks, check_image_tokens, init_params,
                                            param_count, param_logical_axes, param_shapes,
                                            unstack_layers)
from paligemma_jax.models.quantize import quantize_params, quantized_shapes
from paligemma_jax.models.siglip import SigLIP
from paligemma_jax.models.variants import VARIANTS, get_variant
from paligemma_jax.models.vqvae import (VQVAEDecoder, VQVAEEncoder, decode_codes, encode_masks,
                                        init_vqvae_params, vqvae_param_shapes)

__all__ = [
    "GemmaConfig", "PaliGemmaConfig", "QuantizationConfig", "SigLIPConfig", "Gemma", "KVCache",
    "PaliGemma",
    "SigLIP", "attention_masks", "check_image_tokens", "init_params", "param_count", "param_logical_axes", "param_shapes", "unstack_layers", "default_positions", "mask_ar_from_token_type_ids",
    "prefix_lm_mask", "sliding_window_mask", "VARIANTS", "get_variant",
    "VQVAEDecoder", "VQVAEEncoder", "decode_codes", "encode_masks", "init_vqvae_params",
    "vqvae_param_shapes", "quantize_params", "quantized_shapes",
]
