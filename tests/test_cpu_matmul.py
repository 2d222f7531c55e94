"""The CPU decode kernels (models/cpu_matmul): equal to XLA's einsum, used only where they apply,
differentiable, and a bf16 decode through them matches one without them, on every CPU path this
machine can run (`cpu_path`: AVX2 kernels everywhere they run, AVX-512 BF16 ones where the CPU
has them; prefill GEMMs in f32 or bf16), and the fused int8 kernel equals the dequantized
einsum, runs where it applies, and decodes as the unfused path does."""

import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from paligemma_jax.inference.decode import decode_tokens
from paligemma_jax.models import cpu_matmul, cpu_path, layers, quantize
from paligemma_jax.models.config import QuantizationConfig
from model_fixtures import PG2, PG2_WINDOW, assert_greedy_tokens_agree, make_batch, random_params

pytestmark = pytest.mark.skipif(not cpu_matmul._cpu_supported(),
                                reason="needs Linux x86 with AVX2/FMA and g++")


# The kernel libraries this CPU runs: each test below that takes `kernels` runs on each of them.
KERNELS = [k for k in ("avx2", "avx512bf16") if cpu_path.kernels_runnable(k)]
# The prefill paths it runs (the AVX-512 BF16 GEMM needs that library).
PREFILLS = [p for p in cpu_path.PREFILLS if p != "avx512bf16" or "avx512bf16" in KERNELS]


@pytest.fixture(params=KERNELS)
def kernels(request):
  with cpu_path.forced(kernels=request.param):
    yield request.param


def test_kernels_build_and_register(kernels):
  assert cpu_matmul.available()
  assert cpu_matmul._bf16_kernels() == (kernels == "avx512bf16")


def _rand(key: int, shape: tuple[int, ...]) -> jax.Array:
  return jax.random.normal(jax.random.key(key), shape, jnp.float32).astype(jnp.bfloat16)


# Every product the Gemma decoder makes, at odd sizes (tails that are not multiples of 8 or of
# the kernels' blocks), for 1 to 8 activation rows.
CASES = [
    ("BTD,DNH->BTNH", (1, 1, 37), (37, 3, 20)),          # q / k / v
    ("BTNH,NHD->BTD", (2, 1, 3, 20), (3, 20, 1030)),     # attention out: 2 contracted axes
    ("BTD,DF->BTF", (3, 1, 50), (50, 1100)),             # gate / up
    ("BTF,FD->BTD", (5, 1, 1100), (1100, 50)),           # down
    ("BTD,VD->BTV", (8, 1, 50), (301, 50)),              # LM head: contraction minor
    ("BTD,VD->BTV", (1, 1, 2051), (67, 2051)),
    ("BTD,CDF->CBTF", (4, 1, 24), (2, 24, 40)),          # leading weight axis (L > 1)
    ("BTD,VD->BTV", (6, 1, 33), (1001, 33)),             # LM head: two row groups, prefetch
    ("BTD,DF->BTF", (7, 1, 70), (70, 1100)),             # gate / up past 4 rows (8 pairs)
    ("BTD,DF->BTF", (6, 1, 37), (37, 8227)),             # wide: threads split the columns
    ("BTD,CDF->CBTF", (8, 1, 24), (2, 24, 8200)),        # wide, L > 1
]


@pytest.mark.parametrize("x_dtype", ["bfloat16", "float32"])  # bf16 activations: the BF16 kernels
@pytest.mark.parametrize("spec,x_shape,w_shape", CASES)
def test_kernel_equals_einsum(kernels, spec, x_shape, w_shape, x_dtype):
  x, w = _rand(0, x_shape), _rand(1, w_shape)
  x = x if x_dtype == "bfloat16" else x.astype(jnp.float32) * 1.001  # not bf16-exact
  run = jax.jit(lambda x, w: cpu_matmul.einsum(spec, x, w))
  want = jnp.einsum(spec, x.astype(jnp.float32), w.astype(jnp.float32), precision="highest")
  got = run(x, w)
  assert got.dtype == jnp.float32 and got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
  bf16_kernel = kernels == "avx512bf16" and x_dtype == "bfloat16"
  assert ("paligemma_cpu_nn_bf16" in run.lower(x, w).as_text()
          or "paligemma_cpu_nt_bf16" in run.lower(x, w).as_text()) == bf16_kernel


