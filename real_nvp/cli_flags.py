"""Command-line flags shared by train.py and eval.py, defined in one place.

Architecture flags left unset take the data set's preset (paper §4.1); see
`python train.py --helpfull`. Flag files in flags/ carry the paper's runs.
"""

import os

from absl import flags

from real_nvp import config as config_lib
from real_nvp import data, distribute
from real_nvp.dequantization import DEQUANTIZERS
from real_nvp.train_lib import TrainConfig

__all__ = ['define_flags', 'flow_config', 'train_config', 'model_dir']


def define_flags():
  """Defines every flag (all optional, so that tests can import them)."""
  # Data.
  flags.DEFINE_string('dataset', 'digits',
                      'digits | npz:PATH | folder:PATH | ' +
                      ' | '.join(sorted(data.TFDS_DATASETS)))
  flags.DEFINE_string('data_dir', None, 'TFDS data directory (prepared offline).')
  flags.DEFINE_integer('image_size', 32, 'Side of the square images of folder:PATH.')
  flags.DEFINE_integer('image_channels', 3, 'Channels (1 or 3) of folder:PATH.')
  # Run.
  flags.DEFINE_string('model_dir', None,
                      'Checkpoints, summaries, samples and the SavedModel; '
                      'default runs/<dataset>.')
  flags.DEFINE_enum('strategy', 'mirrored', distribute.STRATEGIES,
                    'tf.distribute strategy.')
  flags.DEFINE_integer('seed', 0, 'Seed of the data order, noise and samples.')
  # Optimization.
  defaults = TrainConfig()
  flags.DEFINE_integer('train_steps', defaults.train_steps, 'Total optimizer steps.')
  flags.DEFINE_integer('batch_size', defaults.batch_size, 'Global batch size.')
  flags.DEFINE_float('learning_rate', defaults.learning_rate, 'Adam learning rate.')
  flags.DEFINE_integer('warmup_steps', defaults.warmup_steps,
                       'Linear learning-rate warm-up steps.')
  flags.DEFINE_float('clip_grad_norm', defaults.clip_grad_norm,
                     'Clip gradients to this global norm.')
  flags.DEFINE_float('weight_decay', defaults.weight_decay,
                     'L2 coefficient on the weight-normalization gains.')
  flags.DEFINE_integer('train_dequant_samples', defaults.train_dequant_samples,
                       'Dequantization draws K per image in training; K > 1 '
                       'trains on the K-draw importance-weighted bound.')
  flags.DEFINE_integer('max_nonfinite', defaults.max_nonfinite,
                       'Stop after this many consecutive non-finite steps.')
  flags.DEFINE_enum('mixed_precision', None, ['bfloat16', 'float16'],
                    'Compute dtype of the s/t networks (GPUs/TPUs); the flow, '
                    'log-dets and likelihood stay float32.')
  flags.DEFINE_bool('xla', False, 'jit_compile the per-replica forward/backward pass.')
  # Monitoring and checkpoints.
  flags.DEFINE_integer('eval_every', defaults.eval_every,
                       'Evaluate held-out bits/dim every N steps; 0: only at the end.')
  flags.DEFINE_integer('eval_examples', defaults.eval_examples,
                       'Held-out examples per evaluation; 0 = the whole split.')
  flags.DEFINE_integer('checkpoint_every', defaults.checkpoint_every,
                       'Checkpoint every N steps.')
  flags.DEFINE_integer('keep_checkpoints', defaults.keep_checkpoints,
                       'Checkpoints to keep.')
  flags.DEFINE_integer('summary_every', defaults.summary_every,
                       'Write training scalars every N steps.')
  flags.DEFINE_float('log_every_secs', defaults.log_every_secs,
                     'Seconds between progress lines.')
  flags.DEFINE_list('sample_temperatures', ['1.0', '0.7'],
                    'Temperatures of the sample grids.')
  flags.DEFINE_integer('num_samples', defaults.num_samples, 'Images per sample grid.')
  # Architecture (unset: the data set's preset).
  flags.DEFINE_enum('preset', None, sorted(config_lib.PRESETS),
                    'Architecture preset; default: the data set\'s.')
  flags.DEFINE_integer('num_scales', None, 'Scales, the final one included.')
  flags.DEFINE_integer('num_blocks', None, 'Residual blocks per s/t network.')
  flags.DEFINE_integer('feature_maps', None, 'Feature maps of the first scale.')
  flags.DEFINE_bool('flow_batch_norm', None, 'Batch norm after each coupling.')
  flags.DEFINE_float('bn_momentum', None, 'Batch-norm moving-average momentum.')
  flags.DEFINE_bool('bn_lag', None, 'Appendix E running-average statistics.')
  flags.DEFINE_float('alpha', None, 'Logit preprocessing margin.')
  flags.DEFINE_enum('dequantization', None, list(DEQUANTIZERS),
                    'uniform: u = x + U[0, 1) (the paper, the default); '
                    'variational: a learned conditional flow (Flow++).')
  flags.DEFINE_integer('dequant_couplings', None,
                       'Variational dequantizer: couplings per mask type.')
  flags.DEFINE_integer('dequant_feature_maps', None,
                       'Variational dequantizer: feature maps of its networks.')
  flags.DEFINE_integer('dequant_blocks', None,
                       'Variational dequantizer: residual blocks of its networks.')


