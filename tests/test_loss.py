"""big_vision's loss: the reference's worked examples, chunked == full-logits cross-entropy (values
and gradients), and the chunked backward pass never holding [B, T, V]."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from paligemma_jax.training import bv_loss, hf_loss, shift_for_loss, token_losses


def full_logits_losses(hidden_BxTxD, embedding_VxD, targets_BxT, label_smoothing=0.0,
                       softcap=None):
  """The plain implementation: whole [B, T, V] logits, big_vision's smoothed one-hot, optax."""
  logits = jnp.einsum("btd,vd->btv", hidden_BxTxD, embedding_VxD,
                      preferred_element_type=jnp.float32)
  if softcap:
    logits = softcap * jnp.tanh(logits / softcap)
  vocab = embedding_VxD.shape[0]
  onehot = jax.nn.one_hot(targets_BxT, vocab)
  labels = onehot * (1.0 - label_smoothing) + (1.0 - onehot) * label_smoothing / (vocab - 1)
  return optax.softmax_cross_entropy(logits, labels)


def _worked_example():
  # D = 1: hidden 1 and embedding rows [2, 0, 0, 0] give the logits [2, 0, 0, 0].
  return (jnp.ones((1, 1, 1)), jnp.array([[2.0], [0.0], [0.0], [0.0]]),
          jnp.zeros((1, 1), jnp.int32))


@pytest.mark.parametrize("chunk", [1, 3, 4, 8192])
def test_worked_example_token_loss(chunk):
  hidden, embedding, targets = _worked_example()
  plain = token_losses(hidden, embedding, targets, chunk=chunk)
  smoothed = token_losses(hidden, embedding, targets, label_smoothing=0.1, chunk=chunk)
  assert plain.dtype == jnp.float32 and plain.shape == (1, 1)
  np.testing.assert_allclose(plain[0, 0], np.log(np.e**2 + 3) - 2, rtol=1e-6)
  np.testing.assert_allclose(plain[0, 0], 0.340753, atol=5e-7)
  np.testing.assert_allclose(smoothed[0, 0], 0.540753, atol=5e-7)


def test_worked_example_reduction():
  losses = jnp.array([[0.5, 1.5], [3.0, 7.0]])
  mask = jnp.array([[1, 1], [1, 0]])
  loss, per_example = bv_loss(losses, mask)
  np.testing.assert_allclose(per_example, [1.0, 3.0])
  np.testing.assert_allclose(loss, 2.0)
  np.testing.assert_allclose(hf_loss(losses, mask), 5.0 / 3, rtol=1e-6)


def test_example_without_supervised_tokens_counts_as_zero():
  loss, per_example = bv_loss(jnp.array([[1.0, 2.0], [5.0, 5.0]]), jnp.array([[1, 1], [0, 0]]))
  np.testing.assert_allclose(per_example, [1.5, 0.0])
  np.testing.assert_allclose(loss, 0.75)


def _random_problem(vocab=50, dim=8, batch=2, length=3, seed=0):
  rng = np.random.default_rng(seed)
  hidden = jnp.asarray(rng.standard_normal((batch, length, dim)), jnp.float32)
  embedding = jnp.asarray(rng.standard_normal((vocab, dim)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, vocab, (batch, length)), jnp.int32)
  return hidden, embedding, targets


# 7 does not divide V = 50 (the last chunk is clamped and overlaps); 64 > V is one chunk.
@pytest.mark.parametrize("chunk,label_smoothing,softcap", [
    (7, 0.0, None), (7, 0.2, None), (7, 0.2, 5.0), (10, 0.0, 5.0), (50, 0.2, None),
    (64, 0.2, 5.0)])
def test_chunked_equals_full_logits(chunk, label_smoothing, softcap):
  hidden, embedding, targets = _random_problem()
  weights = jnp.asarray(np.random.default_rng(1).standard_normal(targets.shape), jnp.float32)

  def objective(fn, **kw):
    return lambda h, e: (fn(h, e, targets, label_smoothing=label_smoothing, softcap=softcap, **kw)
                         * weights).sum()

  chunked = objective(token_losses, chunk=chunk)
  full = objective(full_logits_losses)
  np.testing.assert_allclose(
      token_losses(hidden, embedding, targets, label_smoothing=label_smoothing, chunk=chunk,
                   softcap=softcap),
      full_logits_losses(hidden, embedding, targets, label_smoothing, softcap), atol=1e-5)
  grads = jax.grad(chunked, argnums=(0, 1))(hidden, embedding)
  expected = jax.grad(full, argnums=(0, 1))(hidden, embedding)
  for got, want in zip(grads, expected):
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_jit_and_bf16_inputs():
  hidden, embedding, targets = _random_problem()
  fn = jax.jit(lambda h, e: token_losses(h, e, targets, chunk=16))
  got = fn(hidden.astype(jnp.bfloat16), embedding.astype(jnp.bfloat16))
  assert got.dtype == jnp.float32
  want = full_logits_losses(hidden.astype(jnp.bfloat16), embedding.astype(jnp.bfloat16), targets)
  np.testing.assert_allclose(got, want, atol=1e-4)
  grads = jax.grad(lambda h, e: fn(h, e).sum(), argnums=(0, 1))(
      hidden.astype(jnp.bfloat16), embedding.astype(jnp.bfloat16))
  assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.bfloat16]