def test_decode_argmax_equals_jnp_argmax():
  from paligemma_jax.inference.sampling import first_argmax
  logits = np.asarray(_rand(2, (5, 1000)), np.float32)
  logits[1, [7, 900]] = logits[1].max() + 1  # a tie: the first wins
  logits[2, [40, 3]] = np.nan  # NaN: the first NaN, as jnp.argmax
  logits[3, :] = -np.inf
  got = jax.jit(first_argmax)(logits)
  assert got.dtype == jnp.int32
  np.testing.assert_array_equal(got, jnp.argmax(logits, axis=-1))
  assert list(got[1:4]) == [7, 3, 0]


def test_applies_only_where_it_can():
  x, w = _rand(0, (2, 1, 16)), _rand(1, (16, 24))
  assert cpu_matmul.einsum("BTD,DF->BTF", x, w) is not None
  assert cpu_matmul.einsum("BTD,DF->BTF", x, w.astype(jnp.float32)) is None  # f32 weights
  many = _rand(0, (cpu_matmul.MAX_ROWS + 1, 1, 16))
  assert cpu_matmul.einsum("BTD,DF->BTF", many, w) is None  # prefill-sized: XLA's GEMM
  assert cpu_matmul.einsum("BTD,BDF->BTF", x, _rand(1, (2, 16, 24))) is None  # batch axis


def test_gradients_match_einsum():
  x, w = _rand(0, (2, 1, 16)), _rand(1, (16, 24))
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  ours = jax.grad(loss(lambda x, w: cpu_matmul.einsum("BTD,DF->BTF", x, w)), (0, 1))(x, w)
  ref = jax.grad(loss(lambda x, w: jnp.einsum("BTD,DF->BTF", x, w,
                                              preferred_element_type=jnp.float32)), (0, 1))(x, w)
  for a, b in zip(ours, ref):
    np.testing.assert_allclose(a.astype(jnp.float32), b.astype(jnp.float32), rtol=2e-2, atol=1e-2)


@pytest.mark.parametrize("prefill", PREFILLS)
def test_bf16_decode_matches_decode_without_kernels(kernels, prefill):
  config = PG2_WINDOW.replace(dtype="bfloat16", param_dtype="bfloat16")
  params = random_params(config)
  batch = make_batch(config, batch=3, suffix_len=0)
  args = (params, batch["tokens"], batch["images"], batch["input_mask"], batch["mask_ar"])

  def run():
    return decode_tokens(*args, config=config, max_new_tokens=6, eos_id=-1, keep_logits=True)

  with cpu_path.forced(prefill=prefill):
    with_kernels = run()
  with cpu_path.forced(prefill="f32", kernels="off"):  # XLA's einsum in f32 throughout
    without = run()
  scale = float(jnp.abs(without.logits).max())
  np.testing.assert_allclose(with_kernels.logits, without.logits, atol=2e-2 * scale)
  assert assert_greedy_tokens_agree(with_kernels.tokens, without.tokens, without.logits,
                                    4e-2 * scale) > 0


