"""Decoding: greedy generation on device with an explicit KV cache."""

from paligemma_jax.inference.greedy import generate, greedy_generate

__all__ = ["generate", "greedy_generate"]
