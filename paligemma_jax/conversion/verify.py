"""`--verify`: both sides of a conversion give the same logits on a small random input.

Each side is read back by our own reader and run through our model in float32 (params upcast
exactly), one side at a time so at most one model is in memory; where either side is HF and
transformers is importable, `PaliGemmaForConditionalGeneration.from_pretrained` of the HF side is
also run and compared with our logits of the other side. Logits are compared over the vocabulary
both sides share (an npz lacks HF's 64 extra rows).

Tolerance, relative to the largest reference logit (max(1, max |logit|) x base):
- 1e-4 when the conversion kept dtypes: the weights are bit-identical and only the order of
  float32 accumulation differs (ours vs transformers);
- when it cast to a narrower dtype, the rounding of every weight moves the logits: bfloat16
  (8-bit mantissa, relative rounding <= 2^-9 per weight) 5e-2, float16 (11-bit) 1e-2. These bound
  what a correct conversion gives on our tests' random models, with ~5x headroom.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np

from paligemma_jax.conversion.streaming import ConversionError, read_params
from paligemma_jax.models import PaliGemma, PaliGemmaConfig

BASE_TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2}
TEXT_LEN, SUFFIX_LEN = 8, 4


class VerificationError(ConversionError):
  """The converted checkpoint's logits differ from the source's beyond the tolerance."""


@dataclasses.dataclass
class VerifyResult:
  max_abs_diff: float  # ours(dst) vs ours(src)
  hf_max_abs_diff: float | None  # transformers(HF side) vs ours(other side), if run
  tolerance: float


def tolerance_for(dtype: str | None, logits: np.ndarray) -> float:
  base = BASE_TOLERANCE["float32" if dtype is None else dtype]
  return base * max(1.0, float(np.abs(logits).max()))


def random_inputs(config: PaliGemmaConfig, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
  """One row: [image tokens][bos + text (bidirectional prefix)][suffix (causal)]."""
  rng = np.random.default_rng(seed)
  m, r = config.vision.num_patches, config.vision.image_size
  top = min(vocab, config.image_token_id)
  text = rng.integers(min(3, top - 1), top, size=TEXT_LEN + SUFFIX_LEN)
  text[0] = min(2, top - 1)  # bos
  tokens = np.concatenate([np.full(m, config.image_token_id), text])[None].astype(np.int32)
  mask_ar = np.zeros_like(tokens)
  mask_ar[:, m + TEXT_LEN:] = 1
  images = rng.uniform(-1, 1, size=(1, 1, r, r, 3)).astype(np.float32)
  return dict(tokens=tokens, images=images, input_mask=np.ones_like(tokens, bool), mask_ar=mask_ar)


def our_logits(source, inputs: dict[str, np.ndarray]) -> np.ndarray:
  config = source.config.replace(dtype="float32", param_dtype="float32")
  params = read_params(source, np.float32)
  logits = PaliGemma(config).apply(jax.device_put(params), inputs["tokens"], inputs["images"],
                                   inputs["input_mask"], inputs["mask_ar"])
  return np.asarray(logits)


def hf_logits(folder: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
  import torch
  import transformers
  model = transformers.PaliGemmaForConditionalGeneration.from_pretrained(
      folder, dtype=torch.float32).eval()
  with torch.no_grad():
    out = model(input_ids=torch.as_tensor(inputs["tokens"], dtype=torch.long),
                pixel_values=torch.as_tensor(inputs["images"][:, 0].transpose(0, 3, 1, 2)),
                attention_mask=torch.as_tensor(inputs["input_mask"], dtype=torch.long),
                token_type_ids=torch.as_tensor(inputs["mask_ar"], dtype=torch.long),
                use_cache=False)
  return out.logits.float().numpy()


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
  v = min(a.shape[-1], b.shape[-1])
  return float(np.abs(a[..., :v] - b[..., :v]).max())


def _transformers_available() -> bool:
  try:
    import torch  # noqa: F401
    import transformers  # noqa: F401
  except ImportError:
    return False
  return True


def verify_conversion(src: str, src_format: str, dst: str, dst_format: str, *,
                      variant, dtype: str | None, open_source: Callable,
                      log: Callable[[str], None] = print) -> VerifyResult:
  """Raises `VerificationError` when a difference exceeds the tolerance."""
  with open_source(src, src_format, variant) as source:
    config = source.config
    # Token ids stay below the image token, so they exist on both sides (vocab.py).
    inputs = random_inputs(config, config.text.vocab_size)
    ref = our_logits(source, inputs)
  # An npz carries no config: read it with the source's (its shapes are still checked).
  with open_source(dst, dst_format, config if dst_format == "npz" else None) as target:
    got = our_logits(target, inputs)
  tol = tolerance_for(dtype, ref)
  diff = _max_diff(ref, got)
  log(f"verify: max |dlogit| {diff:.3g} (ours {dst_format} vs ours {src_format}; "
      f"tolerance {tol:.3g})")
  hf_diff = None
  if "hf" in (src_format, dst_format) and _transformers_available():
    hf_side, other = (dst, ref) if dst_format == "hf" else (src, got)
    hf_diff = _max_diff(hf_logits(hf_side, inputs), other)
    log(f"verify: max |dlogit| {hf_diff:.3g} (transformers on the HF side vs ours on the other)")
  result = VerifyResult(diff, hf_diff, tol)
  worst = max(diff, hf_diff or 0.0)
  if not np.isfinite(worst) or worst > tol:
    raise VerificationError(f"verification failed: max |dlogit| {worst:.3g} > tolerance "
                            f"{tol:.3g}; the converted checkpoint does not reproduce the source")
  return result
