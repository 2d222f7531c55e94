"""Running evaluations: rows -> batches -> predict function -> stats -> gathered metrics + files.

The entry point for eval.py and for the trainer's periodic evaluation:

    metrics = evaluate(parse_evals(config.evals), predict_fn_factory, processor,
                       step=step, output_dir=f"{workdir}/evals", overwrite=True)
    # {"cococap_val/cider": 1.38, "cococap_val/num": 5000.0, ...}

`predict_fn_factory(decoding)` returns a predict function (or a score function for perplexity),
e.g. `lambda d: make_predict_fn(model_config, params, processor, d)`. Evaluation never sees the
trainer or the model. `periodic_evaluator(evals, output_dir=..., mesh=...)` wraps this as the
trainer's `evaluate(predictor)` hook (training/trainer.py's `train(..., evaluate=...)`).

Per eval, each process reads its share of the split (`data.eval_input.eval_rows`), groups valid
rows into batches of `batch_size` (the last one padded, `valid = False`), predicts (every process
calls the predict function equally often, see `predict_share`), and turns its rows into prediction
rows (id, prompt, prediction, references, fields). It computes its stats, then every process's
stats and rows are gathered (`gather`, default `allgather_bytes` over
`jax.experimental.multihost_utils.process_allgather`; 1 process: no communication) and merged with
`stats.merge_all`: a key-wise sum, which is the exact sum for additive metrics and the multiset
union for CIDEr and mAP. Every process then computes the same metrics; process 0 writes
`predictions.jsonl` (all processes' rows, then one {"id", "error"} row per example that could not
be read) and `metrics.json` into `<output_dir>[/step_<step>]/<name>/`, each through a temporary
file renamed at the end, only after the metrics were computed: a failure leaves no file.

Examples that cannot be read are skipped and counted (`skipped`); an eval with no example at all,
or a row the evaluator cannot score (no references, a missing field), is a one-line ValueError.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tqdm

from paligemma_jax.data.eval_input import eval_batch, eval_rows, row_groups
from paligemma_jax.data.input_pipeline import open_member
from paligemma_jax.data.processor import Processor
from paligemma_jax.data.tasks import Row
from paligemma_jax.evaluation.eval_config import EvalSpec
from paligemma_jax.evaluation.evaluators import Evaluator, get_evaluator
from paligemma_jax.evaluation.predict import PredictFnFactory, make_predict_fn
from paligemma_jax.evaluation.stats import merge_all

PREDICTIONS, METRICS = "predictions.jsonl", "metrics.json"
Gather = Callable[[bytes], list[bytes]]


@dataclasses.dataclass(frozen=True)
class EvalResult:
  """One eval's metrics (unprefixed), how many rows it scored and skipped, and its wall time."""

  metrics: dict[str, float]
  examples: int
  skipped: int
  seconds: float
  folder: str = ""


def evaluate(evals: Sequence[EvalSpec], predict_fn_factory: PredictFnFactory,
             processor: Processor, *, step: int | None = None, output_dir: str = "",
             overwrite: bool = False, **options: Any) -> dict[str, float]:
  """Runs every eval; returns `{f"{eval.name}/{metric}": value}` (flat, the same on every
  process). `output_dir` "" writes no files; `options` go to `run_eval` (process_index,
  process_count, gather, progress)."""
  out: dict[str, float] = {}
  for spec in evals:
    folder = eval_folder(output_dir, spec.name, step)
    result = run_eval(spec, predict_fn_factory, processor, folder=folder, overwrite=overwrite,
                      **options)
    out.update({f"{spec.name}/{k}": v for k, v in result.metrics.items()})
  return out


