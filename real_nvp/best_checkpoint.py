"""The best checkpoint of a run: best/ckpt-N (the lowest held-out bits/dim so
far) and best/best.json, its record.

    best/best.json    {"checkpoint": "ckpt-N", "step": N, "bits_per_dim": b,
                       "history": [[step, bits/dim], ...] (every evaluation),
                       "early_stopped_at": step or null}
    best/ckpt-N.*     the best checkpoint, never rotated out
    best/pending.json the new best while it is being written (see below)
    best/best.copy.json  best.json again, written after it, so that damage to
                      one file loses nothing (the history, the early stop)

A new best is stored so that a crash at any point leaves a record that names
a complete checkpoint: (1) pending.json names it with its step and value,
(2) the checkpoint is written, (3) best.json is switched to it (an atomic
rename), (4) the old best's files are deleted, index first (so that a cut
delete leaves files without an index, which are plainly leftovers),
(5) pending.json is removed.
`inspect` reads what a crash left and decides: a readable best named by the
record stands; a complete pending one that is better (or the only one) is
adopted; other checkpoints, readable or partly deleted, are superseded and
removed; unreadable ones are moved aside; a readable checkpoint in best/
that nothing records has no known value and is evaluated again by the
trainer. An unreadable best.json is replaced by its copy; without one, its
checkpoints are evaluated again.
`BestCheckpoint.reconcile` carries the decision out at the start of training;
eval.py's --checkpoint=best uses it without changing anything.
"""

import dataclasses
import datetime
import glob
import json
import os
import shutil

from absl import logging

from real_nvp import checkpoints, storage
from real_nvp.model_dir_layout import checkpoint_paths, step_of
from real_nvp.storage import ModelDirError

__all__ = ['BestCheckpoint', 'BestState', 'inspect', 'best_checkpoint',
           'resolve_checkpoint', 'BEST_DIR']

BEST_DIR = 'best'
RECORD_FILE = 'best.json'
RECORD_COPY_FILE = 'best.copy.json'
PENDING_FILE = 'pending.json'
# The keys each file must hold, with the types their values may have.
_RECORD_KEYS = {'checkpoint': (str, type(None)), 'step': (int, type(None)),
                'bits_per_dim': (float, int, type(None)), 'history': (list,),
                'early_stopped_at': (int, type(None))}
_PENDING_KEYS = {'checkpoint': (str,), 'step': (int,), 'bits_per_dim': (float, int)}


def _read_json(path, keys):
  """(the JSON object at path or None if absent, why it cannot be used or None)."""
  if not os.path.exists(path):
    return None, None
  try:
    with open(path) as f:
      value = json.load(f)
  except (OSError, ValueError) as error:
    return None, str(error)
  if not isinstance(value, dict):
    return None, 'not a JSON object'
  for key, types in keys.items():
    if not isinstance(value.get(key), types) or isinstance(value.get(key), bool):
      return None, f'its {key!r} is {value.get(key)!r}'
  if value.get('checkpoint') is not None and (value.get('step') is None or
                                              value.get('bits_per_dim') is None):
    return None, f'it names {value["checkpoint"]!r} without its step and value'
  if 'history' in keys and not all(
      isinstance(h, list) and len(h) == 2 and isinstance(h[0], int) for h in value['history']):
    return None, 'its history is not a list of [step, bits/dim]'
  return value, None


def _read_record(directory, state):
  """best.json, or its copy where best.json cannot be used (noted in state)."""
  path = os.path.join(directory, RECORD_FILE)
  record, problem = _read_json(path, _RECORD_KEYS)
  if problem is None:
    return record
  state.changed = True
  state.bad_files.append(RECORD_FILE)
  copy, copy_problem = _read_json(os.path.join(directory, RECORD_COPY_FILE), _RECORD_KEYS)
  if copy is not None:
    state.notes.append(f'{path} cannot be read ({problem}); its copy '
                       f'{RECORD_COPY_FILE} is used instead.')
    return copy
  state.notes.append(
      f'{path} cannot be read ({problem}) and has no usable copy'
      f'{f" ({copy_problem})" if copy_problem else ""}: the checkpoints in best/ '
      'are kept and evaluated again; the record of earlier evaluations and of an '
      'early stop is lost.')
  return {}


