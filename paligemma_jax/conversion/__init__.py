"""Checkpoint conversion: HF safetensors <-> native params through one declarative table."""

from paligemma_jax.conversion.hf import config_from_hf, load_hf_checkpoint, read_hf_config
from paligemma_jax.conversion.hf_table import Row, Transform, canonical_key, table
from paligemma_jax.conversion.safetensors_io import CheckpointError, SafetensorsReader

__all__ = [
    "CheckpointError", "Row", "SafetensorsReader", "Transform", "canonical_key",
    "config_from_hf", "load_hf_checkpoint", "read_hf_config", "table",
]
