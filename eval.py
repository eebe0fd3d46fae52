"""Evaluates a trained Real NVP, makes the paper's figures, exports a SavedModel.

    python eval.py --model_dir=runs/digits
    python eval.py --model_dir=runs/cifar10 --dequant_samples=4 --watch
    python eval.py --model_dir=runs/digits --export_dir=/tmp/real_nvp_digits
    python eval.py --model_dir=runs/digits --checkpoint=best --scores_file=scores.csv
    python eval.py --model_dir=runs/digits --ood_dataset=npz:noise.npz

Writes {model_dir}/eval_results.json, the eval/ TensorBoard scalars
`bits_per_dim` and `bits_per_dim_iw` and {model_dir}/figures/*.png.
"""

import json
import os
import sys

from absl import app, flags, logging

# real_nvp before TensorFlow: it chooses TF's CPU kernels (hardware.py).
from real_nvp import cli_flags
from real_nvp import config as config_lib

cli_flags.define_flags()
flags.DEFINE_enum('split', 'eval', ['eval', 'train'],
                  'Which split: the held-out one (test or validation) or train.')
flags.DEFINE_string('checkpoint', None,
                    'Checkpoint path, or "best" (the best held-out checkpoint of '
                    'training); default: the newest readable one.')
flags.DEFINE_integer('dequant_samples', 1, lower_bound=1,
                     upper_bound=config_lib.MAX_DEQUANT_SAMPLES, help=
                     'Dequantization draws K per image: the bound averages them, '
                     'the importance-weighted estimate (bits_per_dim_iw) combines '
                     'them. Drawn one at a time: memory does not grow with K.')
flags.DEFINE_bool('watch', False, 'Evaluate each new checkpoint until --watch_timeout.')
flags.DEFINE_integer('watch_timeout', 3600, 'Seconds to wait for a new checkpoint.',
                     lower_bound=0)
flags.DEFINE_string('export_dir', None, 'Also export a SavedModel here.')
flags.DEFINE_bool('figures', True, 'Write the figures.')
flags.DEFINE_string('results_file', None,
                    'Where eval_results.json goes; default: the model directory. '
                    'Given, eval.py writes nothing into the model directory but its '
                    'figures (--nofigures: nothing), so a read-only one can be '
                    'evaluated.')
flags.DEFINE_string('scores_file', None,
                    'Write one CSV row per image of the split: index, name (folder: '
                    'sources), bits/dim and, with --dequant_samples > 1, the '
                    'importance-weighted bits/dim.')
flags.DEFINE_string('ood_dataset', None,
                    'Also score this data set (any --dataset spec; brought to the '
                    "model's shape and levels) and report out-of-distribution "
                    'detection with bits/dim and typicality as the score.')
FLAGS = flags.FLAGS
if __name__ == '__main__':
  cli_flags.parse_before_tensorflow(sys.argv)

# pylint: disable=g-import-not-at-top,wrong-import-position
from real_nvp import (best_checkpoint, checkpoints, data, distribute, export,  # noqa: E402
                      figures, hardware, model_dir_layout, ood, storage, summaries)
from real_nvp.evaluation import Evaluator, write_scores  # noqa: E402
from real_nvp.progress import progress_printer  # noqa: E402