@dataclasses.dataclass
class BestState:
  """What best/ holds, once a crash's leftovers are read (see `inspect`).

  best: (name, step, bits/dim) of the best checkpoint, or None.
  history: [(step, bits/dim)] of every evaluation.
  early_stopped_at: the step at which early stopping ended the run, or None.
  damaged: {name: reason} of unreadable checkpoints (to be moved aside).
  unvalued: names of readable checkpoints that no record values (to evaluate).
  obsolete: names of readable checkpoints superseded by the best (to delete).
  strays: files of checkpoints without an index (a write cut short; to delete).
  notes: what was found, one line each (for the log).
  """
  best: tuple = None
  history: list = dataclasses.field(default_factory=list)
  early_stopped_at: int = None
  damaged: dict = dataclasses.field(default_factory=dict)
  unvalued: list = dataclasses.field(default_factory=list)
  obsolete: list = dataclasses.field(default_factory=list)
  strays: list = dataclasses.field(default_factory=list)
  notes: list = dataclasses.field(default_factory=list)
  changed: bool = False  # the record differs from best.json on disk
  bad_files: list = dataclasses.field(default_factory=list)  # unusable JSON files


def inspect(model_dir):
  """The BestState of model_dir/best (reads only; checks every checkpoint's data)."""
  directory = os.path.join(model_dir, BEST_DIR)
  state = BestState()
  record = _read_record(directory, state)
  pending, problem = _read_json(os.path.join(directory, PENDING_FILE), _PENDING_KEYS)
  if problem is not None:
    state.bad_files.append(PENDING_FILE)
    state.notes.append(f'{os.path.join(directory, PENDING_FILE)} cannot be read '
                       f'({problem}); the checkpoint it would name is judged without it.')
  state.history = [tuple(h) for h in record.get('history', [])]
  state.early_stopped_at = record.get('early_stopped_at')
  on_disk = sorted(os.path.basename(path) for path in checkpoint_paths(directory))
  state.strays = [path for path in glob.glob(os.path.join(glob.escape(directory), 'ckpt-*'))
                  if os.path.basename(path).split('.')[0] not in on_disk]
  readable, unreadable = [], {}
  for name in on_disk:
    try:
      checkpoints.verify_readable(os.path.join(directory, name))
      readable.append(name)
    except ModelDirError as error:
      unreadable[name] = str(error)
  recorded = record.get('checkpoint')
  if recorded is not None:
    if recorded in readable:
      state.best = (recorded, record['step'], record['bits_per_dim'])
    elif recorded not in on_disk:
      state.notes.append(f'{os.path.join(directory, RECORD_FILE)} names {recorded} '
                         '(step {}), which is not on disk.'.format(record.get('step')))
    if state.best is None:
      state.changed = True
  if pending is not None and pending.get('checkpoint') in readable:
    if state.best is None or pending['bits_per_dim'] < state.best[2]:
      state.best = (pending['checkpoint'], pending['step'], pending['bits_per_dim'])
      if (pending['step'], pending['bits_per_dim']) not in state.history:
        state.history.append((pending['step'], pending['bits_per_dim']))
      state.changed = True
      state.notes.append(f'Adopted {os.path.join(directory, pending["checkpoint"])} '
                         f'(step {pending["step"]}, {pending["bits_per_dim"]:.4f} bits/dim), '
                         'completely written before an interruption, as the best checkpoint.')
  others = [name for name in readable if state.best is None or name != state.best[0]]
  if state.best is None:
    state.unvalued = others
  else:
    state.obsolete = others
  for name, reason in unreadable.items():
    if state.best is not None and _partly_deleted(directory, name):
      state.obsolete.append(name)  # a delete of a superseded best, cut short
    else:
      state.damaged[name] = reason
      state.notes.append(f'The best-checkpoint directory holds an unreadable '
                         f'checkpoint: {reason}')
  return state


def _partly_deleted(directory, name):
  """Whether some of checkpoint `name`'s data files are missing (not damaged)."""
  shards = glob.glob(os.path.join(glob.escape(directory), glob.escape(name) + '.data-*-of-*'))
  expected = {int(path.rsplit('-of-', 1)[1]) for path in shards if
              path.rsplit('-of-', 1)[1].isdigit()}
  return not shards or len(expected) != 1 or len(shards) < expected.pop()


def best_checkpoint(model_dir):
  """(path, step, bits/dim) of the best checkpoint, or None (reads only)."""
  best = inspect(model_dir).best
  if best is None:
    return None
  return os.path.join(model_dir, BEST_DIR, best[0]), best[1], best[2]