def test_nn_split_over_contraction_is_deterministic(kernels):
  # Tall and narrow (the down projection's shape): the contraction is split into pieces whose
  # partial sums are added in a fixed order, so repeated calls agree bit for bit.
  x, w = _rand(0, (3, 1, 4099)), _rand(1, (4099, 72))
  run = jax.jit(lambda x, w: cpu_matmul.einsum("BTF,FD->BTD", x, w))
  first = np.asarray(run(x, w))
  for _ in range(5):
    np.testing.assert_array_equal(run(x, w), first)
  want = jnp.einsum("BTF,FD->BTD", x.astype(jnp.float32), w.astype(jnp.float32),
                    precision="highest")
  np.testing.assert_allclose(first, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


def test_take_rows_equals_jnp_take():
  table = _rand(0, (64, 19))
  ids = jnp.array([[0, 3, 63], [-1, -64, 64], [-65, 1000, 7]])  # negative, out of range
  got = jax.jit(cpu_matmul.take_rows)(table, ids)
  want = jnp.take(table, ids, axis=0)
  assert got.shape == (3, 3, 19) and got.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
  assert np.isnan(np.asarray(got[1, 2], np.float32)).all()  # out of range: NaN rows
  loss = lambda take: lambda t: jnp.sum(take(t, ids[:1]).astype(jnp.float32) ** 2)
  np.testing.assert_array_equal(
      jax.grad(loss(cpu_matmul.take_rows))(table),
      jax.grad(loss(lambda t, i: jnp.take(t, i, axis=0)))(table))


def test_bf16_decode_widens_no_whole_array():
  # XLA:CPU runs bf16 slices and gathers in f32, and hoists the widening of a loop-invariant
  # array out of the loop: before take_rows, the decode loop widened the whole embedding table
  # once per call (2 GB for the real vocabulary).
  config = PG2_WINDOW.replace(dtype="bfloat16", param_dtype="bfloat16")
  params = random_params(config)
  batch = make_batch(config, batch=2, suffix_len=0)
  program = decode_tokens.lower(params, batch["tokens"], batch["images"], batch["input_mask"],
                                batch["mask_ar"], config=config, max_new_tokens=4,
                                eos_id=-1).compile().as_text()
  table = params["params"]["llm"]["embedding"].shape
  assert f"bf16[{table[0]},{table[1]}]" in program
  assert f"f32[{table[0]},{table[1]}]" not in program


@pytest.mark.parametrize("spec,x_shape,w_shape", [CASES[0], CASES[1], CASES[3], CASES[4], CASES[6]])
def test_layer_slice_reads_its_layer_in_place(kernels, spec, x_shape, w_shape):
  x, stack = _rand(0, x_shape), _rand(1, (3, *w_shape))
  for layer in range(3):
    view = cpu_matmul.LayerSlice(stack, layer)
    assert view.shape == w_shape and view.dtype == jnp.bfloat16 and view.astype("bfloat16") is view
    got = jax.jit(lambda x, s, i=layer: cpu_matmul.einsum(spec, x, cpu_matmul.LayerSlice(s, i)))
    np.testing.assert_array_equal(got(x, stack), cpu_matmul.einsum(spec, x, stack[layer]))
    widened = jax.jit(lambda s, x, i=layer: cpu_matmul.LayerSlice(s, i).widen(after=x))
    np.testing.assert_array_equal(widened(stack, x), stack[layer].astype(jnp.float32))
    for prefill, dtype in (("f32", jnp.float32), ("bf16", jnp.bfloat16)):
      with cpu_path.forced(prefill=prefill):
        operand = jax.jit(lambda s, x, i=layer: cpu_matmul.LayerSlice(s, i).gemm_operand(x))
        got = operand(stack, x)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, stack[layer].astype(dtype))


# Prefill-sized products (more than MAX_ROWS rows) at odd sizes for the AVX-512 BF16 GEMM: rows
# that do not fill its 6-row tiles, odd contractions (a lone last row), contractions past its
# 512-row blocks, columns short of its 64-column panels and past its 512-column blocks, L > 1, and
# a narrow output whose rows are split between threads.
GEMM_CASES = [
    ("BTD,DNH->BTNH", (2, 7, 37), (37, 3, 20)),
    ("BTNH,NHD->BTD", (1, 13, 3, 100), (3, 100, 1030)),
    ("BTD,DF->BTF", (3, 5, 513), (513, 77)),
    ("BTF,FD->BTD", (1, 9, 1100), (1100, 50)),
    ("BTD,CDF->CBTF", (2, 11, 24), (2, 24, 40)),
    ("BTD,DKH->BTKH", (1, 37, 64), (64, 1, 256)),
]
needs_gemm = pytest.mark.skipif(not cpu_path.kernels_runnable("avx512bf16"),
                                reason="needs AVX-512 BF16 and g++")


