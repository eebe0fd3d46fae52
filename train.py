"""Trains Real NVP.  `python train.py` trains on the embedded digits.

    python train.py --flagfile=flags/cifar10.cfg --data_dir=~/tensorflow_datasets

Writes to --model_dir: ckpt-* checkpoints, train/ and eval/ TensorBoard
logs, samples/step_N.png and saved_model/. Restarting resumes exactly.
"""

import json
import os
import sys

from absl import app, flags, logging

from real_nvp import cli_flags, data, distribute, export
from real_nvp.train_lib import CheckpointMismatch, Trainer, TrainingDiverged

cli_flags.define_flags()
FLAGS = flags.FLAGS


def _save_run_settings(model_dir):
  """The resolved flags, and the data settings eval.py reads back."""
  os.makedirs(model_dir, exist_ok=True)
  with open(os.path.join(model_dir, 'flags.txt'), 'w') as f:
    f.write(FLAGS.flags_into_string())
  settings = {name: FLAGS[name].value for name in
              ('dataset', 'data_dir', 'image_size', 'image_channels')}
  with open(os.path.join(model_dir, 'data.json'), 'w') as f:
    json.dump(settings, f, indent=2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    strategy = distribute.get_strategy(FLAGS.strategy)
    source = data.load_dataset(FLAGS.dataset, FLAGS.data_dir, FLAGS.image_size,
                               FLAGS.image_channels)
    model_dir = cli_flags.model_dir()
    trainer = Trainer(strategy, source, cli_flags.flow_config(source),
                      cli_flags.train_config(), model_dir)
    if trainer.is_chief:
      _save_run_settings(model_dir)
    logging.info('Training on %s %s (%d levels) with %d replica(s) into %s',
                 source.name, source.image_shape, source.levels,
                 strategy.num_replicas_in_sync, model_dir)
    eval_bpd = trainer.train()
  except (data.DataError, CheckpointMismatch, TrainingDiverged, ValueError,
          FileNotFoundError) as error:
    logging.error('%s', error)
    sys.exit(f'Error: {error}')
  if eval_bpd is None:
    return  # Stopped by a signal; the checkpoint is saved.
  if trainer.is_chief:
    export.export_saved_model(trainer.model, os.path.join(model_dir, 'saved_model'))
  print(f'Held-out bits/dim ({source.name}, {source.eval_split_name}): '
        f'{eval_bpd:.4f} after {trainer.cfg.train_steps} steps. '
        f'Outputs in {model_dir}')


if __name__ == '__main__':
  app.run(main)
