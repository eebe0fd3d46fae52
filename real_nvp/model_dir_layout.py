"""The model directory's layout: what each file holds, config.json,
data.json and flags.txt, and the one listing of its checkpoints.

    {model_dir}/ckpt-N.index, ckpt-N.data-*   weights by path, optimizer, step
    {model_dir}/checkpoint                    TF's checkpoint state
    {model_dir}/config.json                   the FlowConfig of the checkpoints
    {model_dir}/data.json, flags.txt          the data settings and every flag
    {model_dir}/train.lock                    the writer (model_dir_lock.py)
    {model_dir}/corrupt_checkpoints/          unreadable checkpoints, moved aside
    {model_dir}/best/                         the best checkpoint (best_checkpoint.py)
"""

import dataclasses
import glob
import json
import os
import re

from real_nvp.config import FlowConfig
from real_nvp.storage import ModelDirError, write_atomically

__all__ = ['CheckpointMismatch', 'config_path', 'differences', 'read_config',
           'write_config', 'check_config', 'checkpoint_paths', 'has_checkpoint', 'step_of', 'write_run_settings',
           'read_data_settings', 'CONFIG_FILE', 'DATA_FILE', 'CORRUPT_DIR']

CONFIG_FILE = 'config.json'
DATA_FILE = 'data.json'
CORRUPT_DIR = 'corrupt_checkpoints'


class CheckpointMismatch(ModelDirError):
  """A checkpoint of another architecture."""


# --- the architecture -------------------------------------------------------------


def config_path(model_dir):
  """config.json of model_dir."""
  return os.path.join(model_dir, CONFIG_FILE)


def read_config(model_dir):
  """The FlowConfig stored in model_dir, or None."""
  path = config_path(model_dir)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return FlowConfig.from_json(f.read())
  except (ValueError, TypeError) as error:
    raise ModelDirError(f'{path} is not a valid model configuration ({error}). '
                        'Restore it, or remove it if the directory holds no '
                        'checkpoint.') from None


def write_config(model_dir, flow_config):
  write_atomically(config_path(model_dir), flow_config.to_json())


def differences(stored, requested):
  """The fields where two FlowConfigs differ, as one line."""
  return ', '.join(
      f'{field.name}: checkpoint {getattr(stored, field.name)!r} vs requested '
      f'{getattr(requested, field.name)!r}'
      for field in dataclasses.fields(FlowConfig)
      if getattr(stored, field.name) != getattr(requested, field.name))


def check_config(model_dir, flow_config):
  """Raises CheckpointMismatch if model_dir holds checkpoints of another
  architecture. A config.json without any checkpoint (a run that failed
  before its first checkpoint) holds nothing and is not a mismatch."""
  stored = read_config(model_dir)
  if stored is None or stored == flow_config or not has_checkpoint(model_dir):
    return
  raise CheckpointMismatch(
      f'{model_dir} holds a model of another architecture '
      f'({differences(stored, flow_config)}). Use another --model_dir, or the '
      'same architecture flags.')


def step_of(prefix):
  """N of a checkpoint prefix or name ckpt-N (-1 if it has none)."""
  match = re.search(r'-(\d+)$', prefix)
  return int(match.group(1)) if match else -1


def checkpoint_paths(model_dir):
  """Checkpoint prefixes in model_dir (those with an index file), newest first."""
  prefixes = [path[:-len('.index')]
              for path in glob.glob(os.path.join(glob.escape(model_dir), 'ckpt-*.index'))]
  return sorted(prefixes, key=step_of, reverse=True)


def has_checkpoint(model_dir):
  return bool(checkpoint_paths(model_dir))


def write_run_settings(model_dir, flags_text, data_settings):
  """flags.txt (every resolved flag) and data.json (what eval.py reads back)."""
  write_atomically(os.path.join(model_dir, 'flags.txt'), flags_text)
  write_atomically(os.path.join(model_dir, DATA_FILE),
                    json.dumps(data_settings, indent=2))


def read_data_settings(model_dir):
  path = os.path.join(model_dir, DATA_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)
