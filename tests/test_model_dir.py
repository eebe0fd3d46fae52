"""The model directory under faults and bad input: one writer, finite
checkpoints, fallback from damaged checkpoints, atomic exports, checked flags."""

import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from real_nvp import (best_checkpoint, checkpoints, data, distribute, export,
                      model_dir_layout, preset, train_lib)
from real_nvp.storage import ModelDirError, StorageError
from real_nvp.model_dir_lock import ModelDirLock
from real_nvp.config import TrainConfig
from real_nvp.train_lib import Trainer, TrainingDiverged
from conftest import TINY, tiny_trainer as _trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
def _env():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  env.pop('TF_CONFIG', None)
  return env


def _dead_pid():
  process = subprocess.Popen([sys.executable, '-c', 'pass'])
  process.wait()
  return process.pid


# --- one writer ---------------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
  with ModelDirLock(str(tmp_path)):
    with pytest.raises(ModelDirError, match=f'in use by another training run.*pid {os.getpid()}'):
      ModelDirLock(str(tmp_path)).acquire()
  assert not os.path.exists(tmp_path / 'train.lock')  # released


def test_train_py_refuses_a_directory_in_use(tmp_path):
  sleeper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])
  try:
    (tmp_path / 'train.lock').write_text(
        f'{{"host": "{os.uname().nodename}", "pid": {sleeper.pid}, "started": "x"}}')
    result = subprocess.run([sys.executable, 'train.py', f'--model_dir={tmp_path}',
                             '--train_steps=2'], cwd=ROOT, env=_env(),
                            capture_output=True, text=True, timeout=300)
  finally:
    sleeper.kill()
  assert result.returncode != 0
  assert f'pid {sleeper.pid}' in result.stderr and 'Traceback' not in result.stderr
  assert sorted(os.listdir(tmp_path)) == ['train.lock']  # nothing written


def test_a_stale_lock_is_taken_over(tmp_path, caplog):
  pid = _dead_pid()
  (tmp_path / 'train.lock').write_text(
      f'{{"host": "{os.uname().nodename}", "pid": {pid}, "started": "x"}}')
  with caplog.at_level(logging.WARNING), ModelDirLock(str(tmp_path)):
    assert f'"pid": {os.getpid()}' in (tmp_path / 'train.lock').read_text()
  assert 'stale lock' in caplog.text and str(pid) in caplog.text


# --- finite checkpoints ---------------------------------------------------------------


def test_a_nonfinite_update_is_skipped_and_never_checkpointed(tmp_path):
  _trainer(tmp_path, 4).train()  # ckpt-2, ckpt-4: good
  trainer = _trainer(tmp_path, 40, max_nonfinite=5)
  restore = trainer.state.restore

  def restore_then_break_the_learning_rate():
    step = restore()
    trainer.steps.optimizer._learning_rate = float('nan')  # finite loss and gradient
    return step

  trainer.state.restore = restore_then_break_the_learning_rate
  with pytest.raises(TrainingDiverged, match='ckpt-4') as raised:
    trainer.train()
  assert int(trainer.steps.nonfinite_steps.numpy()) == 5
  assert model_dir_layout.checkpoint_paths(str(tmp_path)) == [
      str(tmp_path / 'ckpt-4'), str(tmp_path / 'ckpt-2')]
  named = str(raised.value).split('checkpoint is ')[1].split('.')[0]
  reader = tf.train.load_checkpoint(named)
  for name in reader.get_variable_to_shape_map():
    value = reader.get_tensor(name)
    if getattr(value, 'dtype', np.dtype(object)).kind == 'f':
      assert np.all(np.isfinite(value)), name
  assert all(np.all(np.isfinite(v.numpy())) for v in trainer.model.variables)


# --- damaged checkpoints and leftovers ------------------------------------------------


