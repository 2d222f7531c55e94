"""Checkpoint conversion between HF safetensors, big_vision npz and the project's Orbax params,
through declarative tables (`hf_table`, `npz_table`) and streaming sources and writers."""

from paligemma_jax.conversion.convert import (FORMATS, DestinationExistsError, Summary, convert,
                                              detect_format, open_source)
from paligemma_jax.conversion.hf import HFSource, config_from_hf, load_hf_checkpoint, read_hf_config
from paligemma_jax.conversion.hf_config import to_hf_config
from paligemma_jax.conversion.hf_table import Row, Transform, canonical_key, table
from paligemma_jax.conversion.hf_writer import write_hf
from paligemma_jax.conversion.npz import NpzSource, shapes_config, write_npz
from paligemma_jax.conversion.npz_variant import npz_variant, read_config_json
from paligemma_jax.conversion.safetensors_io import CheckpointError, SafetensorsReader
from paligemma_jax.conversion.streaming import (CastSource, ConversionError, MemorySource, Source,
                                                read_params)
from paligemma_jax.conversion.verify import VerificationError, VerifyResult

__all__ = [
    "CastSource", "CheckpointError", "ConversionError", "DestinationExistsError", "FORMATS",
    "HFSource", "MemorySource", "NpzSource", "Row", "SafetensorsReader", "Source", "Summary",
    "Transform", "VerificationError", "VerifyResult", "canonical_key", "config_from_hf",
    "convert", "detect_format", "load_hf_checkpoint", "npz_variant", "open_source",
    "read_config_json", "read_hf_config", "read_params", "shapes_config", "table", "to_hf_config",
    "write_hf", "write_npz",
]

from paligemma_jax.conversion.vqvae import (load_vqvae_npz, save_vqvae_npz, vqvae_params_from_npz,
                                            vqvae_params_to_npz)

__all__ += ["load_vqvae_npz", "save_vqvae_npz", "vqvae_params_from_npz", "vqvae_params_to_npz"]
