"""The best checkpoint and the run's intent under crashes and damage: a crash
at any point of the best's update leaves a directory that training and
eval.py reconcile; a damaged best is found at start; an early-stopped run is
not continued by running it again; a directory with no readable checkpoint
stops with one line."""

import glob
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import TINY, tiny_trainer
from real_nvp import best_checkpoint, checkpoints, data, model_dir_layout
from real_nvp.best_checkpoint import BestCheckpoint
from real_nvp.storage import ModelDirError
from real_nvp.model_dir_lock import ModelDirLock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Crash(BaseException):
  """A kill -9 at this point: nothing after it runs, no handler sees it."""


def _stub_evaluations(trainer, values, on_call=None):
  values = iter(values)

  def evaluate(num_examples=None):
    value = next(values)
    if on_call:
      on_call(value)
    return value

  trainer.evaluate = evaluate


def _best_files(model_dir):
  return sorted(os.listdir(os.path.join(model_dir, 'best')))


def _crash_during_the_second_best(model_dir, point, monkeypatch):
  """Trains 4 steps (ckpt-2, ckpt-4), evaluations 3.0 at step 2 and 2.0 at
  step 4; the update of the best to step 4 is cut at `point`."""
  trainer = tiny_trainer(model_dir, 4, eval_every=2)
  best = trainer.best

  def arm(value):
    if value != 2.0:
      return
    def crash(*args, **kwargs):
      raise _Crash(point)
    if point == 'write':
      def write_part(prefix):
        with open(prefix + '.data-00000-of-00001', 'wb') as f:
          f.write(b'half a checkpoint')
        raise _Crash(point)
      monkeypatch.setattr(best._checkpoint, 'write', write_part)
    else:
      name = {'switch': '_write_record', 'delete': '_delete',
              'unpend': '_remove_pending'}[point]
      monkeypatch.setattr(best, name, crash)

  _stub_evaluations(trainer, [3.0, 2.0], arm)
  with pytest.raises(_Crash):
    trainer.train()


@pytest.mark.parametrize('point', ['write', 'switch', 'delete', 'unpend', 'old_order'])
def test_a_crash_at_any_point_of_the_best_update_is_reconciled(
    tmp_path, point, monkeypatch, caplog):
  model_dir = str(tmp_path)
  _crash_during_the_second_best(model_dir, 'switch' if point == 'old_order' else point,
                                monkeypatch)
  best_dir = tmp_path / 'best'
  if point == 'old_order':
    # The previous version deleted the old best before recording the new one,
    # and kept no pending record: best.json names a deleted checkpoint. The
    # unrecorded one is given other weights (step 2's), to see them put back.
    for path in glob.glob(str(best_dir / 'ckpt-2.*')) + [str(best_dir / 'pending.json')]:
      os.remove(path)
    for suffix in ('.index', '.data-00000-of-00001'):
      shutil.copy(tmp_path / f'ckpt-2{suffix}', best_dir / f'ckpt-4{suffix}')
  expected = ('ckpt-2', 3.0) if point == 'write' else ('ckpt-4', 2.0)

  # eval.py reads the directory as it is, without changing it.
  if point == 'old_order':
    with pytest.raises(ModelDirError, match='ckpt-2.*not on disk.*ckpt-4, which no record values'):
      best_checkpoint.resolve_checkpoint(model_dir, 'best')
  else:
    before = _best_files(model_dir)
    assert best_checkpoint.resolve_checkpoint(model_dir, 'best') == str(best_dir / expected[0])
    assert _best_files(model_dir) == before

  # Training reconciles it: the same best, a clean best/, then trains on.
  resumed = tiny_trainer(model_dir, 6, eval_every=2)
  restored = {}
  real_loop = resumed._loop

  def loop(start):
    restored['weights'] = [v.numpy() for v in resumed.model.variables]
    return real_loop(start)

  resumed._loop = loop
  _stub_evaluations(resumed, ([2.0] if point == 'old_order' else []) + [3.5])
  with caplog.at_level(logging.INFO, logger='absl'):
    resumed.train()
  path, step, value = best_checkpoint.best_checkpoint(model_dir)
  assert (os.path.basename(path), value) == expected
  assert _best_files(model_dir) == sorted(
      ['best.copy.json', 'best.json', f'{expected[0]}.index',
       f'{expected[0]}.data-00000-of-00001'])
  assert checkpoints.restore_model(model_dir, path)[1] == (2 if point == 'old_order' else step)
  if point == 'old_order':
    assert 'Adopted' in caplog.text
    # The re-evaluation put the run's own weights (step 4's) back.
    reference = tiny_trainer(tmp_path / 'reference', 4)
    reference_dir = str(tmp_path / 'reference')
    shutil.copytree(model_dir, reference_dir, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns('best', 'ckpt-6*', 'checkpoint'))
    reference.state.restore()
    for mine, theirs in zip(restored['weights'], reference.model.variables):
      np.testing.assert_array_equal(mine, theirs.numpy())
  history = [s for s, _ in resumed.best.history]
  assert history == ([2, 6] if point == 'write' else [2, 4, 6])