def periodic_evaluator(evals: Sequence[EvalSpec], *, output_dir: str = "", mesh: Any = None,
                       **options: Any) -> Callable[[Any], dict[str, float]]:
  """The trainer's `evaluate(predictor) -> dict` hook over these evals.

  `predictor` is anything with `config`, `params`, `processor` and `step` (training's
  `Predictor`; nothing here imports training/). Pass the trainer's `mesh` so its params are used
  in place. Files go to `<output_dir>/step_<step>/<name>/` (replaced if a resumed run repeats a
  step); `options` go to `run_eval`.
  """
  def hook(predictor: Any) -> dict[str, float]:
    def factory(decoding):
      return make_predict_fn(predictor.config, predictor.params, predictor.processor, decoding,
                             mesh=mesh)
    return evaluate(evals, factory, predictor.processor, step=predictor.step,
                    output_dir=output_dir, overwrite=True, **options)
  return hook


def eval_processor(spec: EvalSpec, processor: Processor) -> Processor:
  """`processor`, or a copy with the eval's own `image_antialias` where it sets one (big_vision
  resizes ai2d, rsvqa and vizwiz with antialias in training and without in their evals)."""
  if spec.image_antialias is None or spec.image_antialias == processor.antialias:
    return processor
  if processor.image_method != "big_vision":
    if not spec.image_antialias:
      return processor  # PIL bicubic has no such switch: nothing to turn off
    raise ValueError(f"eval {spec.name!r}: image_antialias applies to image_method 'big_vision' "
                     f"only (got {processor.image_method!r}); set --config.image_method="
                     "big_vision or drop the eval's image_antialias")
  return Processor(processor.tokenizer, processor.image_size, processor.num_image_tokens,
                   processor.image_method, antialias=spec.image_antialias,
                   tokenization=processor.tokenization)


def eval_folder(output_dir: str, name: str, step: int | None = None) -> str:
  """`<output_dir>/<name>`, or `<output_dir>/step_<step>/<name>`; "" if no output_dir."""
  if not output_dir:
    return ""
  return os.path.join(output_dir, *([] if step is None else [f"step_{step:08d}"]), name)


def check_outputs(folder: str, overwrite: bool) -> None:
  """One-line error when `folder` already holds outputs that may not be replaced."""
  for name in (PREDICTIONS, METRICS):
    path = os.path.join(folder, name)
    if os.path.exists(path) and not overwrite:
      raise FileExistsError(f"{path} exists; pass --overwrite (config.overwrite=True) to "
                            "replace it")


def run_eval(spec: EvalSpec, predict_fn_factory: PredictFnFactory, processor: Processor, *,
             folder: str = "", overwrite: bool = False, process_index: int | None = None,
             process_count: int | None = None, gather: Gather | None = None,
             progress: bool = True) -> EvalResult:
  """One eval on this process's share of its split; see the module docstring."""
  index, count, gather = _processes(process_index, process_count, gather)
  evaluator = get_evaluator(spec.evaluator)
  processor = eval_processor(spec, processor)
  if folder:
    check_outputs(folder, overwrite)
  start = time.perf_counter()
  # Bad data fails every process after the gather, so that none waits for a failed one.
  try:
    local, errors = predict_share(spec, evaluator, predict_fn_factory, processor, index, count,
                                  progress, gather)
    stats, failure = evaluator.stats(local, **spec.options) if local else {}, None
  except ValueError as e:  # a metric's "example i" counts this process's rows from 0
    prefix = f"eval {spec.name!r}: "
    local, errors, stats = [], [], {}
    failure = str(e) if str(e).startswith(prefix) else prefix + str(e)
  parts = [json.loads(p) for p in gather(json.dumps(
      {"stats": stats, "rows": [_jsonable(r) for r in local], "errors": errors,
       "failure": failure}).encode())]
  failures = [p["failure"] for p in parts if p["failure"]]
  if failures:
    raise ValueError(failures[0])
  rows_all = [r for p in parts for r in p["rows"]]
  errors_all = [e for p in parts for e in p["errors"]]
  if not rows_all:
    why = f"all {len(errors_all)} rows could not be read, e.g. {errors_all[0]['error']}" \
        if errors_all else "the split is empty"
    raise ValueError(f"eval {spec.name!r}: no examples to evaluate ({why})")
  try:
    metrics = evaluator.from_stats(merge_all(p["stats"] for p in parts))
  except ValueError as e:
    raise ValueError(f"eval {spec.name!r}: {e}") from None
  metrics["skipped"] = float(len(errors_all))
  if folder and index == 0:
    write_outputs(folder, rows_all + errors_all, metrics, overwrite=overwrite)
  return EvalResult(metrics, len(rows_all), len(errors_all), time.perf_counter() - start, folder)


