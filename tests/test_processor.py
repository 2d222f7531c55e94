"""Processor: token layout and masks identical to HF's PaliGemmaProcessor, big_vision options, errors."""

from __future__ import annotations

import pathlib

import numpy as np
import PIL.Image
import pytest

from paligemma_jax.data.images import preprocess_image
from paligemma_jax.data.processor import Processor
from paligemma_jax.data.tokenizer import Tokenizer

SIZE, N = 28, 4  # image side and image tokens per image: tiny, the layout logic is the same
RNG = np.random.default_rng(0)
IMG_A = PIL.Image.fromarray(RNG.integers(0, 256, (40, 50, 3), dtype=np.uint8))
IMG_B = PIL.Image.fromarray(RNG.integers(0, 256, (20, 31, 4), dtype=np.uint8))
IMG_C = RNG.integers(0, 256, (28, 28, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def processor(standin_tokenizer: Tokenizer) -> Processor:
  return Processor(standin_tokenizer, SIZE, N)


@pytest.fixture(scope="module")
def hf_processor(hf_tokenizer_dir: pathlib.Path):
  import transformers
  transformers.logging.set_verbosity_error()  # its "no <image> in the text" warning is expected
  tokenizer = transformers.AutoTokenizer.from_pretrained(hf_tokenizer_dir)
  image_processor = transformers.SiglipImageProcessorPil(size={"height": SIZE, "width": SIZE})
  image_processor.image_seq_length = N
  return transformers.PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)


# (images, prompts, suffixes), passed the same way to both processors.
HF_CASES = {
    "prompt-only-batch": ([IMG_A, IMG_B], ["answer en Where is the cow standing?", "caption en"], None),
    "prompt-and-suffix": ([IMG_A, IMG_B], ["answer en where is it?", "caption es"], ["beach", "una vaca en la playa"]),
    "several-images-nested": ([[IMG_A, IMG_B], [IMG_C, IMG_A]], ["compare", "which is left?"], ["same", "cow"]),
    "image-markers": ([[IMG_A, IMG_B]], ["<image><image>describe both"], ["two cows"]),
    "text-before-image": ([IMG_A], ["caption <image> en"], ["a cow"]),
    "empty-prompt": ([IMG_A], [""], [""]),
    "loc-seg": ([IMG_A, IMG_C], ["detect cow ; dog", "segment <loc0001>cow"],
                ["<loc0051><loc0309><loc0708><loc0646> cow ; <loc0000><loc0001><loc1022><loc1023> dog",
                 "<loc0100><loc0200><loc0300><loc0400>" + "".join(f"<seg{k:03d}>" for k in range(0, 128, 8))]),
    "non-ascii": ([IMG_A], ["où est la vache? 日本 🐄"], ["sur la plage ☀"]),
    "trailing-space": ([IMG_A], ["answer en "], [" yes "]),
    "trailing-newline": ([IMG_A], ["caption en\n"], ["line one\nline two\n"]),
    "special-strings": ([IMG_A], ["<bos>caption en"], ["cow<eos>"]),  # HF reads them as specials
}


def assert_matches_hf(ours: dict[str, np.ndarray], hf_out) -> None:
  np.testing.assert_array_equal(ours["tokens"], hf_out["input_ids"])
  np.testing.assert_array_equal(ours["input_mask"], np.asarray(hf_out["attention_mask"]).astype(bool))
  np.testing.assert_array_equal(ours["token_type_ids"], hf_out["token_type_ids"])
  np.testing.assert_array_equal(ours["labels"], hf_out["labels"])
  images = ours["images"]
  flat = images.reshape(-1, *images.shape[2:]).transpose(0, 3, 1, 2)  # HF: [B * n_images, 3, S, S]
  np.testing.assert_allclose(flat, hf_out["pixel_values"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", list(HF_CASES))
def test_matches_hf_processor(processor: Processor, hf_processor, case: str):
  images, prompts, suffixes = HF_CASES[case]
  ours = processor(images, prompts, suffixes)
  hf_out = hf_processor(images=images, text=prompts, suffix=suffixes, padding="longest", return_tensors="np")
  assert_matches_hf(ours, hf_out)


def test_single_image_is_shared_by_all_prompts(processor: Processor, hf_processor):
  # HF v5 refuses one image for several prompts (its own broadcast path then fails validation).
  prompts = ["a", "much longer prompt here"]
  hf_out = hf_processor(images=[IMG_A, IMG_A], text=prompts, padding="longest", return_tensors="np")
  assert_matches_hf(processor(IMG_A, prompts), hf_out)


def test_matches_hf_padded_to_max_length(processor: Processor, hf_processor):
  images, prompts, suffixes = HF_CASES["prompt-and-suffix"]
  ours = processor(images, prompts, suffixes, max_length=40)
  assert ours["tokens"].shape == (2, 40)
  hf_out = hf_processor(images=images, text=prompts, suffix=suffixes, padding="max_length", max_length=40,
                        return_tensors="np")
  assert_matches_hf(ours, hf_out)


def test_layout_and_masks(processor: Processor, standin_tokenizer: Tokenizer):
  tok = standin_tokenizer
  out = processor([IMG_A, IMG_B], ["cow", "where is the cow?"], ["beach", "on the beach"])
  prompt_ids, suffix_ids = tok.encode("cow\n"), tok.encode("beach") + [tok.eos_id]
  row = [tok.image_token_id] * N + [tok.bos_id] + prompt_ids + suffix_ids
  pads = out["tokens"].shape[1] - len(row)
  assert pads > 0  # row 0 is the shorter one, so it is left-padded
  np.testing.assert_array_equal(out["tokens"][0], [tok.pad_id] * pads + row)
  prefix_len = N + 1 + len(prompt_ids)
  np.testing.assert_array_equal(out["token_type_ids"][0], [0] * (pads + prefix_len) + [1] * len(suffix_ids))
  np.testing.assert_array_equal(out["mask_ar"][0], [1] * pads + [0] * prefix_len + [1] * len(suffix_ids))
  np.testing.assert_array_equal(out["mask_loss"], out["token_type_ids"])
  assert {k: v.dtype for k, v in out.items()} == {
      "tokens": np.int32, "input_mask": bool, "token_type_ids": np.int32, "mask_ar": np.int32,
      "mask_loss": np.int32, "labels": np.int32, "images": np.float32}
  assert out["images"].shape == (2, 1, SIZE, SIZE, 3)
  np.testing.assert_array_equal(out["images"][1, 0], preprocess_image(IMG_B, SIZE))


def test_markers_are_optional_per_row(processor: Processor, standin_tokenizer: Tokenizer):
  tok = standin_tokenizer
  out = processor([IMG_A, IMG_B], ["on <image> the left", "right"], padding_side="right")
  block = [tok.image_token_id] * N
  first = tok.encode("on ") + block + [tok.bos_id] + tok.encode(" the left\n")
  second = block + [tok.bos_id] + tok.encode("right\n")
  np.testing.assert_array_equal(out["tokens"][0], first)
  np.testing.assert_array_equal(out["tokens"][1, : len(second)], second)


def test_right_padding_realigns_rows(processor: Processor):
  images, prompts, suffixes = HF_CASES["prompt-and-suffix"]
  left = processor(images, prompts, suffixes)
  right = processor(images, prompts, suffixes, padding_side="right")
  for i in range(2):
    valid = left["input_mask"][i]
    n = int(valid.sum())
    assert right["input_mask"][i, :n].all() and not right["input_mask"][i, n:].any()
    for key in ("tokens", "token_type_ids", "mask_ar", "mask_loss", "labels"):
      np.testing.assert_array_equal(right[key][i, :n], left[key][i][valid])
    assert (right["mask_ar"][i, n:] == 1).all() and (right["mask_loss"][i, n:] == 0).all()
    assert (right["labels"][i, n:] == -100).all()


def test_big_vision_tokenization_splits_the_separator(standin_tokenizer: Tokenizer):
  tok = standin_tokenizer
  bv = Processor(tok, SIZE, N, "big_vision", tokenization="big_vision")
  hf_like = Processor(tok, SIZE, N)
  prompt, suffix = "caption en\n", "<bos>a cow"
  got = bv(IMG_A, prompt, suffix)
  want = [tok.image_token_id] * N + [tok.bos_id] + tok.encode(prompt) + [tok.newline_id] + tok.encode(suffix) + [1]
  np.testing.assert_array_equal(got["tokens"][0], want)
  # HF tokenizes prompt + "\n" at once: the two newlines become the single "\n\n" piece.
  hf_tokens = hf_like(IMG_A, prompt)["tokens"][0].tolist()
  assert hf_tokens[-1] == tok.encode("\n\n")[0] != tok.newline_id
  np.testing.assert_array_equal(got["images"][0, 0], preprocess_image(IMG_A, SIZE, "big_vision"))


def test_max_length_truncates_at_the_end(processor: Processor, standin_tokenizer: Tokenizer):
  full = processor(IMG_A, "caption en", "a cow standing on the beach", padding_side="right")
  length = int(full["input_mask"].sum())
  cut = processor(IMG_A, "caption en", "a cow standing on the beach", padding_side="right", max_length=length - 2)
  np.testing.assert_array_equal(cut["tokens"], full["tokens"][:, : length - 2])
  assert standin_tokenizer.eos_id not in cut["tokens"][0]  # a cut suffix loses its eos, as in big_vision
  assert processor(IMG_A, "caption en", max_length=N + 1)["tokens"].shape == (1, N + 1)  # images + bos fit
  message = rf"cut into the image tokens of row 0 \(they and their bos end at {N + 1}\); use max_length >= {N + 1}"
  with pytest.raises(ValueError, match=message):
    processor(IMG_A, "caption en", max_length=N)
  with pytest.raises(ValueError, match="image tokens"):
    processor([[IMG_A, IMG_B]], "caption en", max_length=N + 3)


def test_pixel_values_input(processor: Processor):
  from_images = processor([[IMG_A, IMG_B], [IMG_C, IMG_A]], ["a", "b"])
  from_pixels = processor(None, ["a", "b"], pixel_values=from_images["images"])
  for key, value in from_images.items():
    np.testing.assert_array_equal(from_pixels[key], value)
  single = processor(None, "a", pixel_values=from_images["images"][:1, 0])
  assert single["images"].shape == (1, 1, SIZE, SIZE, 3)
  with pytest.raises(ValueError, match="either images or pixel_values"):
    processor(IMG_A, "a", pixel_values=from_images["images"][:1])
  with pytest.raises(ValueError, match="pixel_values for 2 rows but 1 prompts"):
    processor(None, "a", pixel_values=from_images["images"])


def test_prompts_none_means_empty_prompt(processor: Processor):
  empty = processor([IMG_A, IMG_C], ["", ""])
  np.testing.assert_array_equal(processor([IMG_A, IMG_C], None)["tokens"], empty["tokens"])


@pytest.mark.parametrize("call,message", [
    (lambda p: p([IMG_A, IMG_B, IMG_C], ["a", "b"]), "got 3 images .* for 2 prompts"),
    (lambda p: p([IMG_A, IMG_B], "a"), r"for several images per prompt pass a list of lists"),
    (lambda p: p([[IMG_A, IMG_B], [IMG_C]], ["a", "b"]), r"different numbers of images \[1, 2\]"),
    (lambda p: p([[IMG_A]], ["<image><image>a"]), "prompt 0 has 2 <image> markers but 1 images"),
    (lambda p: p([IMG_A, IMG_B], ["a", "b"], ["x"]), "got 1 suffixes for 2 rows"),
    (lambda p: p([IMG_A, "b.jpg"], ["a", "b"]), r"images\[1\] is a str, not an image"),
    (lambda p: p([[IMG_A, 3]], ["a"]), r"images\[0\]\[1\] is a int, not an image"),
    (lambda p: p(None, "a"), "images is None"),
    (lambda p: p({"image": IMG_A}, "a"), "images must be an image, a list of images or a list of lists"),
    (lambda p: p([[]], "a"), "empty list"),
    (lambda p: p(IMG_A, ["a", 5]), r"prompts\[1\] is a int"),
    (lambda p: p(IMG_A, "a", "<image>"), "image markers belong in the prompt"),
    (lambda p: p(IMG_A, "a", padding_side="middle"), "unknown padding_side"),
    (lambda p: p(IMG_A, "a", max_length=0), "max_length must be a positive int"),
    (lambda p: p(np.zeros((8, 8, 2), np.uint8), "a"), "1, 3 or 4 channels"),
])
def test_bad_input(processor: Processor, call, message: str):
  with pytest.raises(ValueError, match=message) as info:
    call(processor)
  assert "\n" not in str(info.value)


def test_bad_construction(standin_tokenizer: Tokenizer, tokenizer_without_loc_path: pathlib.Path):
  with pytest.raises(ValueError, match="<loc0000> encodes to"):
    Processor(Tokenizer(tokenizer_without_loc_path), SIZE, N)
  with pytest.raises(ValueError, match="unknown tokenization"):
    Processor(standin_tokenizer, SIZE, N, tokenization="t5")
  with pytest.raises(ValueError, match="unknown image_method"):
    Processor(standin_tokenizer, SIZE, N, "nearest")
  with pytest.raises(ValueError, match="num_image_tokens must be a positive int"):
    Processor(standin_tokenizer, SIZE, 0)
