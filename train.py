"""Fine-tunes PaliGemma from an ml_collections config (big_vision style).

  python train.py --config configs/demo.py --workdir /tmp/demo_run [--config.total_steps=100]

Multi-host: on TPU pod slices and SLURM `jax.distributed` is detected from the environment; else
pass --coordinator_address=host:port --num_processes=N --process_id=i on every process.
A workdir holding checkpoints resumes from the latest one. See paligemma_jax/training/.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from paligemma_jax.quiet_startup import quiet_startup
from paligemma_jax.training import trainer

config_flags.DEFINE_config_file("config", None, "training config file (configs/*.py[:arg])",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "where checkpoints, metrics and the final params go")
flags.DEFINE_string("coordinator_address", "", "jax.distributed coordinator host:port")
flags.DEFINE_integer("num_processes", 0, "processes in the job (with --coordinator_address)")
flags.DEFINE_integer("process_id", -1, "this process's index (with --coordinator_address)")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def _parse_flags(argv):
  """absl's parsing; a --config.KEY that names no config field is one line (exit 2)."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:  # how ml_collections reports an unknown override
    while e.args and isinstance(e.args[0], BaseException):
      e = e.args[0]
    print(f"error: unknown config key {str(e.args[0] if e.args else e).splitlines()[0]}; "
          "see the config file for the valid keys", file=sys.stderr)
    sys.exit(2)


def main(argv):
  del argv
  quiet_startup()
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint write at INFO
  trainer.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                 FLAGS.process_id)
  try:
    trainer.train(FLAGS.config, FLAGS.workdir)
  except (ValueError, OSError, trainer.NonFiniteError) as e:  # one line, no traceback
    print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