_ARCHITECTURE_FLAGS = ('num_scales', 'num_blocks', 'feature_maps',
                       'flow_batch_norm', 'bn_momentum', 'bn_lag', 'alpha',
                       'dequantization', 'dequant_couplings',
                       'dequant_feature_maps', 'dequant_blocks')


def flow_config(source, flag_values=flags.FLAGS):
  """FlowConfig for `source`: preset, then explicit architecture flags."""
  name = flag_values.preset or source.preset
  base = config_lib.PRESETS[name] if name else _default_config(source)
  overrides = {f: flag_values[f].value for f in _ARCHITECTURE_FLAGS
               if flag_values[f].value is not None}
  return base.replace(image_shape=source.image_shape, levels=source.levels,
                      **overrides)


def _default_config(source):
  """Own data: the paper's recipe, recursing down to 4x4 (or as far as the
  size allows)."""
  height, width, _ = source.image_shape
  num_scales = 1
  while (height % 2 ** num_scales == 0 and width % 2 ** num_scales == 0 and
         min(height, width) // 2 ** num_scales >= 4):
    num_scales += 1
  return config_lib.FlowConfig(source.image_shape, levels=source.levels,
                               num_scales=num_scales, num_blocks=4,
                               feature_maps=32)


def train_config(flag_values=flags.FLAGS):
  return TrainConfig(
      train_steps=flag_values.train_steps, batch_size=flag_values.batch_size,
      learning_rate=flag_values.learning_rate,
      warmup_steps=flag_values.warmup_steps,
      clip_grad_norm=flag_values.clip_grad_norm,
      weight_decay=flag_values.weight_decay,
      max_nonfinite=flag_values.max_nonfinite,
      eval_every=flag_values.eval_every,
      eval_examples=flag_values.eval_examples,
      checkpoint_every=flag_values.checkpoint_every,
      keep_checkpoints=flag_values.keep_checkpoints,
      summary_every=flag_values.summary_every,
      log_every_secs=flag_values.log_every_secs,
      sample_temperatures=tuple(float(t) for t in flag_values.sample_temperatures),
      num_samples=flag_values.num_samples, seed=flag_values.seed,
      jit_compile=flag_values.xla, mixed_precision=flag_values.mixed_precision,
      train_dequant_samples=flag_values.train_dequant_samples)


def model_dir(flag_values=flags.FLAGS):
  if flag_values.model_dir:
    return flag_values.model_dir
  name = flag_values.dataset.split(':')[0]
  return os.path.join('runs', name)