@pytest.mark.parametrize('damage', ['truncate_data', 'garbage_index'])
def test_an_unreadable_newest_checkpoint_falls_back(tmp_path, caplog, damage):
  _trainer(tmp_path, 4).train()
  newest = str(tmp_path / 'ckpt-4')
  if damage == 'truncate_data':
    data_file = newest + '.data-00000-of-00001'
    with open(data_file, 'r+b') as f:
      f.truncate(os.path.getsize(data_file) // 3)
  else:
    (tmp_path / 'ckpt-4.index').write_bytes(b'not an index' * 10)
  with caplog.at_level(logging.WARNING):  # eval.py's path: read-only fallback
    _, step, path = checkpoints.restore_model(str(tmp_path))
  assert (step, path) == (2, str(tmp_path / 'ckpt-2'))
  assert 'ckpt-4 cannot be read' in caplog.text
  with pytest.raises(ModelDirError, match='ckpt-4 cannot be read'):
    checkpoints.restore_model(str(tmp_path), newest)
  caplog.clear()
  trainer = _trainer(tmp_path, 6)
  with caplog.at_level(logging.WARNING):
    assert trainer.state.restore() == 2
  assert 'ckpt-4 cannot be read' in caplog.text and 'corrupt_checkpoints' in caplog.text
  assert os.path.exists(tmp_path / 'corrupt_checkpoints' / 'ckpt-4.index')
  trainer.train()
  assert model_dir_layout.checkpoint_paths(str(tmp_path))[0] == str(tmp_path / 'ckpt-6')


def test_leftovers_of_interrupted_saves_are_removed(tmp_path):
  _trainer(tmp_path, 2).train()
  (tmp_path / 'ckpt-7_temp').mkdir()
  (tmp_path / 'ckpt-7_temp' / 'part').write_text('x')
  (tmp_path / 'saved_model.export-tmp-123').mkdir()
  _trainer(tmp_path, 2).state.restore()
  assert not os.path.exists(tmp_path / 'ckpt-7_temp')
  assert not os.path.exists(tmp_path / 'saved_model.export-tmp-123')


def test_an_interrupted_export_leaves_the_previous_one_or_none(tmp_path, monkeypatch):
  trainer = _trainer(tmp_path, 1)
  export_dir = str(tmp_path / 'saved_model')
  real_save = tf.saved_model.save

  def save_then_die(module, directory, signatures):
    os.makedirs(directory)
    open(os.path.join(directory, 'saved_model.pb'), 'w').close()  # half written
    raise KeyboardInterrupt

  monkeypatch.setattr(tf.saved_model, 'save', save_then_die)
  with pytest.raises(KeyboardInterrupt):
    export.export_saved_model(trainer.model, export_dir)
  def exports():
    return sorted(name for name in os.listdir(tmp_path) if 'saved_model' in name)

  assert exports() == []
  monkeypatch.setattr(tf.saved_model, 'save', real_save)
  export.export_saved_model(trainer.model, export_dir)
  monkeypatch.setattr(tf.saved_model, 'save', save_then_die)
  with pytest.raises(KeyboardInterrupt):
    export.export_saved_model(trainer.model, export_dir)
  assert exports() == ['saved_model']
  assert int(tf.saved_model.load(export_dir).levels) == 17  # the complete one


def test_a_full_disk_stops_with_the_directory_and_last_checkpoint(tmp_path, monkeypatch):
  _trainer(tmp_path, 2).train()
  trainer = _trainer(tmp_path, 6)
  trainer.state.restore()

  def full(*args, **kwargs):
    raise tf.errors.ResourceExhaustedError(None, None, 'No space left on device')

  monkeypatch.setattr(trainer.state.manager, 'save', full)
  monkeypatch.setattr(trainer.state, 'restore', lambda: 2)
  with pytest.raises(StorageError) as raised:
    trainer.train()
  message = str(raised.value)
  assert 'disk is full' in message and str(tmp_path) in message
  assert str(tmp_path / 'ckpt-2') in message and '\n' not in message


def test_a_config_without_checkpoints_is_not_an_architecture(tmp_path):
  model_dir_layout.write_config(str(tmp_path), preset('digits', num_blocks=3))
  _trainer(tmp_path, 2).train()
  assert model_dir_layout.read_config(str(tmp_path)) == preset('digits', **TINY)


def test_a_checkpoint_of_another_architecture_is_named(tmp_path):
  _trainer(tmp_path / 'a', 2).train()
  other = Trainer(distribute.get_strategy('one_device'), data.load_dataset('digits'),
                  preset('digits', **{**TINY, 'feature_maps': 8}),
                  TrainConfig(train_steps=2, batch_size=16, eval_every=0,
                              checkpoint_every=2, eval_examples=16, num_samples=4),
                  str(tmp_path / 'b'))
  other.train()
  with pytest.raises(model_dir_layout.CheckpointMismatch, match='feature_maps: checkpoint 8 vs'):
    checkpoints.restore_model(str(tmp_path / 'a'), str(tmp_path / 'b' / 'ckpt-2'))
  # Without its config beside it, the tensors that differ are named.
  os.remove(tmp_path / 'b' / 'config.json')
  with pytest.raises(model_dir_layout.CheckpointMismatch, match=r'checkpoint \[.*\] vs model'):
    checkpoints.restore_model(str(tmp_path / 'a'), str(tmp_path / 'b' / 'ckpt-2'))


# --- flags ---------------------------------------------------------------------------


# Every training flag's check comes from its TrainConfig field (tested below
# for each kind); two end-to-end cases show train.py stops before writing.
@pytest.mark.parametrize('flag', ['--learning_rate=nan', '--checkpoint_every=0'])
def test_bad_flag_values_are_refused_before_anything_is_written(tmp_path, flag):
  result = subprocess.run([sys.executable, 'train.py', flag,
                           f'--model_dir={tmp_path}/run'], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert f'flag {flag}' in result.stderr and 'Traceback' not in result.stderr
  assert not os.path.exists(tmp_path / 'run')


@pytest.mark.parametrize('command,flag', [
    (['train.py'], '--strategy=bogus'), (['eval.py'], '--dequant_samples=0'),
    (['-m', 'real_nvp.compress', 'encode'], '--latent_precision=x'),
    (['-m', 'real_nvp.toy'], '--steps=0'), (['train.py'], '--helpshort')])
def test_the_entry_points_answer_flags_before_importing_tensorflow(command, flag):
  """A bad flag, or --help, is answered in absl's words without the ~6 s of
  importing TensorFlow (-X importtime lists every module imported)."""
  result = subprocess.run([sys.executable, '-X', 'importtime', *command, flag], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert 'Flags parsing error' in result.stderr or '--helpfull' in result.stdout
  imported = {line.split('|')[-1].strip() for line in result.stderr.splitlines()
              if line.startswith('import time:')}
  assert 'real_nvp.cli_flags' in imported and 'tensorflow' not in imported


@pytest.mark.parametrize('setting,message', [
    (dict(train_steps=-1), '--train_steps=-1: must be >= 1'),
    (dict(learning_rate=-0.01), '--learning_rate=-0.01: must be finite and > 0'),
    (dict(learning_rate=float('nan')), '--learning_rate=nan: must be finite'),
    (dict(batch_size=0), '--batch_size=0: must be >= 1'),
    (dict(batch_size=-4), '--batch_size=-4: must be >= 1'),
    (dict(summary_every=0), '--summary_every=0: must be >= 1'),
    (dict(keep_checkpoints=0), '--keep_checkpoints=0: must be >= 1'),
    (dict(eval_every=-1), '--eval_every=-1: must be >= 0'),
    (dict(sample_temperatures=(1., float('inf'))), 'finite temperatures'),
    (dict(jit_compile=False, export_checkpoint='first'), '--export_checkpoint=.first.'),
])
def test_train_config_checks_its_values(setting, message):
  with pytest.raises(ValueError, match=message):
    TrainConfig(**setting)


def test_train_config_checks_its_choices():
  with pytest.raises(ValueError, match=r'--mixed_precision=.float8.: must be one of'):
    TrainConfig(mixed_precision='float8')


# --- progress ------------------------------------------------------------------------


def test_progress_rate_counts_training_time_only(monkeypatch, caplog):
  clock = [0.]
  monkeypatch.setattr(train_lib.time, 'time', lambda: clock[0])
  progress = train_lib._Progress(TrainConfig(train_steps=10, batch_size=8,
                                             log_every_secs=0.), start=0)
  counters = {'window_bpd_sum': 3., 'window_grad_norm_sum': 6., 'window_finite': 3}
  with caplog.at_level(logging.INFO, logger='absl'):
    previous = 0
    for step in (1, 3, 5, 6):  # device loops of 1 (it traces), 2, 2 and 1 steps
      progress.start_loop()
      clock[0] += 2. * (step - previous)  # 8 images in 2 s a step
      progress.end_loop(step - previous)
      progress.log(step, counters)
      previous = step
      if step == 3:
        clock[0] += 500.  # a held-out evaluation
  lines = [r.getMessage() for r in caplog.records if 'img/s' in r.getMessage()]
  assert lines and all(' 4.0 img/s' in line and 'bits/dim 1.0000' in line
                       for line in lines), lines
  summary = progress.summary(counters)
  assert summary['images_per_sec'] == pytest.approx(4.)
  assert (summary['bits_per_dim'], summary['grad_norm']) == (1., 2.)


# --- the best checkpoint ------------------------------------------------------------


def test_best_checkpoint_survives_rotation_and_resume_and_is_exported(tmp_path):
  trainer = _trainer(tmp_path, 8, checkpoint_every=1, eval_every=2, keep_checkpoints=2)
  values = iter([3.0, 2.0, 2.5, 2.6, 2.7, 2.8])  # held-out bits/dim of each evaluation
  trainer.evaluate = lambda num_examples=None: next(values)
  trainer.train()
  assert model_dir_layout.checkpoint_paths(str(tmp_path)) == [
      str(tmp_path / 'ckpt-8'), str(tmp_path / 'ckpt-7')]  # rotation
  path, step, value = best_checkpoint.best_checkpoint(str(tmp_path))
  assert (path, step, value) == (str(tmp_path / 'best' / 'ckpt-4'), 4, 2.0)
  assert best_checkpoint.resolve_checkpoint(str(tmp_path), 'best') == path
  # The best checkpoint holds the weights of step 4.
  _, restored_step, _ = checkpoints.restore_model(str(tmp_path), path)
  assert restored_step == 4
  # Resumed with more steps, the record goes on from where it was.
  resumed = _trainer(tmp_path, 12, checkpoint_every=1, eval_every=2, keep_checkpoints=2)
  resumed.evaluate = lambda num_examples=None: next(values)
  resumed.train()
  assert resumed.best.best == (4, 2.0)
  assert [s for s, _ in resumed.best.history] == [2, 4, 6, 8, 10, 12]


def test_early_stopping_stops_after_evaluations_without_improvement(tmp_path, caplog):
  trainer = _trainer(tmp_path, 40, checkpoint_every=4, eval_every=2,
                     early_stopping_evals=2)
  values = iter([3.0, 2.0, 2.1, 2.2, 1.0])
  trainer.evaluate = lambda num_examples=None: next(values)
  with caplog.at_level(logging.INFO, logger='absl'):
    assert trainer.train() == 2.2
  assert int(trainer.step.numpy()) == 8
  assert 'Early stopping at step 8: 2 held-out evaluations without improvement' in caplog.text
  assert model_dir_layout.checkpoint_paths(str(tmp_path))[0] == str(tmp_path / 'ckpt-8')
  assert trainer.best.best == (4, 2.0)


@pytest.mark.slow
def test_train_py_exports_the_best_checkpoint(tmp_path):
  result = subprocess.run(
      [sys.executable, 'train.py', '--flagfile=flags/smoke.cfg', f'--model_dir={tmp_path}',
       '--eval_every=10', '--train_steps=20'], cwd=ROOT, env=_env(),
      capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  _, step, value = best_checkpoint.best_checkpoint(str(tmp_path))
  assert f'best {value:.4f} at step {step}' in result.stdout
  assert f'the SavedModel holds step {step}' in result.stdout
  assert os.path.exists(tmp_path / 'saved_model' / 'saved_model.pb')