def _write_figures(model, source, model_dir, step, writers):
  held_out = next(iter(data.eval_dataset(source, 8)))
  pictures = {f'samples_t{float(t):g}': figures.sample_grid(model, float(t), seed=FLAGS.seed)
              for t in FLAGS.sample_temperatures}
  if held_out.shape[0] >= 4:
    pictures['manifold'] = figures.manifold(model, held_out)
  pictures['resample_fine_scales'] = figures.scale_resampling(
      model, held_out[0], seed=FLAGS.seed, keep='coarse')
  pictures['resample_coarse_scales'] = figures.scale_resampling(
      model, held_out[0], seed=FLAGS.seed, keep='fine')
  pictures['reconstructions'] = figures.reconstructions(model, held_out)
  for name, grid in pictures.items():
    upscale = max(1, 512 // max(grid.shape[:2]))
    summaries.save_png(os.path.join(model_dir, 'figures', f'{name}.png'), grid, upscale)
    writers.images('eval', step, f'figures/{name}', grid)


def _ood_source(config):
  """The --ood_dataset brought to the model's shape and levels (checked before
  any evaluation runs)."""
  source = data.load_dataset(FLAGS.ood_dataset, FLAGS.data_dir,
                             config.image_shape[0], config.image_shape[2])
  return data.conform(source, config.image_shape, config.levels)


def _out_of_distribution(evaluator, evaluation, source, ood_source, model_dir, step,
                         writers):
  report, ood_evaluation = ood.ood_report(evaluator, evaluation, source, ood_source)
  print(f"Out of distribution: {report['dataset']}, {report['num_examples']} images, "
        f"{report['bits_per_dim']:.4f} bits/dim (in distribution "
        f"{report['in_distribution_bits_per_dim']:.4f}): AUROC {report['auroc']:.4f}, "
        f"AUPR {report['aupr']:.4f}, FPR at 95% TPR {report['fpr_at_95_tpr']:.4f}; "
        f"typicality AUROC {report['typicality_auroc']:.4f}, AUPR "
        f"{report['typicality_aupr']:.4f}, FPR at 95% TPR "
        f"{report['typicality_fpr_at_95_tpr']:.4f}", flush=True)
  picture = figures.ood_histogram(
      evaluation.bits_per_dim, ood_evaluation.bits_per_dim,
      f'{source.name} {source.eval_split_name}', report['dataset'],
      os.path.join(model_dir, 'figures', 'ood_histogram.png'))
  writers.images('eval', step, 'figures/ood_histogram', picture)
  writers.scalars('eval', step, {f'ood/{k}': v for k, v in report.items()
                                 if isinstance(v, float)})
  return report


def _refuse_architecture_flags(config, model_dir):
  """Architecture flags describe the stored model, which eval.py cannot change:
  one that differs from config.json is refused, naming the stored value."""
  requested = {name: FLAGS[name].value for name in cli_flags.ARCHITECTURE_FLAGS
               if FLAGS[name].present}
  if FLAGS['preset'].present:
    preset = config_lib.PRESETS[FLAGS.preset]
    requested = {**{name: getattr(preset, name) for name in cli_flags.ARCHITECTURE_FLAGS},
                 **requested}
  for name, value in requested.items():
    if value != getattr(config, name):
      raise ValueError(
          f'--{name}={value}' + (f' (from --preset={FLAGS.preset})'
                                 if not FLAGS[name].present else '') +
          f': the model in {model_dir} has {name}={getattr(config, name)!r} '
          '(config.json); eval.py evaluates the model as it was trained. Drop the flag.')


def _output_paths(model_dir):
  """(path, is a directory) of everything eval.py will write."""
  paths = ([(FLAGS.results_file, False)] if FLAGS.results_file else
           [(os.path.join(model_dir, 'eval_results.json'), False),
            (os.path.join(model_dir, 'eval'), True)])
  if FLAGS.figures or FLAGS.ood_dataset:
    paths.append((os.path.join(model_dir, 'figures'), True))
  if FLAGS.scores_file:
    paths.append((FLAGS.scores_file, False))
  if FLAGS.export_dir:
    paths.append((os.path.dirname(os.path.abspath(FLAGS.export_dir)), True))
  return paths


def _evaluate(model_dir, checkpoint, strategy):
  config = model_dir_layout.read_config(model_dir)
  if config is not None:  # Else restore_model says that there is no model.
    _refuse_architecture_flags(config, model_dir)
    for path, is_directory in _output_paths(model_dir):
      storage.check_writable(path, is_directory)
  model, step, checkpoint = checkpoints.restore_model(
      model_dir, best_checkpoint.resolve_checkpoint(model_dir, checkpoint), strategy)
  source = cli_flags.run_data_source(model_dir, FLAGS.split)
  ood_source = _ood_source(model.config) if FLAGS.ood_dataset else None
  evaluator = Evaluator(model, strategy, FLAGS.batch_size,
                        dequant_samples=FLAGS.dequant_samples, seed=FLAGS.seed)
  evaluation = evaluator(source, FLAGS.eval_examples or None,
                         progress_printer('eval', sys.stderr, every=10.))
  results = evaluation.summary()
  results.update(checkpoint_step=step, checkpoint=checkpoint,
                 replicas=strategy.num_replicas_in_sync,
                 dataset=source.name, split=source.eval_split_name,
                 dequantization=model.config.dequantization)
  # The result first: whatever the disk does next, it is not lost.
  print(f"{source.name} {source.eval_split_name}, step {step}, "
        f"{results['num_examples']} images × {FLAGS.dequant_samples} "
        f"{model.config.dequantization} dequantization draw(s): bound "
        f"{results['bits_per_dim']:.4f} ± {results['std_error']:.4f}, "
        f"importance-weighted {results['bits_per_dim_iw']:.4f} ± "
        f"{results['std_error_iw']:.4f} bits/dim", flush=True)
  writers = summaries.SummaryWriters(model_dir, enabled=not FLAGS.results_file)
  if FLAGS.scores_file:
    write_scores(evaluation, FLAGS.scores_file, source.eval.names)
    results['scores_file'] = os.path.abspath(FLAGS.scores_file)
  if ood_source is not None:
    results['ood'] = _out_of_distribution(evaluator, evaluation, source, ood_source,
                                          model_dir, step, writers)
  storage.write_atomically(FLAGS.results_file or os.path.join(model_dir, 'eval_results.json'),
                           json.dumps(results, indent=2))
  writers.scalars('eval', step, {
      'bits_per_dim': results['bits_per_dim'],
      'bits_per_dim_iw': results['bits_per_dim_iw']})
  if FLAGS.figures:
    _write_figures(model, source, model_dir, step, writers)
  if FLAGS.export_dir:
    export.export_saved_model(model, FLAGS.export_dir)
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  model_dir = cli_flags.model_dir()
  try:
    strategy = distribute.get_strategy(FLAGS.strategy)
    hardware.log_platform()  # After the strategy: multi-worker must come first.
    if not FLAGS.watch:
      _evaluate(model_dir, FLAGS.checkpoint, strategy)
      return
    checkpoints.watch_checkpoints(
        model_dir, FLAGS.watch_timeout,
        lambda checkpoint: _evaluate(model_dir, checkpoint, strategy))
  except (data.DataError, FileNotFoundError, ValueError) as error:
    logging.error('%s', error)
    sys.exit(f'Error: {error}')
  except storage.STORAGE_ERRORS as error:  # After the check: the disk changed.
    where = getattr(error, 'filename', None) or model_dir
    message = (f'Writing {where} failed ({checkpoints.error_summary(error)}); the '
               'results printed above are complete. Fix the path (space, '
               'permissions) or choose another, and run again for the files.')
    logging.error('%s', message)
    sys.exit(f'Error: {message}')


if __name__ == '__main__':
  app.run(main)