@needs_gemm
@pytest.mark.parametrize("spec,x_shape,w_shape", GEMM_CASES)
def test_prefill_gemm_equals_einsum_on_each_layer_of_a_stack(spec, x_shape, w_shape):
  x, stack = _rand(0, x_shape), _rand(1, (3, *w_shape))
  with cpu_path.forced(prefill="avx512bf16"):
    for layer in range(3):
      run = jax.jit(lambda x, s, i=layer: cpu_matmul.einsum(spec, x, cpu_matmul.LayerSlice(s, i)))
      want = jnp.einsum(spec, x.astype(jnp.float32), stack[layer].astype(jnp.float32),
                        precision="highest")
      got = run(x, stack)
      assert got.dtype == jnp.float32 and got.shape == want.shape
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
      assert "paligemma_cpu_gemm_bf16" in run.lower(x, stack).as_text()


@needs_gemm
def test_prefill_gemm_applies_only_where_it_can():
  x, stack = _rand(0, (2, 9, 16)), _rand(1, (2, 16, 24))
  view = cpu_matmul.LayerSlice(stack, 1)
  with cpu_path.forced(prefill="avx512bf16"):
    assert cpu_matmul.einsum("BTD,DF->BTF", x, view) is not None
    assert cpu_matmul.einsum("BTD,DF->BTF", x, stack[1]) is None  # a plain weight: may be trained
    assert cpu_matmul.einsum("BTD,DF->BTF", x.astype(jnp.float32), view) is None
    assert cpu_matmul.einsum("BTF,DF->BTD", _rand(0, (2, 9, 24)), view) is None  # contraction minor
  for prefill in ("bf16", "f32"):  # the other paths leave prefill products to XLA
    with cpu_path.forced(prefill=prefill):
      assert cpu_matmul.einsum("BTD,DF->BTF", x, view) is None


@pytest.mark.parametrize("prefill", PREFILLS)
def test_bf16_decode_keeps_no_copy_of_the_weights(kernels, prefill):
  if prefill == "bf16" and not any(f in cpu_path.cpu_flags() for f in cpu_path.BF16_UNITS):
    # Without bf16 units XLA may lower a bf16 GEMM through f32 converts it is free to hoist; the
    # path never chooses bf16 there, so its memory is not pinned on such a CPU.
    pytest.skip("bf16 prefill is only chosen on CPUs with bf16 units")
  # Unrolled over sliced layers, the decode loop made XLA copy every layer out of its stack, and
  # the prefill widened every layer's weights to f32 at the start (the image encoder's too, when
  # scanned): temporaries of ~3x the layers' bf16 bytes per call. Layers read in place and
  # widened in turn need a fraction (one MLP's gate and up matrices in f32).
  config = PG2.replace(dtype="bfloat16", param_dtype="bfloat16",
                       **{"text.width": 128, "text.mlp_dim": 2048, "text.depth": 6,
                          "vision.width": 128, "vision.mlp_dim": 1024, "vision.depth": 6})
  params = random_params(config)
  batch = make_batch(config, batch=2, suffix_len=0)  # > MAX_ROWS prompt rows: XLA's GEMM
  with cpu_path.forced(prefill=prefill):
    compiled = decode_tokens.lower(params, batch["tokens"], batch["images"], batch["input_mask"],
                                   batch["mask_ar"], config=config, max_new_tokens=4,
                                   eos_id=-1).compile()
  layers = sum(a.nbytes for tower in ("llm", "vision")
               for a in jax.tree.leaves(params["params"][tower]["layers"]))
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp < layers / 4, (temp, layers)  # measured 0.17x; 0.63x with a scanned encoder


