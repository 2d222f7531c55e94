"""Evaluate a checkpoint on a config's eval splits, or score a saved predictions file.

  python eval.py --config=configs/eval_cococap.py --config.checkpoint=ckpt/ \
      --config.tokenizer=tokenizer.model --config.output_dir=evals/
  python eval.py --config=configs/eval_cococap.py ... --config.evals.0.data.split='val[:500]'
  python eval.py --predictions=evals/cococap_val/predictions.jsonl --metric=cider \
      [--metric_options='{"tokenize": false}'] [--output=metrics.json]

With --config every eval of `config.evals` writes <output_dir>/<name>/predictions.jsonl and
metrics.json (existing ones are replaced only with --overwrite) and a metric table is printed.
With --predictions the rows' "prediction" and "references" (or the fields the metric needs) are
scored by the evaluator --metric (see paligemma_jax.evaluation.EVALUATORS).
"""

import sys

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "An eval config (configs/eval_*.py); override "
                                "fields as --config.KEY=...")
flags.DEFINE_string("predictions", None, "Score this predictions JSONL instead of a checkpoint.")
flags.DEFINE_string("metric", None, "With --predictions: the evaluator (cider, vqav2, anls, ...).")
flags.DEFINE_string("metric_options", "", "With --predictions: evaluator options as JSON.")
flags.DEFINE_string("output", None, "With --predictions: also write the metrics to this JSON.")
flags.DEFINE_bool("overwrite", False, "Replace existing output files.")
FLAGS = flags.FLAGS


def _parse_flags(argv):
  """absl's parsing, with a one-line error for a --config.KEY that names no config field."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:  # how ml_collections reports an unknown override
    while e.args and isinstance(e.args[0], BaseException):
      e = e.args[0]
    key = str(e.args[0] if e.args else e).partition("\n")[0]
    print(f"error: unknown config key {key}", file=sys.stderr)
    sys.exit(2)


def _run():
  if (FLAGS.config is None) == (FLAGS.predictions is None):
    raise ValueError("give --config=configs/eval_*.py (evaluate a checkpoint) or "
                     "--predictions=FILE --metric=NAME (score saved predictions)")
  if FLAGS.predictions is not None:
    if not FLAGS.metric:
      raise ValueError("--predictions needs --metric (e.g. --metric=cider)")
    from paligemma_jax.evaluation.eval_cli import score_file
    return score_file(FLAGS.predictions, FLAGS.metric, output=FLAGS.output,
                      options=FLAGS.metric_options, overwrite=FLAGS.overwrite)
  for name in ("metric", "output"):
    if FLAGS[name].present:
      raise ValueError(f"--{name} applies to --predictions only")
  from paligemma_jax.evaluation.eval_cli import run_config  # after the checks: jax is slow
  return run_config(FLAGS.config, overwrite=FLAGS.overwrite)


def main(argv):
  del argv
  from paligemma_jax.quiet_startup import quiet_startup
  quiet_startup()
  try:
    print(_run())
  except (ValueError, OSError) as e:  # bad input: one line, no traceback
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