def predict_share(spec: EvalSpec, evaluator: Evaluator, predict_fn_factory: PredictFnFactory,
                  processor: Processor, index: int, count: int, progress: bool = True,
                  gather: Gather | None = None
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
  """This process's prediction rows, and its {id, error} rows (examples that cannot be read).

  The predict function is one program over every process's devices, so all processes call it
  equally often: with several processes, they `gather` before each call whether anyone still has
  a group; one that has run out predicts a batch of padding and drops it. A process that finds
  an unscorable row says so in that exchange and raises; the others stop and return, and
  `run_eval` reports the failure everywhere.
  """
  rows = eval_rows(spec.data, process_index=index, process_count=count)
  show = progress and index == 0
  member = open_member(spec.data) if show else None  # the bar's total, where it is known
  total = len(range(len(member.source))[index::count]) \
      if member and member.task.one_row_per_example else None
  predict = predict_fn_factory(spec.decoding)
  groups = row_groups(rows, spec.batch_size, num_images=spec.num_images)
  local: list[dict[str, Any]] = []
  errors: list[dict[str, Any]] = []
  with tqdm.tqdm(desc=spec.name, unit="ex", total=total, disable=not show) as bar:
    while True:
      group, failure = _next_group(groups, errors), None
      bar.update(len(local) + len(errors) - bar.n)  # skipped rows count toward the total
      try:  # an unscorable row stops the eval before its group is predicted
        for row in group:
          _check_row(spec, evaluator, row)
        state = b"group" if group else b"done"
      except ValueError as e:
        state, failure = b"failed", e
      states = {state} if count == 1 else set(gather(state))
      if failure:
        raise failure
      if b"failed" in states or b"group" not in states:
        break
      local += _predict_group(spec, evaluator, predict, processor, group)
  return local, errors


def _next_group(groups: Iterator[tuple[list[Row], list[Row]]], errors: list[dict[str, Any]]
                ) -> list[Row]:
  """The next group with rows ([] when none is left); adds the bad rows before it to `errors`."""
  for group, bad in groups:
    errors += [{"id": r.id, "error": r.error} for r in bad]
    if group:
      return group
  return []


def _check_row(spec: EvalSpec, evaluator: Evaluator, row: Row) -> None:
  probe = {**row.fields, "references": list(row.references), "prediction": "",
           "log_likelihood": 0.0, "num_tokens": 0, "image_hw": [1, 1]}
  why = evaluator.check_row(probe, spec.options)
  if why is None and not spec.generates and not row.references:
    why = "has no reference to score"
  if why:
    raise ValueError(f"eval {spec.name!r}: row {row.id!r} {why} (evaluator {spec.evaluator!r} "
                     f"needs {', '.join(evaluator.required_fields(spec.options))})")


def _predict_group(spec: EvalSpec, evaluator: Evaluator, predict: Callable, processor: Processor,
                   group: list[Row]) -> list[dict[str, Any]]:
  """Prediction rows of one group (one padded batch); [] for no group, whose batch is all
  padding (a blank placeholder row, `valid` all False), predicted only to keep in step."""
  filled = group or [Row(id=None, prefix="", references=("",),
                         images=(np.zeros((1, 1, 3), np.uint8),) * spec.num_images)]
  batch = eval_batch(filled, processor, spec.batch_size, spec.text_len,
                     num_images=spec.num_images) if spec.generates else \
      score_batch(filled, processor, spec)
  batch["valid"] = np.arange(spec.batch_size) < len(group)
  if spec.generates:
    texts = predict(batch)
    if len(texts) != spec.batch_size:
      raise ValueError(f"eval {spec.name!r}: the predict function returned {len(texts)} texts "
                       f"for a batch of {spec.batch_size}")
    outputs = [{"prediction": t} for t in texts[:len(group)]]
  else:
    log_likelihoods, counts = predict(batch)
    outputs = [{"log_likelihood": float(ll), "num_tokens": int(c)}
               for ll, c in zip(log_likelihoods[:len(group)], counts[:len(group)])]
  out = []
  for row, output in zip(group, outputs):
    pred = {**({} if row.id is None else {"id": row.id}), "prompt": row.prefix, **output,
            "references": list(row.references), **row.fields}
    if evaluator.needs_image_hw:
      pred["image_hw"] = [int(d) for d in np.shape(row.images[0])[:2]]
    out.append(pred)
  return out


def score_batch(group: list[Row], processor: Processor, spec: EvalSpec) -> dict[str, Any]:
  """A training-layout batch (right-padded, suffix = the first reference, `mask_loss`) of the
  group, padded to `batch_size` with copies of its first row (valid = False)."""
  padded = group + [group[0]] * (spec.batch_size - len(group))
  batch = processor([list(r.images) for r in padded], [r.prefix or "" for r in padded],
                    [r.references[0] for r in padded], padding_side="right",
                    max_length=spec.num_images * processor.num_image_tokens + spec.text_len)
  return batch | {"valid": np.arange(spec.batch_size) < len(group)}


def write_outputs(folder: str, rows: Sequence[Mapping[str, Any]], metrics: Mapping[str, float],
                  *, overwrite: bool = False) -> None:
  """`predictions.jsonl` and `metrics.json` in `folder`, both written before either is renamed
  into place (an error leaves neither)."""
  check_outputs(folder, overwrite)
  os.makedirs(folder, exist_ok=True)
  texts = {PREDICTIONS: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
           METRICS: json.dumps(dict(metrics), indent=1, sort_keys=True) + "\n"}
  write_atomically({os.path.join(folder, name): text for name, text in texts.items()})


def write_atomically(files: Mapping[str, str]) -> None:
  """Writes every file to `<path>.incomplete`, then renames them all; cleans up on failure."""
  temps = {path: f"{path}.incomplete" for path in files}
  try:
    for path, text in files.items():
      with open(temps[path], "w", encoding="utf-8") as f:
        f.write(text)
    for path, temp in temps.items():
      os.replace(temp, path)
  finally:
    for temp in temps.values():
      if os.path.exists(temp):
        os.remove(temp)


def allgather_bytes(data: bytes) -> list[bytes]:
  """Every process's `data`, in process order (one process: no communication)."""
  import jax
  if jax.process_count() == 1:
    return [data]
  from jax.experimental import multihost_utils
  sizes = np.asarray(multihost_utils.process_allgather(np.array([len(data)], np.int64)))
  sizes = sizes.reshape(-1)
  buffer = np.zeros(int(sizes.max()), np.uint8)
  buffer[:len(data)] = np.frombuffer(data, np.uint8)
  parts = np.asarray(multihost_utils.process_allgather(buffer))
  return [parts[i, :int(n)].tobytes() for i, n in enumerate(sizes)]


def _processes(index: int | None, count: int | None, gather: Gather | None
               ) -> tuple[int, int, Gather]:
  import jax
  index = jax.process_index() if index is None else index
  count = jax.process_count() if count is None else count
  if gather is None:
    if count != jax.process_count():
      raise ValueError(f"process_count {count} is not JAX's {jax.process_count()}: pass a "
                       "gather function for simulated processes")
    gather = allgather_bytes
  if not 0 <= index < count:
    raise ValueError(f"process_index {index} is not in [0, {count})")
  return index, count, gather


def _jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
  """The row without values JSON cannot hold (e.g. refcoco_seg's GT mask arrays)."""
  return {k: v for k, v in row.items() if not isinstance(v, np.ndarray)}
