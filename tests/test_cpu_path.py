"""The CPU path (models/cpu_path): chosen from the CPU's features, measured once per machine where
features do not settle it, forced by environment variables, with one-line errors for bad values."""

import json

import pytest

from paligemma_jax.models import cpu_path

AVX2 = frozenset({"avx2", "fma"})
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512vl"}
AVX512_BF16 = AVX512 | {"avx512_bf16"}


@pytest.fixture
def no_env(monkeypatch):
  monkeypatch.delenv(cpu_path.PREFILL_ENV, raising=False)
  monkeypatch.delenv(cpu_path.KERNELS_ENV, raising=False)


def test_features_settle_the_prefill_where_they_can(no_env, monkeypatch):
  monkeypatch.setattr(cpu_path, "_measured_prefill", lambda flags: pytest.fail("measured"))
  # AVX-512 BF16 without AMX: the kernels' GEMM where g++ can build it, else XLA's bf16 GEMM.
  gemm = "avx512bf16" if cpu_path.kernels_runnable("avx512bf16", AVX512_BF16) else "bf16"
  assert cpu_path._choose_prefill(AVX512_BF16)[0] == gemm
  assert cpu_path._choose_prefill(AVX512_BF16 | {"amx_bf16"})[0] == "bf16"
  assert cpu_path._choose_prefill(AVX2 | {"amx_bf16"})[0] == "bf16"
  assert cpu_path._choose_prefill(AVX2)[0] == "f32"


def test_kernels_follow_the_features(no_env):
  if not cpu_path.kernels_runnable("avx2", AVX2):
    pytest.skip("needs Linux and g++")
  assert cpu_path._choose_kernels(AVX512_BF16)[0] == "avx512bf16"
  assert cpu_path._choose_kernels(AVX512)[0] == "avx2"
  assert cpu_path._choose_kernels(AVX2)[0] == "avx2"
  assert cpu_path._choose_kernels(frozenset({"sse4_2"}))[0] == "off"


def test_an_unsettled_cpu_is_measured_once_and_cached(no_env, monkeypatch, tmp_path):
  monkeypatch.setattr(cpu_path, "cache_dirs", lambda: (tmp_path,))
  timings = {"bfloat16": 0.002, "float32": 0.003}
  calls = []
  monkeypatch.setattr(cpu_path, "_gemm_seconds", lambda dtype: calls.append(dtype) or timings[dtype])
  choice, reason = cpu_path._choose_prefill(AVX512)  # AVX-512 without bf16 units: measured
  assert choice == "bf16" and "measured" in reason and sorted(calls) == ["bfloat16", "float32"]
  [cached] = tmp_path.glob("cpu_path-*.json")
  assert json.loads(cached.read_text())[0] == "bf16"
  timings.update(bfloat16=1.0)  # a second process reads the cached choice, not a new timing
  assert cpu_path._choose_prefill(AVX512)[0] == "bf16" and len(calls) == 2


def test_environment_forces_each_choice(monkeypatch):
  monkeypatch.setenv(cpu_path.PREFILL_ENV, "f32")
  assert cpu_path._choose_prefill(AVX512_BF16) == ("f32", f"prefill forced by {cpu_path.PREFILL_ENV}")
  monkeypatch.setenv(cpu_path.PREFILL_ENV, "bf16")
  assert cpu_path._choose_prefill(AVX2)[0] == "bf16"
  if cpu_path.kernels_runnable("avx512bf16", AVX512_BF16):
    monkeypatch.setenv(cpu_path.PREFILL_ENV, "avx512bf16")
    assert cpu_path._choose_prefill(AVX512_BF16)[0] == "avx512bf16"
  for off in ("0", "off", "OFF"):
    monkeypatch.setenv(cpu_path.KERNELS_ENV, off)
    assert cpu_path._choose_kernels(AVX512_BF16)[0] == "off"
  monkeypatch.setenv(cpu_path.KERNELS_ENV, "1")  # the old "on": decide
  monkeypatch.setenv(cpu_path.PREFILL_ENV, "auto")
  assert cpu_path._choose_prefill(AVX2 | {"amx_bf16"})[0] == "bf16"


def test_bad_or_impossible_choices_are_one_line_errors(monkeypatch):
  monkeypatch.setenv(cpu_path.PREFILL_ENV, "fp16")
  with pytest.raises(ValueError, match=r"PALIGEMMA_JAX_CPU_PREFILL='fp16' is not one of f32, "
                     r"bf16, avx512bf16, auto"):
    cpu_path._choose_prefill(AVX2)
  monkeypatch.setenv(cpu_path.PREFILL_ENV, "avx512bf16")  # the GEMM needs AVX-512 BF16
  with pytest.raises(ValueError, match="cannot run on this CPU") as error:
    cpu_path._choose_prefill(AVX2)
  assert "\n" not in str(error.value)
  monkeypatch.setenv(cpu_path.KERNELS_ENV, "avx512bf16")
  with pytest.raises(ValueError, match="cannot run on this CPU") as error:
    cpu_path._choose_kernels(AVX2)
  assert "\n" not in str(error.value)


def test_forced_overrides_and_restores():
  before = cpu_path.current()
  with cpu_path.forced(prefill="f32", kernels="off") as path:
    assert cpu_path.current() == path and (path.prefill, path.kernels) == ("f32", "off")
  assert cpu_path.current() == before
  with pytest.raises(ValueError):
    with cpu_path.forced(prefill="fp8"):
      pass


def test_the_timing_runs_when_first_asked_inside_a_trace(no_env, monkeypatch, tmp_path):
  # The path is first read while a model is traced (layers.cpu_upcast); a CPU that features do
  # not settle is timed then, with real (not traced) arrays.
  import jax
  import jax.numpy as jnp
  monkeypatch.setattr(cpu_path, "cache_dirs", lambda: (tmp_path,))
  chosen = []
  jax.jit(lambda x: chosen.append(cpu_path._choose_prefill(AVX512)) or x * 2)(jnp.ones(3))
  assert chosen[0][0] in cpu_path.PREFILLS and "measured" in chosen[0][1]
