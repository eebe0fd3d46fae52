"""Command-line flags shared by train.py and eval.py, defined in one place.

Architecture flags left unset take the data set's preset (paper §4.1); see
`python train.py --helpfull`. Flag files in flags/ carry the paper's runs.
The training flags are TrainConfig's fields, checked when they are parsed
(a bad value stops the program with the flag and the reason, before
anything is written). This module imports no TensorFlow, so that an entry
point parses its flags first (`parse_before_tensorflow`).
"""

import dataclasses
import os

from absl import app, flags

from real_nvp import config as config_lib
from real_nvp.tfds_sets import TFDS_DATASETS

__all__ = ['define_flags', 'parse_before_tensorflow', 'define_strategy_flag',
           'define_train_settings', 'define_architecture_flags', 'architecture_overrides',
           'flow_config', 'train_config', 'model_dir', 'DATA_FLAGS', 'ARCHITECTURE_FLAGS',
           'run_data_source']

DATA_FLAGS = ('dataset', 'data_dir', 'image_size', 'image_channels')


def define_flags():
  """Defines every flag (all optional, so that tests can import them)."""
  # Data.
  flags.DEFINE_string('dataset', 'digits',
                      'digits | npz:PATH | folder:PATH | ' +
                      ' | '.join(sorted(TFDS_DATASETS)))
  flags.DEFINE_string('data_dir', None, 'TFDS data directory (prepared offline).')
  flags.DEFINE_integer('image_size', 32, 'Side of the square images of folder:PATH.')
  flags.DEFINE_integer('image_channels', 3, 'Channels (1 or 3) of folder:PATH.')
  # Run.
  flags.DEFINE_string('model_dir', None,
                      'Checkpoints, summaries, samples and the SavedModel; '
                      'default runs/<dataset>.')
  define_strategy_flag()
  # Optimization, monitoring and checkpoints: one flag per TrainConfig field.
  define_train_settings()
  # Architecture (unset: the data set's preset).
  flags.DEFINE_enum('preset', None, sorted(config_lib.PRESETS),
                    'Architecture preset; default: the data set\'s.')
  define_architecture_flags()


def parse_before_tensorflow(argv):
  """For an entry point run as a script: parses `argv` before the script
  imports TensorFlow (~6 s), so that --help or a bad flag answers at once,
  in absl's words (app.run parses them again)."""
  app.define_help_flags()
  app.parse_flags_with_usage(argv)


def define_strategy_flag():
  flags.DEFINE_enum('strategy', 'mirrored', config_lib.STRATEGIES,
                    'tf.distribute strategy.')


def define_train_settings(names=None):
  """The flags of TrainConfig's fields (`names`: only these)."""
  for field in dataclasses.fields(config_lib.TrainConfig):
    if names is None or config_lib.flag_name(field) in names:
      _define_setting(field)


def define_architecture_flags():
  """The flags of FlowConfig's fields; unset (None), they leave the preset's."""
  for field in config_lib.ARCHITECTURE_FIELDS:
    _define_setting(field, default=None)


def architecture_overrides(flag_values=flags.FLAGS):
  """{field: value} of the architecture flags that are set."""
  return {f: flag_values[f].value for f in ARCHITECTURE_FLAGS
          if flag_values[f].value is not None}


# Architecture flags: FlowConfig's fields (unset: the data set's preset).
ARCHITECTURE_FLAGS = tuple(field.name for field in config_lib.ARCHITECTURE_FIELDS)


def _define_setting(field, default=dataclasses.MISSING):
  """The flag of a TrainConfig or FlowConfig field (`default`: the field's)."""
  name, help_text = config_lib.flag_name(field), field.metadata['help']
  default = field.default if default is dataclasses.MISSING else default
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
  return base.replace(image_shape=source.image_shape, levels=source.levels,
                      **architecture_overrides(flag_values))


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
  from real_nvp import data, model_dir_layout  # pylint: disable=g-import-not-at-top
  settings = {name: flag_values[name].value for name in DATA_FLAGS}
  stored = model_dir_layout.read_data_settings(model_dir)
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