def test_a_damaged_best_is_found_at_start(tmp_path, caplog):
  model_dir = str(tmp_path)
  trainer = tiny_trainer(model_dir, 4, eval_every=2)
  _stub_evaluations(trainer, [3.0, 2.0])
  trainer.train()
  data_file = str(tmp_path / 'best' / 'ckpt-4.data-00000-of-00001')
  with open(data_file, 'r+b') as f:
    f.truncate(os.path.getsize(data_file) // 3)
  resumed = tiny_trainer(model_dir, 6, eval_every=2)
  with caplog.at_level(logging.WARNING):
    resumed.state.restore()  # at start, before any training
  assert 'ckpt-4 cannot be read' in caplog.text
  assert 'no usable best checkpoint now' in caplog.text
  assert os.path.exists(tmp_path / 'corrupt_checkpoints' / 'best-ckpt-4.index')
  _stub_evaluations(resumed, [2.5])
  resumed.train()
  path, step, value = best_checkpoint.best_checkpoint(model_dir)
  assert (path, step, value) == (str(tmp_path / 'best' / 'ckpt-6'), 6, 2.5)


def test_an_early_stopped_run_is_not_continued_by_running_it_again(tmp_path, caplog):
  model_dir = str(tmp_path)
  settings = dict(checkpoint_every=4, eval_every=2, early_stopping_evals=2)
  trainer = tiny_trainer(model_dir, 40, **settings)
  _stub_evaluations(trainer, [3.0, 2.0, 2.1, 2.2])
  trainer.train()
  assert trainer.outcome == 'early_stopped' and int(trainer.step.numpy()) == 8

  again = tiny_trainer(model_dir, 40, **settings)
  _stub_evaluations(again, [])  # any evaluation would fail
  with caplog.at_level(logging.INFO, logger='absl'):
    assert again.train() is None
  assert again.outcome == 'stopped_before' and int(again.step.numpy()) == 8
  assert 'ended by early stopping at step 8' in caplog.text
  assert model_dir_layout.checkpoint_paths(model_dir)[0] == str(tmp_path / 'ckpt-8')

  # train.py says so and exits 0, exporting the best if no export exists yet.
  result = subprocess.run(
      [sys.executable, 'train.py', f'--model_dir={model_dir}', '--train_steps=40',
       '--batch_size=16', '--eval_every=2', '--checkpoint_every=4',
       '--early_stopping_evals=2'] + [f'--{k}={v}' for k, v in TINY.items()],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'Nothing to do: early stopping ended this run at step 8' in result.stdout
  assert os.path.exists(tmp_path / 'saved_model' / 'saved_model.pb')

  onward = tiny_trainer(model_dir, 10, **{**settings, 'train_past_early_stop': True})
  _stub_evaluations(onward, [1.0])
  onward.train()
  assert onward.outcome == 'finished' and int(onward.step.numpy()) == 10
  assert onward.best.best == (10, 1.0) and onward.best.early_stopped_at is None


def _contents(folder):
  return {str(path.relative_to(folder)): path.read_bytes()
          for path in sorted(folder.rglob('*')) if path.is_file()}


def test_a_directory_without_a_readable_checkpoint_stops_in_one_line(tmp_path):
  model_dir = str(tmp_path)
  trainer = tiny_trainer(model_dir, 2, eval_every=2)
  _stub_evaluations(trainer, [3.0])
  trainer.train()
  (tmp_path / 'ckpt-2.index').write_bytes(b'not an index' * 10)
  before = _contents(tmp_path)
  with pytest.raises(ModelDirError) as raised:
    tiny_trainer(model_dir, 4).train(
        on_restored=lambda: (tmp_path / 'flags.txt').write_text('the new run'))
  assert _contents(tmp_path) == before  # no flags.txt, no new event file: nothing
  message = str(raised.value)
  assert 'None of the 1 checkpoint(s)' in message and '--restart_if_unreadable' in message
  assert '\n' not in message
  assert os.path.exists(tmp_path / 'ckpt-2.index')  # nothing moved
  assert best_checkpoint.best_checkpoint(model_dir) is not None

  restarted = tiny_trainer(model_dir, 2, restart_if_unreadable=True)
  assert restarted.state.restore() == 0
  assert os.path.exists(tmp_path / 'corrupt_checkpoints' / 'ckpt-2.index')
  # The earlier run's best is set aside: this run keeps no record of it.
  assert restarted.best.best is None and restarted.best.history == []
  assert not os.listdir(tmp_path / 'best')
  assert glob.glob(str(tmp_path / 'best.set-aside-*' / 'best.json'))


@pytest.mark.parametrize('content,message', [
    ('', 'it is empty'), ('garbage\x00', "it holds 'garbage"),
    ('{"pid": 1}', 'it holds'),
])
def test_a_damaged_lock_is_named_with_its_content(tmp_path, content, message):
  (tmp_path / 'train.lock').write_text(content)
  with pytest.raises(ModelDirError, match='not a valid lock') as raised:
    ModelDirLock(str(tmp_path)).acquire()
  assert message in str(raised.value) and 'remove the file' in str(raised.value)


@pytest.mark.parametrize('levels', [np.array([17]), np.array('17'), np.array(17.5),
                                    np.array(300)])
def test_npz_levels_of_the_wrong_kind_name_the_file_and_key(tmp_path, levels):
  path = tmp_path / 'images.npz'
  np.savez(path, images=np.zeros([20, 4, 4, 1], np.uint8), levels=levels)
  with pytest.raises(data.DataError, match=rf'{path}\[levels\] must be'):
    data.load_dataset(f'npz:{path}')


def test_a_non_writer_loads_the_record_read_only(tmp_path):
  model_dir = str(tmp_path)
  trainer = tiny_trainer(model_dir, 4, eval_every=2)
  _stub_evaluations(trainer, [3.0, 2.0])
  trainer.train()
  before = _best_files(model_dir)
  worker = BestCheckpoint(trainer.state.checkpoint, model_dir,
                          str(tmp_path / '.worker_1_best_tmp'))
  worker.resume(4)
  assert worker.best == (4, 2.0) and worker.history == [(2, 3.0), (4, 2.0)]
  assert _best_files(model_dir) == before


def _two_bests(model_dir, **settings):
  """Trains 4 steps, evaluations 3.0 at step 2 and 2.0 at step 4 (the best)."""
  trainer = tiny_trainer(model_dir, 4, eval_every=2, **settings)
  _stub_evaluations(trainer, [3.0, 2.0])
  trainer.train()
  return trainer


def test_the_old_best_is_deleted_index_first(tmp_path, monkeypatch):
  trainer = _two_bests(str(tmp_path))
  best = trainer.best
  for suffix in ('.index', '.data-00000-of-00001'):
    shutil.copy(tmp_path / f'ckpt-2{suffix}', tmp_path / 'best' / f'ckpt-2{suffix}')
  removed = []
  monkeypatch.setattr(os, 'remove', lambda path: removed.append(os.path.basename(path)))
  best._delete('ckpt-2')
  assert removed == ['ckpt-2.index', 'ckpt-2.data-00000-of-00001']


@pytest.mark.parametrize('left', ['.index', '.data-00000-of-00001'])
def test_a_cut_delete_of_the_old_best_is_removed_quietly(tmp_path, left, caplog):
  """'.data…' is what a delete cut short leaves now; '.index' what the
  previous order (data first) left: neither is reported as damage."""
  model_dir = str(tmp_path)
  _two_bests(model_dir)
  shutil.copy(tmp_path / f'ckpt-2{left}', tmp_path / 'best' / f'ckpt-2{left}')
  resumed = tiny_trainer(model_dir, 4, eval_every=2)
  with caplog.at_level(logging.INFO, logger='absl'):
    resumed.state.restore()
  assert not os.path.exists(tmp_path / 'corrupt_checkpoints')
  assert 'cannot be read' not in caplog.text
  assert _best_files(model_dir) == ['best.copy.json', 'best.json', 'ckpt-4.data-00000-of-00001',
                                    'ckpt-4.index']
  assert resumed.best.best == (4, 2.0)


@pytest.mark.parametrize('copy', ['kept', 'garbage'])
def test_a_garbage_record_keeps_the_best_and_the_early_stop(tmp_path, copy, caplog):
  model_dir = str(tmp_path)
  settings = dict(checkpoint_every=4, eval_every=2, early_stopping_evals=2)
  trainer = tiny_trainer(model_dir, 40, **settings)
  _stub_evaluations(trainer, [3.0, 2.0, 2.1, 2.2])
  trainer.train()
  (tmp_path / 'best' / 'best.json').write_text('{"checkpoint": "ckpt-4", "step": "x"')
  if copy == 'garbage':
    (tmp_path / 'best' / 'best.copy.json').write_text('{"checkpoint": 4}')

  # eval.py's reading: the best is found (from the copy) or named as unvalued.
  if copy == 'kept':
    assert best_checkpoint.best_checkpoint(model_dir)[1:] == (4, 2.0)
  else:
    with pytest.raises(ModelDirError, match='ckpt-4, which no record values'):
      best_checkpoint.resolve_checkpoint(model_dir, 'best')

  again = tiny_trainer(model_dir, 10, **settings)
  _stub_evaluations(again, [] if copy == 'kept' else [2.0, 2.5])
  with caplog.at_level(logging.INFO, logger='absl'):
    again.train()
  assert glob.glob(str(tmp_path / 'best.set-aside-*' / 'best.json'))  # nothing lost
  lines = [line for line in caplog.text.splitlines() if 'best.json cannot be read' in line]
  assert len(lines) == 1
  if copy == 'kept':
    assert 'its copy best.copy.json is used' in lines[0]
    assert again.outcome == 'stopped_before' and int(again.step.numpy()) == 8
    assert again.best.history == [(2, 3.0), (4, 2.0), (6, 2.1), (8, 2.2)]
  else:
    assert 'evaluated again' in lines[0] and 'early stop is lost' in lines[0]
    # The readable best was evaluated again and kept; the run went on.
    assert again.outcome == 'finished' and again.best.best == (4, 2.0)
  assert best_checkpoint.best_checkpoint(model_dir)[1:] == (4, 2.0)


def test_a_garbage_pending_record_is_set_aside(tmp_path, caplog):
  model_dir = str(tmp_path)
  _two_bests(model_dir)
  (tmp_path / 'best' / 'pending.json').write_text('[1, 2]')
  resumed = tiny_trainer(model_dir, 4, eval_every=2)
  with caplog.at_level(logging.WARNING):
    resumed.state.restore()
  assert 'pending.json cannot be read (not a JSON object)' in caplog.text
  assert resumed.best.best == (4, 2.0)
  assert not os.path.exists(tmp_path / 'best' / 'pending.json')