def resolve_checkpoint(model_dir, checkpoint):
  """`checkpoint` as a path: 'best' names the best checkpoint, None the newest."""
  if checkpoint != 'best':
    return checkpoint
  state = inspect(model_dir)
  if state.best is not None:
    for note in state.notes:
      logging.warning('%s', note)
    return os.path.join(model_dir, BEST_DIR, state.best[0])
  found = ' '.join(state.notes)
  if state.unvalued:
    found += (f' {os.path.join(model_dir, BEST_DIR)} holds '
              f'{", ".join(state.unvalued)}, which no record values: run the training '
              'command again (it evaluates and records it), or pass its path as '
              '--checkpoint.')
  raise ModelDirError(
      f'{model_dir} has no usable best checkpoint. ' + (found.strip() or
      'No held-out evaluation ran during training (--eval_every).'))


class BestCheckpoint:
  """The run's best checkpoint and the record of its evaluations.

  Args:
    checkpoint: the tf.train.Checkpoint of the run.
    model_dir: the model directory.
    write_dir: where this worker writes (model_dir/best on the chief, a
      scratch directory on other workers: checkpoint writes are collective).
  """

  def __init__(self, checkpoint, model_dir, write_dir=None):
    self._checkpoint = checkpoint
    self.model_dir = model_dir
    self.directory = os.path.join(model_dir, BEST_DIR)
    self._write_dir = write_dir or self.directory
    self.history = []
    self.best = None  # (step, bits/dim)
    self._name = None  # of the best checkpoint's files in best/
    self.early_stopped_at = None
    self.unvalued = []  # (path, step) of checkpoints to evaluate (see reconcile)
    self._loaded = False

  @property
  def is_writer(self):
    return self._write_dir == self.directory

  @property
  def path(self):
    """The best checkpoint's path in best/, or None."""
    return self._name and os.path.join(self.directory, self._name)

  def reconcile(self, fresh, multi_worker=False):
    """Makes best/ consistent at the start of training (the chief's job).

    `fresh`: no checkpoint of the run was restored, so best/ is another
    run's: it is set aside. Otherwise damaged checkpoints are moved to
    corrupt_checkpoints/, superseded ones deleted, the record rewritten if
    it changed, each with a log line; checkpoints that no record values are
    left in `self.unvalued` for the trainer to evaluate (in a multi-worker
    run, where evaluation is collective, they are set aside instead).
    """
    if not os.path.isdir(self.directory):
      return
    if fresh:
      if os.listdir(self.directory):
        _set_aside(self.model_dir, self.directory, 'This run starts from step 0, so '
                   'the best checkpoint in it belongs to an earlier run')
      self._loaded = True
      return
    state = inspect(self.model_dir)
    for note in state.notes:
      logging.warning('%s', note)
    for name in state.bad_files:
      _set_aside(self.model_dir, os.path.join(self.directory, name), 'It cannot be read',
                 [os.path.join(self.directory, name)])
    for name, reason in state.damaged.items():
      checkpoints.quarantine(self.model_dir, os.path.join(self.directory, name),
                             reason, prefix='best-')
    for path in state.strays:
      logging.info('Removing %s, left by an interrupted write.', path)
      shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    for name in state.obsolete:
      logging.info('Removing %s: superseded by the best checkpoint (left by an '
                   'interrupted update of the best).', os.path.join(self.directory, name))
      self._delete(name)
    unvalued = state.unvalued
    if unvalued and multi_worker:
      for name in unvalued:
        path = os.path.join(self.directory, name)
        _set_aside(self.model_dir, path, 'No record values it and a multi-worker run '
                   'cannot evaluate it alone', glob.glob(glob.escape(path) + '.*'))
      unvalued = []
    self.unvalued = [(os.path.join(self.directory, name), step_of(name))
                     for name in unvalued]
    if state.best is None and not self.unvalued and (state.damaged or state.changed):
      logging.warning('%s has no usable best checkpoint now: the next held-out '
                      'evaluation starts the record afresh, and the SavedModel will '
                      'hold the best of the evaluations from here on.', self.directory)
    self._load(state)
    if state.changed:
      self._write_record()
    self._remove_pending()

  def _load(self, state):
    self._loaded = True
    self.history = list(state.history)
    self.early_stopped_at = state.early_stopped_at
    if state.best is not None:
      self._name, self.best = state.best[0], (state.best[1], state.best[2])

  def resume(self, step):
    """Loads the record (unless `reconcile` did), forgetting evaluations after
    `step` (the restored one) and an early stop that step has not reached."""
    if not self._loaded and os.path.isdir(self.directory):
      self._load(inspect(self.model_dir))
    self._loaded = True
    self.history = [h for h in self.history if h[0] <= step]
    if self.early_stopped_at is not None and self.early_stopped_at > step:
      self.early_stopped_at = None

  @property
  def evaluations_since_best(self):
    if self.best is None:
      return len(self.history)
    return sum(1 for step, _ in self.history if step > self.best[0])

  def record(self, step, bits_per_dim):
    """Adds an evaluation; saves the checkpoint if it is the best. -> improved."""
    self.history.append((step, bits_per_dim))
    improved = self.best is None or bits_per_dim < self.best[1]
    if improved:
      self._store(step, bits_per_dim)
    elif self.is_writer:
      self._write_record()
    return improved

  def adopt(self, path, step, bits_per_dim):
    """Records an evaluated checkpoint of best/ that no record valued (see
    `reconcile`): it becomes the best if it is better, else it is deleted."""
    self.history = sorted(set(self.history) | {(step, bits_per_dim)})
    if self.best is None or bits_per_dim < self.best[1]:
      self._switch_to(os.path.basename(path), step, bits_per_dim)
      logging.info('Adopted %s (step %d, %.4f bits/dim) as the best checkpoint.',
                   path, step, bits_per_dim)
    else:
      self._write_record()
      self._delete(os.path.basename(path))
    self.unvalued.remove((path, step))

  def mark_early_stop(self, step):
    self.early_stopped_at = step
    if self.is_writer:
      self._write_record()

  def clear_early_stop(self):
    self.early_stopped_at = None
    if self.is_writer:
      self._write_record()

  # --- the crash-safe update (see the module docstring) ---------------------------

  def _store(self, step, bits_per_dim):
    name = self._free_name(step)
    if self.is_writer:
      os.makedirs(self.directory, exist_ok=True)
      storage.write_atomically(os.path.join(self.directory, PENDING_FILE), json.dumps(
          {'checkpoint': name, 'step': step, 'bits_per_dim': bits_per_dim}))
    os.makedirs(self._write_dir, exist_ok=True)
    self._checkpoint.write(os.path.join(self._write_dir, name))
    if not self.is_writer:
      self._name, self.best = name, (step, bits_per_dim)
      shutil.rmtree(self._write_dir, ignore_errors=True)
      return
    self._switch_to(name, step, bits_per_dim)
    self._remove_pending()

  def _switch_to(self, name, step, bits_per_dim):
    """Records best/`name` as the best (an atomic rename), then deletes the old one."""
    previous, self._name, self.best = self._name, name, (step, bits_per_dim)
    self._write_record()
    if previous:
      self._delete(previous)

  def _free_name(self, step):
    name, k = f'ckpt-{step}', 0
    while (name == self._name or
           glob.glob(os.path.join(glob.escape(self._write_dir), glob.escape(name) + '.*'))):
      k += 1
      name = f'ckpt-{step}-{k}'
    return name

  def _write_record(self):
    os.makedirs(self.directory, exist_ok=True)
    text = json.dumps({
        'checkpoint': self._name, 'step': self.best and self.best[0],
        'bits_per_dim': self.best and self.best[1], 'history': self.history,
        'early_stopped_at': self.early_stopped_at}, indent=1)
    for name in (RECORD_FILE, RECORD_COPY_FILE):
      storage.write_atomically(os.path.join(self.directory, name), text)

  def _delete(self, name):
    # The index first: what a cut delete leaves has no index (see inspect).
    paths = glob.glob(os.path.join(glob.escape(self.directory), glob.escape(name) + '.*'))
    for path in sorted(paths, key=lambda path: not path.endswith('.index')):
      os.remove(path)

  def _remove_pending(self):
    try:
      os.remove(os.path.join(self.directory, PENDING_FILE))
    except FileNotFoundError:
      pass


def _set_aside(model_dir, path, reason, sources=None):
  """Moves `sources` (by default the directory `path`'s contents) to
  model_dir/best.set-aside-*/."""
  stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
  target = os.path.join(model_dir, f'best.set-aside-{stamp}')
  os.makedirs(target, exist_ok=True)
  if sources is None:
    sources = [os.path.join(path, name) for name in os.listdir(path)]
  for source in sources:
    shutil.move(source, os.path.join(target, os.path.basename(source)))
  logging.warning('%s: moved %s to %s.', reason, path, target)
