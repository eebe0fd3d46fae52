"""Command-line flags shared by train.py and eval.py, defined in one place.

Architecture flags left unset take the data set's preset (paper §4.1); see
`python train.py --helpfull`. Flag files in flags/ carry the paper's runs.
The training flags are TrainConfig's fields, checked when they are parsed
(a bad value stops the program with the flag and the reason, before
anything is written).
"""

import dataclasses
import os

from absl import flags

from real_nvp import config as config_lib
from real_nvp import checkpoints, data, distribute
from real_nvp.dequantization import DEQUANTIZERS

__all__ = ['define_flags', 'flow_config', 'train_config', 'model_dir', 'DATA_FLAGS',
           'ARCHITECTURE_FLAGS', 'run_data_source']

DATA_FLAGS = ('dataset', 'data_dir', 'image_size', 'image_channels')


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
  # Optimization, monitoring and checkpoints: one flag per TrainConfig field.
  for field in dataclasses.fields(config_lib.TrainConfig):
    _define_setting(field)
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


ARCHITECTURE_FLAGS = ('num_scales', 'num_blocks', 'feature_maps',
                       'flow_batch_norm', 'bn_momentum', 'bn_lag', 'alpha',
                       'dequantization', 'dequant_couplings',
                       'dequant_feature_maps', 'dequant_blocks')


def _define_setting(field):
  name, default, help_text = (config_lib.flag_name(field), field.default,
                              field.metadata['help'])
  if field.metadata['choices']:
    flags.DEFINE_enum(name, default, [c for c in field.metadata['choices'] if c],
                      help_text)
  elif field.type is bool:
    flags.DEFINE_bool(name, default, help_text)
  elif field.type is int:
    flags.DEFINE_integer(name, default, help_text)
  elif field.type is float:
    flags.DEFINE_float(name, default, help_text)
  else:  # A tuple of floats.
    flags.DEFINE_list(name, [f'{v:g}' for v in default], help_text)
  check = field.metadata['check']
  if check:
    def validate(value, name=name, check=check, field=field):
      try:
        problem = check(_setting_value(field, value))
      except ValueError as error:
        problem = str(error)
      if problem:
        raise flags.ValidationError(f'{problem}.')
      return True
    flags.register_validator(name, validate)


def _setting_value(field, value):
  return tuple(float(v) for v in value) if field.type is tuple else value


def flow_config(source, flag_values=flags.FLAGS):
  """FlowConfig for `source`: preset, then explicit architecture flags."""
  name = flag_values.preset or source.preset
  base = config_lib.PRESETS[name] if name else _default_config(source)
  overrides = {f: flag_values[f].value for f in ARCHITECTURE_FLAGS
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


def run_data_source(model_dir, split='eval', flag_values=flags.FLAGS):
  """The data set a run in `model_dir` trained on (its data.json), unless the
  data flags name another; `split='train'` puts the training split where the
  held-out one is (to score or code it)."""
  settings = {name: flag_values[name].value for name in DATA_FLAGS}
  stored = checkpoints.read_data_settings(model_dir)
  settings.update({k: v for k, v in stored.items() if not flag_values[k].present})
  source = data.load_dataset(settings['dataset'], settings['data_dir'],
                             settings['image_size'], settings['image_channels'])
  if split == 'train':
    source.eval, source.eval_split_name = source.train, 'train'
  return source


def train_config(flag_values=flags.FLAGS):
  return config_lib.TrainConfig(**{
      field.name: _setting_value(field, flag_values[config_lib.flag_name(field)].value)
      for field in dataclasses.fields(config_lib.TrainConfig)})


def model_dir(flag_values=flags.FLAGS):
  if flag_values.model_dir:
    return flag_values.model_dir
  name = flag_values.dataset.split(':')[0]
  return os.path.join('runs', name)