def test_float32_table_with_bf16_hidden_reads_it_as_bf16_chunks():
  # The step passes the f32 master table: each chunk is cast to the hidden dtype, so the losses
  # are those of the bf16-cast table, and the table's gradient comes back in f32.
  hidden, embedding, targets = _random_problem()
  hidden = hidden.astype(jnp.bfloat16)
  fn = lambda e: token_losses(hidden, e, targets, chunk=16, label_smoothing=0.1)
  # Two programs (the cast inside or before): the same bf16 products, sums in either order.
  np.testing.assert_allclose(fn(embedding), fn(embedding.astype(jnp.bfloat16)), rtol=1e-6)
  grad = jax.grad(lambda e: fn(e).sum())(embedding)
  want = jax.grad(lambda e: full_logits_losses(
      hidden, e.astype(jnp.bfloat16), targets, 0.1).sum())(embedding)
  assert grad.dtype == jnp.float32
  np.testing.assert_allclose(grad, want, rtol=1e-2, atol=2e-3)  # want is rounded to bf16


def test_a_table_that_is_not_differentiated_gets_no_gradient_computation():
  hidden, embedding, targets = _random_problem()
  loss = lambda h, e: token_losses(h, e, targets, chunk=16).sum()
  only_hidden = jax.jit(jax.grad(loss)).lower(hidden, embedding).as_text()
  both = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(hidden, embedding).as_text()
  # The [V, D] gradient (a dynamic_update_slice per chunk) exists only when it is asked for.
  assert "dynamic_update_slice" in both and "dynamic_update_slice" not in only_hidden
  np.testing.assert_allclose(jax.grad(loss)(hidden, embedding),  # two compiled programs
                             jax.grad(loss, argnums=(0, 1))(hidden, embedding)[0], rtol=1e-6,
                             atol=1e-7)


def _temp_bytes(fn, *args) -> int:
  compiled = jax.jit(jax.grad(fn, argnums=(0, 1))).lower(*args).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_backward_never_holds_full_logits():
  batch, length, dim, vocab, chunk = 2, 64, 16, 16384, 512
  hidden = jax.ShapeDtypeStruct((batch, length, dim), jnp.float32)
  embedding = jax.ShapeDtypeStruct((vocab, dim), jnp.float32)
  targets = jnp.zeros((batch, length), jnp.int32)
  logits_bytes = batch * length * vocab * 4  # 8 MiB; the embedding and its gradient are 1 MiB.
  chunked = _temp_bytes(
      lambda h, e: token_losses(h, e, targets, label_smoothing=0.1, chunk=chunk).sum(),
      hidden, embedding)
  full = _temp_bytes(lambda h, e: full_logits_losses(h, e, targets, 0.1).sum(), hidden, embedding)
  assert full >= logits_bytes  # The bound bites: the plain version does hold [B, T, V].
  assert chunked < logits_bytes / 4, (chunked, logits_bytes)


def test_shift_for_loss():
  tokens = jnp.array([[2, 10, 108, 20, 21, 1, 0]])  # bos, prefix, "\n", suffix, eos, pad
  mask_ar = jnp.array([[0, 0, 0, 1, 1, 1, 1]])
  mask_loss = jnp.array([[0, 0, 0, 1, 1, 1, 0]])
  shifted = shift_for_loss(tokens, mask_ar, mask_loss)
  np.testing.assert_array_equal(shifted.inputs, [[2, 10, 108, 20, 21, 1]])
  np.testing.assert_array_equal(shifted.mask_ar, [[0, 0, 0, 1, 1, 1]])
  np.testing.assert_array_equal(shifted.targets, [[10, 108, 20, 21, 1, 0]])
  # "\n" predicts the first suffix token; eos is supervised; the pad is not.
  np.testing.assert_array_equal(shifted.mask_loss, [[0, 0, 1, 1, 1, 0]])


@pytest.mark.parametrize("kw", [dict(label_smoothing=1.0), dict(label_smoothing=-0.1),
                                dict(chunk=0)])
def test_bad_arguments_fail(kw):
  hidden, embedding, targets = _random_problem()
  with pytest.raises(ValueError):
    token_losses(hidden, embedding, targets, **kw)


def test_sharded_inputs_give_the_same_losses_and_gradients():
  """The embedding sharded over its rows (as FSDP shards the largest dim) and the hidden states
  over the batch: the chunk slices cross shard boundaries, and the results must not change."""
  devices = np.array(jax.devices()[:4])
  if devices.size < 4:
    pytest.skip("needs 4 devices (conftest asks XLA for 8 CPU devices)")
  mesh = jax.sharding.Mesh(devices.reshape(2, 2), ("data", "fsdp"))
  named = lambda *spec: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
  hidden, embedding, targets = _random_problem(vocab=64, batch=4)

  def objective(h, e):
    return token_losses(h, e, targets, label_smoothing=0.1, chunk=12).sum()

  fn = jax.jit(jax.value_and_grad(objective, argnums=(0, 1)))
  want = fn(hidden, embedding)
  got = fn(jax.device_put(hidden, named("data")), jax.device_put(embedding, named("fsdp")))
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, atol=1e-5)
