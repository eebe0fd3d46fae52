"""Training: learning on the digits, stability, resume, distribution, CLI errors."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import subprocess_env
from real_nvp import data, distribute, preset, wall_time
from real_nvp.config import TrainConfig
from real_nvp.train_lib import Trainer, TrainingDiverged

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_FLAGS = ['--num_scales=1', '--num_blocks=1', '--feature_maps=8', '--batch_size=16',
              '--eval_examples=64', '--num_samples=4', '--log_every_secs=0']


def _run_train(*args, check=True):
  result = subprocess.run([sys.executable, 'train.py', *args], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=600)
  if check:
    assert result.returncode == 0, result.stderr[-3000:]
  return result


def _trainer(tmp_path, steps, learning_rate=1e-3, **flow):
  source = data.load_dataset('digits')
  config = TrainConfig(train_steps=steps, batch_size=64, eval_every=0,
                       checkpoint_every=steps, learning_rate=learning_rate,
                       num_samples=16, log_every_secs=30.)
  flow_config = preset('digits', **{'num_blocks': 1, 'feature_maps': 16, **flow})
  return Trainer(distribute.get_strategy('mirrored'), source, flow_config,
                 config, str(tmp_path))


@pytest.mark.slow
def test_training_on_digits_beats_the_uniform_baseline(tmp_path):
  # 120 steps reach 2.29 (measured), well below the bar.
  trainer = _trainer(tmp_path, 120)
  held_out = trainer.train()
  # Uniform over 17 levels: log2(17) = 4.09 bits/dim.
  assert held_out < 2.6, held_out
  assert os.path.exists(tmp_path / 'samples' / 'step_120.png')
  # No retracing: one graph for the device loop, whatever its length, the
  # step or the data position, and one for evaluation, whatever the size of
  # the last batch.
  assert trainer.steps.loop.experimental_get_tracing_count() == 1
  assert trainer.evaluator.step.experimental_get_tracing_count() == 1


def _train_scalars(model_dir):
  """{(tag, step): value} of the train/ TensorBoard scalars, the rate excluded."""
  values = {}
  for name in os.listdir(os.path.join(model_dir, 'train')):
    for event in tf.compat.v1.train.summary_iterator(
        os.path.join(model_dir, 'train', name)):
      for value in event.summary.value:
        if value.tag != 'images_per_sec' and value.metadata.plugin_data.plugin_name \
            == 'scalars':
          values[value.tag, event.step] = float(tf.make_ndarray(value.tensor))
  return values


@pytest.mark.slow
def test_any_steps_per_loop_gives_bit_identical_runs(tmp_path):
  # 7 divides none of the boundaries: loops are cut at every summary (5),
  # checkpoint and evaluation (10) and at the end (23).
  runs = {}
  for steps_per_loop in (1, 7, 0):
    model_dir = tmp_path / str(steps_per_loop)
    trainer = _trainer(model_dir, 23, num_scales=1, num_blocks=1, feature_maps=8)
    trainer.cfg.steps_per_loop = steps_per_loop
    trainer.cfg.summary_every, trainer.cfg.checkpoint_every = 5, 10
    trainer.cfg.eval_every, trainer.cfg.eval_examples = 10, 32
    held_out = trainer.train()
    runs[steps_per_loop] = (held_out, _checkpoint_values(f'{model_dir}/ckpt-23'),
                            _train_scalars(model_dir), trainer.best.history,
                            sorted(os.listdir(model_dir)))
    assert trainer.steps.loop.experimental_get_tracing_count() == 1
  reference = runs[1]
  assert len(reference[2]) == 4 * 5  # 4 tags at steps 5, 10, 15, 20 and 23
  for steps_per_loop, run in runs.items():
    assert run[0] == reference[0], steps_per_loop
    assert run[1].keys() == reference[1].keys()
    for name in reference[1]:
      np.testing.assert_array_equal(run[1][name], reference[1][name], err_msg=name)
    assert run[2] == reference[2], steps_per_loop
    assert run[3] == reference[3] and run[4] == reference[4]


@pytest.mark.slow
def test_variational_dequantization_trains_on_digits(tmp_path):
  # 120 steps reach 2.28 (measured), well below the bar.
  trainer = _trainer(tmp_path, 120, dequantization='variational',
                     dequant_feature_maps=8)
  held_out = trainer.train()
  assert held_out < 2.6, held_out  # the uniform baseline is log2(17) = 4.09


def test_importance_weighted_objective_trains(tmp_path):
  trainer = _trainer(tmp_path, 40, num_scales=1, dequantization='variational',
                     dequant_feature_maps=4)
  trainer.cfg.train_dequant_samples = 3
  first = trainer.evaluate(64)
  assert trainer.train() < first


def test_high_learning_rate_stays_finite(tmp_path):
  trainer = _trainer(tmp_path, 100, learning_rate=0.05, num_scales=1)
  held_out = trainer.train()
  assert np.isfinite(held_out)
  assert all(np.all(np.isfinite(v.numpy())) for v in trainer.model.variables)


def test_nonfinite_steps_are_skipped_counted_and_stop_the_run(tmp_path):
  _trainer(tmp_path, 5, num_scales=1).train()  # leaves the good checkpoint ckpt-5
  trainer = _trainer(tmp_path, 50, num_scales=1)
  trainer.cfg.max_nonfinite = 3
  restore = trainer.state.restore
  statistics = []

  def restore_then_poison():
    step = restore()
    statistics.extend(v.numpy().copy() for v in trainer.model.non_trainable_variables)
    gain = trainer.model.weight_norm_gains[0]
    gain.assign(np.full(gain.shape, np.nan, np.float32))
    return step

  trainer.state.restore = restore_then_poison
  with pytest.raises(TrainingDiverged, match='3 consecutive non-finite steps'):
    trainer.train()
  assert int(trainer.steps.nonfinite_steps.numpy()) == 3
  for before, variable in zip(statistics, trainer.model.non_trainable_variables):
    np.testing.assert_array_equal(variable.numpy(), before)
  assert trainer.state.manager.latest_checkpoint.endswith('ckpt-5')


def _checkpoint_values(path):
  reader = tf.train.load_checkpoint(path)
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()
          if not name.startswith(('_CHECKPOINTABLE_OBJECT_GRAPH', 'save_counter'))}


@pytest.mark.slow
def test_sigterm_then_resume_equals_uninterrupted_run(tmp_path):
  # The variational dequantizer: its weights, Adam moments and BN averages
  # resume too (the uniform path is the same machinery without them).
  # Loops of 4 steps: the signal is answered at a loop boundary (step 12).
  steps = ['--train_steps=30', '--checkpoint_every=1000', '--eval_every=0',
           '--steps_per_loop=4', '--export_checkpoint=none',
           '--dequantization=variational', '--dequant_feature_maps=4',
           '--dequant_couplings=1']
  _run_train(*TINY_FLAGS, *steps, f'--model_dir={tmp_path}/full')

  interrupted = str(tmp_path / 'interrupted')
  process = subprocess.Popen(
      [sys.executable, 'train.py', *TINY_FLAGS, *steps, f'--model_dir={interrupted}'],
      cwd=ROOT, env=subprocess_env(), stderr=subprocess.PIPE, text=True)
  for line in process.stderr:
    if 'step 12/30' in line:
      process.send_signal(signal.SIGTERM)
      break
  process.communicate(timeout=300)
  assert process.returncode == 0
  stopped_at = int(tf.train.latest_checkpoint(interrupted).rsplit('-', 1)[1])
  assert 12 <= stopped_at < 30
  _run_train(*TINY_FLAGS, *steps, f'--model_dir={interrupted}')

  assert not os.path.exists(f'{tmp_path}/full/saved_model')  # --export_checkpoint=none
  full = _checkpoint_values(f'{tmp_path}/full/ckpt-30')
  resumed = _checkpoint_values(f'{interrupted}/ckpt-30')
  assert full.keys() == resumed.keys()
  for name in full:
    np.testing.assert_array_equal(resumed[name], full[name], err_msg=name)


@pytest.mark.parametrize('flag,message', [
    ('--dataset=cifar100', 'Unknown data set'),
    ('--dataset=folder:/nonexistent/images', 'no such folder'),
    ('--dataset=cifar10', 'tfds build cifar10'),
    ('--strategy=gpus', "value should be one of"),
])
def test_bad_flags_give_one_clear_error(tmp_path, flag, message):
  result = _run_train(flag, f'--data_dir={tmp_path}', f'--model_dir={tmp_path}/run',
                      check=False)
  assert result.returncode != 0
  assert message in result.stderr
  assert 'Traceback' not in result.stderr


def test_architecture_mismatch_is_named(tmp_path):
  stored = preset('digits', num_scales=1, num_blocks=1, feature_maps=8)
  (tmp_path / 'config.json').write_text(stored.to_json())
  (tmp_path / 'ckpt-4.index').write_bytes(b'')  # a checkpoint of that architecture
  result = _run_train(*TINY_FLAGS, '--train_steps=4', '--feature_maps=16',
                      f'--model_dir={tmp_path}', check=False)
  assert result.returncode != 0
  assert 'feature_maps: checkpoint 8 vs requested 16' in result.stderr
  assert 'Traceback' not in result.stderr


@pytest.mark.slow
def test_smoke_run_writes_the_model_directory_layout(tmp_path):
  result = _run_train('--flagfile=flags/smoke.cfg', f'--model_dir={tmp_path}')
  assert 'Held-out bits/dim' in result.stdout
  names = os.listdir(tmp_path)
  assert 'ckpt-20.index' in names and 'config.json' in names
  for folder in ('train', 'eval', 'samples', 'saved_model'):
    assert folder in names
  assert os.listdir(tmp_path / 'train') and os.listdir(tmp_path / 'eval')
  assert {'step_10.png', 'step_20.png'} <= set(os.listdir(tmp_path / 'samples'))
  # The last line splits the wall time; the phases add up to it.
  line = result.stdout.strip().splitlines()[-1]
  assert line.startswith('Wall time '), result.stdout[-1000:]
  wall = float(line.split()[2])
  phases = dict(part.rsplit(' ', 2)[:2] for part in line.split(': ', 1)[1].split(', '))
  assert set(phases) == {'start-up', 'tracing and compilation', 'training steps',
                         'evaluations', 'checkpoints and samples', 'export', 'other'}
  assert all(float(value) >= 0 for name, value in phases.items() if name != 'other')
  assert float(phases['tracing and compilation']) > 0 and float(phases['export']) > 0
  assert abs(sum(map(float, phases.values())) - wall) < 0.5  # rounded to 0.1 s each


def test_wall_time_phases_nest_and_add_up(monkeypatch):
  clock = iter([0., 1., 3., 7., 8., 10.])
  monkeypatch.setattr(wall_time.time, 'perf_counter', lambda: next(clock))
  timer = wall_time.WallTime()  # since 0
  with timer.phase(wall_time.EVALUATIONS):  # 1 .. 8
    with timer.phase(wall_time.TRACING):  # 3 .. 7
      pass
  summary = timer.summary()  # at 10
  assert summary['wall'] == 10.
  assert summary[wall_time.TRACING] == 4. and summary[wall_time.EVALUATIONS] == 3.
  assert summary['other'] == 3.
