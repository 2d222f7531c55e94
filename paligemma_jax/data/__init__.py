"""Data side of PaliGemma: tokenizer, image preprocessing and the text/image processor.

This package never imports `paligemma_jax.models` or JAX: it produces NumPy arrays only.
"""

from paligemma_jax.data.images import IMAGE_METHODS, check_pixel_values, is_image, preprocess_image, resize_bilinear_tf
from paligemma_jax.data.processor import IGNORE_LABEL, PADDING_SIDES, TOKENIZATIONS, Processor
from paligemma_jax.data.standin_tokenizer import train_standin_tokenizer
from paligemma_jax.data.tokenizer import (IMAGE_TOKEN, LOC_TOKENS, NUM_LOC_TOKENS, NUM_SEG_TOKENS, SEG_TOKENS,
                                          Tokenizer)

__all__ = [
    "IGNORE_LABEL",
    "IMAGE_METHODS",
    "IMAGE_TOKEN",
    "LOC_TOKENS",
    "NUM_LOC_TOKENS",
    "NUM_SEG_TOKENS",
    "PADDING_SIDES",
    "Processor",
    "SEG_TOKENS",
    "TOKENIZATIONS",
    "Tokenizer",
    "check_pixel_values",
    "is_image",
    "preprocess_image",
    "resize_bilinear_tf",
    "train_standin_tokenizer",
]
