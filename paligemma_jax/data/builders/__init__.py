"""TFDS builders for the transfer datasets the TFDS catalogue lacks, each reading its own release.

Every builder reads a folder of the dataset's downloaded raw files (layout in its module's
docstring) and writes array_record with pre-encoded images, for Grain. Build one with
`python -m paligemma_jax.data.build_dataset --dataset NAME --raw_dir RAW --data_dir DATA`.

Question-answering builders share the field names the `vqa` task reads by default (`image`,
`question`, `answers`, `question_id`); nocaps follows `coco_captions` (`image/id`, `captions/text`).

Importing this package imports tensorflow_datasets (the rest of `paligemma_jax.data` does not).
"""

from paligemma_jax.data.builders.ai2d import Ai2d
from paligemma_jax.data.builders.chartqa import ChartQa
from paligemma_jax.data.builders.docvqa import DocVqa
from paligemma_jax.data.builders.gqa import Gqa
from paligemma_jax.data.builders.nocaps import NoCaps
from paligemma_jax.data.builders.raw_files import BadRawFile, MissingRawFile, RawFilesBuilder
from paligemma_jax.data.builders.science_qa import ScienceQa
from paligemma_jax.data.builders.tallyqa import TallyQa
from paligemma_jax.data.builders.textvqa import TextVqa
from paligemma_jax.data.builders.vqa import OkVqa, Vqav2

# --dataset name -> builder class (the name is also the TFDS name).
BUILDERS: dict[str, type[RawFilesBuilder]] = {
    cls.name: cls for cls in (Vqav2, OkVqa, TextVqa, DocVqa, Gqa, ChartQa, Ai2d, ScienceQa, TallyQa,
                              NoCaps)
}

__all__ = ["Ai2d", "BUILDERS", "BadRawFile", "ChartQa", "DocVqa", "Gqa", "MissingRawFile", "NoCaps",
           "OkVqa", "RawFilesBuilder", "ScienceQa", "TallyQa", "TextVqa", "Vqav2"]
