"""Real-width, reduced-depth PaliGemma 1 in bf16 against HF: SigLIP So400m widths, Gemma 2B
widths and the full 257,216-row vocabulary, 2 layers each (~780M parameters)."""

from __future__ import annotations

import numpy as np
import pytest

import hf_oracle as O
from paligemma_jax.conversion import load_hf_checkpoint
from paligemma_jax.models import PaliGemma

pytestmark = [pytest.mark.slow, pytest.mark.ci]

IMAGE_TOKEN, VOCAB, RES = 257_152, 257_216, 224


def real_width_model():
  import torch
  import transformers as tr
  vision = dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304,
                num_hidden_layers=2, num_attention_heads=16, patch_size=14, image_size=RES,
                vision_use_head=False, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
  text = tr.GemmaConfig(hidden_size=2048, intermediate_size=16384, num_hidden_layers=2,
                        num_attention_heads=8, num_key_value_heads=1, head_dim=256,
                        vocab_size=VOCAB, hidden_activation="gelu_pytorch_tanh")
  config = tr.PaliGemmaConfig(vision_config=vision, text_config=text.to_dict(),
                              image_token_index=IMAGE_TOKEN, vocab_size=VOCAB,
                              projection_dim=2048)
  torch.manual_seed(0)
  model = tr.PaliGemmaForConditionalGeneration(config).eval()
  O.randomize_(model)
  return model.to(torch.bfloat16)


def test_real_width_bf16(tmp_path):
  import torch
  model = real_width_model()
  model.save_pretrained(tmp_path)
  config, params = load_hf_checkpoint(str(tmp_path))
  assert config.param_dtype == "bfloat16" and config.text.vocab_size == VOCAB

  rng = np.random.default_rng(0)
  m, b, t = (RES // 14) ** 2, 2, 24
  tokens = np.concatenate([np.full((b, m), IMAGE_TOKEN), rng.integers(4, 256_000, (b, t))], 1)
  tt = np.zeros_like(tokens)
  tt[:, m + 8:] = 1
  mask = np.ones_like(tokens)
  pixels = rng.uniform(-1, 1, (b, 1, RES, RES, 3)).astype(np.float32)
  with torch.no_grad():
    ref = model(input_ids=torch.as_tensor(tokens), attention_mask=torch.as_tensor(mask),
                pixel_values=torch.as_tensor(pixels[:, 0].transpose(0, 3, 1, 2)).bfloat16(),
                token_type_ids=torch.as_tensor(tt), use_cache=False).logits.float().numpy()
  del model
  ours = np.asarray(PaliGemma(config).apply(params, tokens, pixels, mask.astype(bool), tt))
  text = slice(m, None)  # all text positions (image positions are not scored by anyone)
  ref, ours = ref[:, text].reshape(-1, VOCAB), ours[:, text].reshape(-1, VOCAB)
  assert ref.std() > 0.3
  agreement = (ref.argmax(-1) == ours.argmax(-1)).mean()
  print(f"real-width bf16: top-1 agreement {agreement:.3f}, "
        f"max |dlogit| {np.abs(ref - ours).max():.3g}, mean {np.abs(ref - ours).mean():.3g}")
  assert agreement >= 0.99