def test_bf16_score_over_in_place_layers_matches_scanned_forward(monkeypatch):
  # On CPU, score mode runs decoding's unrolled prefill (in-place layers, widened in turn).
  score_module = importlib.import_module("paligemma_jax.inference.score")  # not the function
  config = PG2_WINDOW.replace(dtype="bfloat16", param_dtype="bfloat16")
  params = random_params(config)
  batch = make_batch(config, batch=2, suffix_len=5)
  scored = batch["mask_ar"].astype(bool)
  run = lambda: score_module.score_tokens(params, batch["tokens"], batch["images"],
                                          batch["input_mask"], batch["mask_ar"], batch["tokens"],
                                          scored, config=config)
  unrolled = run()
  monkeypatch.setattr(score_module, "decode_layers", lambda params, unroll: None)
  jax.clear_caches()
  scanned = run()
  # bf16 activations: the two programs round at different points (log-probs here are -19 to -41)
  np.testing.assert_allclose(unrolled.token_logprobs, scanned.token_logprobs, rtol=1e-2, atol=1e-2)
  np.testing.assert_allclose(unrolled.total, scanned.total, rtol=2e-2)
  assert (np.asarray(unrolled.count) == 5).all()


def test_bf16_beam_search_matches_beam_search_without_kernels(monkeypatch):
  from paligemma_jax.inference.beam import BeamSearch, beam_search
  config = PG2_WINDOW.replace(dtype="bfloat16", param_dtype="bfloat16")
  params = random_params(config)
  batch = make_batch(config, batch=2, suffix_len=0)
  run = lambda: beam_search(params, batch["tokens"], batch["images"], batch["input_mask"],
                            batch["mask_ar"], config=config, max_new_tokens=5, eos_id=-1,
                            beam=BeamSearch(num_beams=3))
  with_kernels = run()
  monkeypatch.setattr(cpu_matmul, "available", lambda: False)
  jax.clear_caches()
  without = run()
  np.testing.assert_array_equal(with_kernels.tokens, without.tokens)
  np.testing.assert_allclose(with_kernels.scores, without.scores, rtol=2e-2)


# -- weight-only int8: quantize.py's values read by the fused kernel ---------------------------

INT8 = QuantizationConfig("int8")
INT8_CASES = [CASES[0], CASES[1], CASES[2], CASES[3], CASES[6]]  # the NN products, odd sizes


def _int8(key: int, spec: str, w_shape: tuple[int, ...], stack: int = 0) -> dict:
  """quantize.py's int8 dict of a random weight of `spec` ([stack, *w_shape] when stack)."""
  lhs, rhs = spec.split("->")[0].split(",")
  contracted = [i for i, a in enumerate(rhs) if a in lhs]
  shape = (stack, *w_shape) if stack else w_shape
  w = jax.random.normal(jax.random.key(key), shape, jnp.float32)
  lead = contracted[0] + (1 if stack else 0)  # axes before the contraction: per-channel too
  return quantize.quantize_weight(w, len(contracted), INT8, lead)


def _dequantized_einsum(spec: str, x: jax.Array, q: jax.Array, scale: jax.Array) -> jax.Array:
  w = q.astype(jnp.float32) * scale
  return jnp.einsum(spec, x.astype(jnp.float32), w, precision="highest")


@pytest.mark.parametrize("x_dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("spec,x_shape,w_shape", INT8_CASES)
def test_int8_kernel_equals_dequantized_einsum(spec, x_shape, w_shape, x_dtype):
  x = _rand(0, x_shape).astype(x_dtype)
  q = _int8(1, spec, w_shape)
  run = jax.jit(lambda x, q, s: cpu_matmul.einsum_int8(spec, x, q, s))
  got = run(x, q["w_int8"], q["w_scale"])
  want = _dequantized_einsum(spec, x, q["w_int8"], q["w_scale"])
  assert got.dtype == jnp.float32 and got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))
  assert "paligemma_cpu_nn_int8" in run.lower(x, q["w_int8"], q["w_scale"]).as_text()


