"""One call from images and prompts to text, boxes and masks, like HF's
`pipeline("image-text-to-text")`:

    pipe = Pipeline.load("ckpt/", "tokenizer.model", vqvae="vae-oid/")
    [result] = pipe([image], ["detect cat"])
    result.text, result.objects[0].box

Prompts starting with "detect" give `objects` with pixel boxes; prompts starting with "segment"
give boxes and masks (the masks need the VQ-VAE params). Batches are split over all devices
along the data axis; params are replicated as loaded.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
import numpy as np

from paligemma_jax import checkpoints, sharding
from paligemma_jax.conversion.vqvae import load_vqvae_npz
from paligemma_jax.data import Processor, Tokenizer
from paligemma_jax.inference.beam import BeamSearch
from paligemma_jax.inference.decode import as_key
from paligemma_jax.inference.mesh_decode import generate_on_mesh
from paligemma_jax.inference.parsers import (DetectedObject, clean_generated_text, mask_decoder,
                                             parse_detections, parse_segmentations)
from paligemma_jax.inference.sampling import GREEDY, Sampler
from paligemma_jax.models import PaliGemmaConfig
from paligemma_jax.models.config import QuantizationConfig

DEFAULT_MAX_LENGTH = 8192  # Gemma's position range; prompt + new tokens must fit


@dataclasses.dataclass
class Result:
  """One row's output. `logprob` is the sum of the new tokens' log-probs (the beam score with
  beam search); `objects` is None unless the prompt asked to detect or segment."""
  prompt: str
  text: str
  tokens: list[int]
  logprob: float
  objects: list[DetectedObject] | None = None

  def to_json(self) -> dict[str, Any]:
    out = {"prompt": self.prompt, "text": self.text, "tokens": self.tokens,
           "logprob": self.logprob}
    if self.objects is not None:
      out["objects"] = [{"label": o.label, "box_yxyx": list(o.box),
                         "mask_pixels": None if o.mask is None else int(o.mask.sum())}
                        for o in self.objects]
    return out


def load_vqvae(path: str | os.PathLike) -> dict:
  """VQ-VAE params from `vae-oid.npz` or an Orbax params checkpoint of them."""
  path = os.fspath(path)
  if path.endswith(".npz"):
    return load_vqvae_npz(path)
  return checkpoints.load_tree(path)


def task_of(prompt: str) -> str:
  """"detect", "segment" or "text", from the prompt's first word (PaliGemma's task prefixes)."""
  word = prompt.strip().split(" ", 1)[0].lower()
  return word if word in ("detect", "segment") else "text"


def image_hw(image: Any) -> tuple[int, int]:
  if hasattr(image, "size") and not isinstance(image, np.ndarray):  # PIL: (width, height)
    return image.size[1], image.size[0]
  return tuple(np.shape(image)[:2])


class Pipeline:
  """Processor + model + decoding + parsing, for a list of images and prompts."""

  def __init__(self, config: PaliGemmaConfig, params: dict, processor: Processor, *,
               vqvae_params: dict | None = None, mesh: jax.sharding.Mesh | None = None,
               max_length: int = DEFAULT_MAX_LENGTH):
    self.config, self.processor, self.max_length = config, processor, max_length
    self.tokenizer = processor.tokenizer
    self.mesh = mesh or sharding.make_mesh()
    # Params replicated across the data axis (with the default mesh every spec is replicated).
    self.params = jax.device_put(params, sharding.param_shardings(config, self.mesh))
    self.decode_fn = None if vqvae_params is None else mask_decoder(vqvae_params)

  @classmethod
  def load(cls, checkpoint: str | os.PathLike, tokenizer: str | os.PathLike, *,
           vqvae: str | os.PathLike | None = None, image_method: str = "hf",
           quantize: str | QuantizationConfig | None = None, quantize_group_size: int = 128,
           **options: Any) -> "Pipeline":
    """`quantize` ("int8" / "int4") loads the weights quantized (see `api.load_checkpoint`)."""
    from paligemma_jax.api import load_checkpoint, make_processor  # api composes the pieces
    config, params = load_checkpoint(checkpoint, quantize=quantize,
                                     quantize_group_size=quantize_group_size)
    processor = make_processor(config, Tokenizer(tokenizer), image_method)
    return cls(config, params, processor,
               vqvae_params=None if vqvae is None else load_vqvae(vqvae), **options)

  def prompt_length(self, prompt: str, num_images: int = 1) -> int:
    return len(self.processor.prefix_ids(prompt, num_images))

  def check_prompt(self, prompt: str, max_new_tokens: int, num_images: int = 1) -> None:
    """One-line error when the prompt plus the new tokens do not fit `max_length`."""
    n = self.prompt_length(prompt, num_images)
    if n + max_new_tokens > self.max_length:
      raise ValueError(f"prompt is {n} tokens (images included); with max_new_tokens "
                       f"{max_new_tokens} it exceeds max_length {self.max_length}: shorten it")

  def __call__(self, images: Sequence[Any], prompts: Sequence[str], *, max_new_tokens: int = 32,
               sampler: Sampler = GREEDY, beam: BeamSearch | None = None, seed: int = 0
               ) -> list[Result]:
    """One `Result` per (image, prompt) row; an image may be a list of images for its row."""
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if len(images) != len(prompts):
      raise ValueError(f"got {len(images)} images for {len(prompts)} prompts; pass one each")
    for prompt, image in zip(prompts, images):
      self.check_prompt(prompt, max_new_tokens, len(image) if isinstance(image, list) else 1)
    tokens, logprobs = self._generate(images, prompts, max_new_tokens, sampler, beam, seed)
    return [self._result(prompt, image, row, lp)
            for prompt, image, row, lp in zip(prompts, images, tokens, logprobs)]

  def _generate(self, images, prompts, max_new_tokens, sampler, beam, seed):
    batch = self.processor(list(images), list(prompts))
    rng = None if beam is not None or sampler.kind == "greedy" else as_key(seed)
    return generate_on_mesh(self.params, batch, self.mesh, config=self.config,
                            max_new_tokens=max_new_tokens, eos_id=self.tokenizer.eos_id,
                            pad_id=self.tokenizer.pad_id, sampler=sampler, rng=rng, beam=beam)

  def _result(self, prompt: str, image: Any, row: np.ndarray, logprob: float) -> Result:
    ids = [int(t) for t in row]
    if self.tokenizer.eos_id in ids:
      ids = ids[:ids.index(self.tokenizer.eos_id) + 1]
    text = clean_generated_text(self.tokenizer.decode(np.asarray(ids, np.int32)))
    task = task_of(prompt)
    objects = None
    first = image[0] if isinstance(image, list) else image
    if task == "detect" or (task == "segment" and self.decode_fn is None):
      objects = parse_detections(text, image_hw(first))
    elif task == "segment":
      objects = parse_segmentations(text, image_hw(first), self.decode_fn)
    return Result(prompt, text, ids, float(logprob), objects)
