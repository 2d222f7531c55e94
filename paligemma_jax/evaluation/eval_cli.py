"""What `eval.py` does, as functions of a config or of plain arguments (the flags)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from paligemma_jax.evaluation.eval_config import parse_eval_config
from paligemma_jax.inference.batch_infer import check_output
from paligemma_jax.evaluation.run_evals import EvalResult, check_outputs, eval_folder, run_eval
from paligemma_jax.evaluation.saved_predictions import score_predictions, write_metrics


def metric_table(results: Mapping[str, Mapping[str, float]]) -> str:
  """Aligned `eval  metric  value` lines."""
  lines = [("eval", "metric", "value")]
  for name, metrics in results.items():
    lines += [(name, key, f"{value:.6g}") for key, value in metrics.items()]
  widths = [max(len(line[i]) for line in lines) for i in range(3)]
  return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}" for a, b, c in lines)


def describe(name: str, result: EvalResult) -> str:
  rate = result.examples / result.seconds if result.seconds > 0 else float("nan")
  where = f" -> {result.folder}" if result.folder else ""
  return (f"{name}: {result.examples} examples ({result.skipped} skipped) in "
          f"{result.seconds:.1f} s, {rate:.2f} examples/s{where}")


def run_config(config: Any, *, overwrite: bool = False) -> str:
  """Evaluates the config's checkpoint on its evals (`eval.py --config=...`); returns the report.

  Everything is checked (config, output folders) before the model loads. With several JAX
  processes each predicts its share of every split on its local devices; process 0 writes.
  """
  import jax

  from paligemma_jax import sharding
  from paligemma_jax.api import load_checkpoint, make_processor
  from paligemma_jax.evaluation.predict import make_predict_fn

  cfg = parse_eval_config(config)
  overwrite = overwrite or cfg.overwrite
  for spec in cfg.evals:
    check_outputs(eval_folder(cfg.output_dir, spec.name), overwrite)
  model_config, params = load_checkpoint(cfg.checkpoint)
  processor = make_processor(model_config, cfg.tokenizer, cfg.image_method,
                             antialias=cfg.image_antialias)
  mesh = sharding.make_mesh(devices=jax.local_devices())
  params = jax.device_put(params, sharding.param_shardings(model_config, mesh))

  def factory(decoding):
    return make_predict_fn(model_config, params, processor, decoding, mesh=mesh)

  results, lines = {}, []
  for spec in cfg.evals:
    result = run_eval(spec, factory, processor, folder=eval_folder(cfg.output_dir, spec.name),
                      overwrite=overwrite)
    results[spec.name] = result.metrics
    lines.append(describe(spec.name, result))
  return "\n".join(lines + ["", metric_table(results)])


def score_file(predictions: str, metric: str, *, output: str | None = None,
               options: str | Mapping[str, Any] | None = None, overwrite: bool = False) -> str:
  """Scores a saved predictions file (`eval.py --predictions=... --metric=...`); returns the
  table. `options` is a dict or its JSON text (e.g. '{"to_lower": true}')."""
  if isinstance(options, str):
    try:
      options = json.loads(options) if options.strip() else {}
    except json.JSONDecodeError as e:
      raise ValueError(f"--metric_options is not JSON ({e.msg}): {options!r}") from None
    if not isinstance(options, dict):
      raise ValueError(f"--metric_options must be a JSON object, got {options!r}")
  if output:  # before the scoring, which may be slow
    check_output(output, overwrite)
  metrics = score_predictions(predictions, metric, options)
  if output:
    write_metrics(output, metrics, overwrite=overwrite)
  return metric_table({metric: metrics})
