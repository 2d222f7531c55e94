"""TFDS builders for the transfer datasets the TFDS catalogue lacks, each reading its own release.

Every builder reads a folder of the dataset's downloaded raw files (layout in its module's
docstring) and writes array_record with pre-encoded images, for Grain. Build one with
`python -m paligemma_jax.data.build_dataset --dataset NAME --raw_dir RAW --data_dir DATA`.

Importing this package imports tensorflow_datasets (the rest of `paligemma_jax.data` does not).
"""

from paligemma_jax.data.builders.raw_files import MissingRawFile, RawFilesBuilder
from paligemma_jax.data.builders.vqa import OkVqa, Vqav2

# --dataset name -> builder class (the name is also the TFDS name).
BUILDERS: dict[str, type[RawFilesBuilder]] = {
    cls.name: cls for cls in (Vqav2, OkVqa)
}

__all__ = ["BUILDERS", "MissingRawFile", "OkVqa", "RawFilesBuilder", "Vqav2"]
