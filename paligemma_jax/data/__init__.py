"""Data side of PaliGemma: tokenizer, image preprocessing, the text/image processor, tasks and
the TFDS reader.

This package never imports `paligemma_jax.models` or JAX: it produces NumPy arrays only.
TensorFlow / tensorflow_datasets are imported only when a TFDS split is read.
"""

from paligemma_jax.data.images import IMAGE_METHODS, check_pixel_values, is_image, preprocess_image, resize_bilinear_tf
from paligemma_jax.data.processor import IGNORE_LABEL, PADDING_SIDES, TOKENIZATIONS, Processor
from paligemma_jax.data.standin_tokenizer import train_standin_tokenizer
from paligemma_jax.data.tasks import (TASKS, Captioning, QuestionAnswering, ReferringDetection,
                                      ReferringSegmentation, Row, Task, Template, make_task)
from paligemma_jax.data.tfds_input import IMAGE_DECODERS, TfdsSource, count_examples, decode_image, tfds_rows
from paligemma_jax.data.tokenizer import (IMAGE_TOKEN, LOC_TOKENS, NUM_LOC_TOKENS, NUM_SEG_TOKENS, SEG_TOKENS,
                                          Tokenizer)

__all__ = [
    "Captioning",
    "IGNORE_LABEL",
    "IMAGE_DECODERS",
    "IMAGE_METHODS",
    "IMAGE_TOKEN",
    "LOC_TOKENS",
    "NUM_LOC_TOKENS",
    "NUM_SEG_TOKENS",
    "PADDING_SIDES",
    "Processor",
    "QuestionAnswering",
    "ReferringDetection",
    "ReferringSegmentation",
    "Row",
    "SEG_TOKENS",
    "TASKS",
    "TOKENIZATIONS",
    "Task",
    "Template",
    "TfdsSource",
    "Tokenizer",
    "check_pixel_values",
    "count_examples",
    "decode_image",
    "is_image",
    "make_task",
    "preprocess_image",
    "resize_bilinear_tf",
    "tfds_rows",
    "train_standin_tokenizer",
]