@pytest.mark.parametrize("spec,x_shape,w_shape", [INT8_CASES[1], INT8_CASES[3]])
def test_int8_kernel_reads_a_layer_of_a_stack_in_place(spec, x_shape, w_shape):
  x, q = _rand(0, x_shape), _int8(1, spec, w_shape, stack=3)
  for layer in range(3):
    run = jax.jit(lambda x, s, c, i=layer: cpu_matmul.einsum_int8(
        spec, x, cpu_matmul.LayerSlice(s, i), c[i]))
    got = run(x, q["w_int8"], q["w_scale"])
    want = cpu_matmul.einsum_int8(spec, x, q["w_int8"][layer], q["w_scale"][layer])
    np.testing.assert_array_equal(got, want)


def test_int8_einsum_runs_the_kernel_only_where_it_applies():
  spec, module = "BTD,DF->BTF", layers.Einsum((40, 72), ("embed", "mlp"), dtype=jnp.bfloat16,
                                              param_dtype=jnp.bfloat16)
  few, many = _rand(0, (2, 1, 40)), _rand(0, (cpu_matmul.MAX_ROWS + 1, 1, 40))
  w = nn.unbox(module.init(jax.random.key(1), spec, few))["params"]["w"]
  params = {"params": quantize.quantize_weight(w, 1, INT8)}
  run = jax.jit(lambda p, x: module.apply(p, spec, x))
  fused = lambda x: "paligemma_cpu_nn_int8" in run.lower(params, x).as_text()
  assert fused(few) and not fused(many)  # prefill-sized: dequantized, XLA's GEMM
  got = run(params, few)
  with cpu_path.forced(kernels="off"):  # PALIGEMMA_JAX_CPU_KERNELS=off
    assert not fused(few)
    unfused = run(params, few)
  # the unfused path multiplies bf16-rounded weights: within bf16 rounding of each other
  want = _dequantized_einsum(spec, few, params["params"]["w_int8"], params["params"]["w_scale"])
  np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=1e-2,
                             atol=1e-2 * float(jnp.abs(want).max()))
  np.testing.assert_allclose(unfused.astype(jnp.float32), want, rtol=2e-2,
                             atol=2e-2 * float(jnp.abs(want).max()))
  grad = jax.grad(lambda x: jnp.sum(module.apply(params, spec, x).astype(jnp.float32)))(few)
  want_grad = jnp.broadcast_to(jnp.sum(params["params"]["w_int8"] * params["params"]["w_scale"],
                                       axis=1), few.shape)
  np.testing.assert_allclose(grad.astype(jnp.float32), want_grad, rtol=2e-2, atol=2e-2)


def test_int8_decode_matches_unfused_decode(monkeypatch):
  config = PG2_WINDOW.replace(dtype="bfloat16", param_dtype="bfloat16")
  qconfig, qparams = quantize.quantize_loaded(config, random_params(config), INT8)
  batch = make_batch(qconfig, batch=3, suffix_len=0)
  args = (qparams, batch["tokens"], batch["images"], batch["input_mask"], batch["mask_ar"])
  kwargs = dict(config=qconfig, max_new_tokens=6, eos_id=-1)
  program = decode_tokens.lower(*args, **kwargs).compile().as_text()
  assert "paligemma_cpu_nn_int8" in program
  # the decoder's int8 stacks are read in place (LayerSlice), not copied out layer by layer
  stacks = [a for a in jax.tree.leaves(qparams["params"]["llm"]["layers"]) if a.dtype == jnp.int8]
  assert all(f"s8[{','.join(map(str, a.shape[1:]))}]" not in program for a in stacks)
  fused = decode_tokens(*args, keep_logits=True, **kwargs)
  monkeypatch.setattr(cpu_matmul, "einsum_int8", lambda *a: None)
  jax.clear_caches()
  unfused = decode_tokens(*args, keep_logits=True, **kwargs)
  scale = float(jnp.abs(unfused.logits).max())
  np.testing.assert_allclose(fused.logits, unfused.logits, atol=2e-2 * scale)
  assert assert_greedy_tokens_agree(fused.tokens, unfused.tokens, unfused.logits,
                                    4e-2 * scale) > 0
