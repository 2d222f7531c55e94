"""Decoding and scoring: prefill + on-device loops over an explicit KV cache.

Samplers (greedy, temperature, top-k, top-p) in decode.py / sampling.py, HF-equivalent beam search
in beam.py, suffix log-likelihoods in score.py; output parsers (boxes, masks) and overlays; the
one-call `Pipeline`, batch inference over JSONL files and TFDS splits (with the typed config
boundary, infer_config.py) and the attention-mask printer.
"""

from paligemma_jax.inference.beam import BeamSearch, Beams, beam_generate, beam_search
from paligemma_jax.inference.decode import (DecodeState, Generation, decode_tokens, feed,
                                            generate, greedy_generate, prefill)
from paligemma_jax.inference.sampling import (GREEDY, Sampler, choose_tokens, top_k_filter,
                                              top_p_filter, warp_logits)
from paligemma_jax.inference.score import Scores, score, score_tokens
from paligemma_jax.inference.parsers import (DetectedObject, clean_generated_text, encode_detections,
                                             encode_segmentations, mask_decoder, mask_encoder,
                                             parse_detections, parse_objects, parse_segmentations)
from paligemma_jax.inference.overlay import draw_overlay, save_overlay
from paligemma_jax.inference.mask_view import attention_mask_text
from paligemma_jax.inference.pipeline import Pipeline, Result
from paligemma_jax.inference.batch_infer import Summary, predict_rows, run_jsonl, run_tfds
from paligemma_jax.inference.infer_config import InferConfig, InferSettings, parse_infer_config

__all__ = [
    "BeamSearch", "Beams", "beam_generate", "beam_search",
    "DecodeState", "Generation", "decode_tokens", "feed", "generate", "greedy_generate",
    "prefill",
    "GREEDY", "Sampler", "choose_tokens", "top_k_filter", "top_p_filter", "warp_logits",
    "Scores", "score", "score_tokens",
    "DetectedObject", "clean_generated_text", "encode_detections", "encode_segmentations",
    "mask_decoder", "mask_encoder", "parse_detections", "parse_objects", "parse_segmentations",
    "draw_overlay", "save_overlay", "attention_mask_text", "Pipeline", "Result",
    "Summary", "predict_rows", "run_jsonl", "run_tfds",
    "InferConfig", "InferSettings", "parse_infer_config",
]
