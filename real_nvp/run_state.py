"""The run's state on disk: restore the newest readable checkpoint, save one,
and keep the best (the model directory's rules are in model_dir_layout.py and checkpoints.py).

Everything a run needs to continue exactly is in the checkpoint: weights,
Adam's moments, the step, the non-finite counters, the loss scale and the
batch-norm averages (the data position is a function of the step).
"""

import os
import shutil

import tensorflow as tf
from absl import logging

from real_nvp import checkpoints, model_dir_layout, storage
from real_nvp.best_checkpoint import BestCheckpoint

__all__ = ['RunState']


class RunState:
  """The checkpoints of one training run in `model_dir`.

  Args:
    checkpointables: dict of the objects to checkpoint (TrainStep.checkpointables()).
    step: the run's step variable.
    model_dir: the model directory.
    flow_config: the architecture (config.json is checked against it).
    keep_checkpoints: how many rolling checkpoints to keep.
    worker_id: None on the chief; other workers write their (collective)
      checkpoint copies to scratch directories that they delete.
    restart_if_unreadable: when no checkpoint can be read, move them all
      aside and start from step 0 (else stop with a message).
    multi_worker: the run has several workers (see BestCheckpoint.reconcile).
  """

  def __init__(self, checkpointables, step, model_dir, flow_config, keep_checkpoints,
               worker_id=None, restart_if_unreadable=False, multi_worker=False):
    self.step, self.model_dir, self.flow_config = step, model_dir, flow_config
    self.is_chief = worker_id is None
    self.keep_checkpoints = keep_checkpoints
    self.restart_if_unreadable = restart_if_unreadable
    self.multi_worker = multi_worker
    model_dir_layout.check_config(model_dir, flow_config)
    self.checkpoint = tf.train.Checkpoint(**checkpointables)
    self._checkpoint_dir = model_dir if self.is_chief else os.path.join(
        model_dir, f'.worker_{worker_id}_tmp')
    self.manager = None  # Created by restore(), once the directory is sound.
    self.best = BestCheckpoint(
        self.checkpoint, model_dir, None if self.is_chief else os.path.join(
            model_dir, f'.worker_{worker_id}_best_tmp'))
    self.updated_since_save = False

  def restore(self):
    """Restores the newest readable checkpoint, if any; returns the step.

    Leftovers of interrupted saves are removed first. Each checkpoint's data
    is read in full before anything is loaded from it: a newer one that
    cannot be read is reported and moved to corrupt_checkpoints/, and the one
    before it is used. When none can be read, the run stops with a message
    and changes nothing (unless `restart_if_unreadable`). A checkpoint of
    another architecture is refused. Then best/ is reconciled with what is
    on disk (BestCheckpoint.reconcile).
    """
    if self.is_chief:
      checkpoints.clean_temporary_files(self.model_dir)
    unreadable, restored = [], None
    for path in model_dir_layout.checkpoint_paths(self.model_dir):
      try:
        checkpoints.verify_readable(path)
      except storage.ModelDirError as error:
        unreadable.append((path, str(error)))
        continue
      checkpoints.read_checkpoint(self.checkpoint, path)
      restored = path
      break
    if unreadable and restored is None and not self.restart_if_unreadable:
      raise storage.ModelDirError(
          f'None of the {len(unreadable)} checkpoint(s) in {self.model_dir} can be '
          f'read ({unreadable[0][1]}); nothing was changed. Restore them from a '
          'backup, or run again with --restart_if_unreadable to move them to '
          f'{model_dir_layout.CORRUPT_DIR}/ and train from step 0.')
    if self.is_chief:
      for path, reason in unreadable:
        checkpoints.quarantine(self.model_dir, path, reason)
    elif unreadable:
      raise storage.ModelDirError(unreadable[0][1])  # The chief moves them.
    if restored:
      logging.info('Restored %s at step %d', restored, int(self.step.numpy()))
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, self._checkpoint_dir, max_to_keep=self.keep_checkpoints,
        checkpoint_name='ckpt')
    if self.is_chief:
      if not model_dir_layout.has_checkpoint(self.model_dir):
        os.makedirs(self.model_dir, exist_ok=True)
      model_dir_layout.write_config(self.model_dir, self.flow_config)
      self.best.reconcile(fresh=restored is None, multi_worker=self.multi_worker)
    self.best.resume(int(self.step.numpy()))
    return int(self.step.numpy())

  def last_good_checkpoint(self):
    """The newest checkpoint on disk (every saved checkpoint is finite)."""
    paths = model_dir_layout.checkpoint_paths(self.model_dir)
    return paths[0] if paths else None

  def save(self):
    """Writes a checkpoint, unless no update was applied since the last one
    (every step skipped): the step counter alone does not replace a good one.
    A full disk stops the run with the directory and the last good checkpoint."""
    if not self.updated_since_save and self.last_good_checkpoint():
      logging.warning('Step %d: no update since the last checkpoint; not saving.',
                      int(self.step.numpy()))
      return None
    try:
      path = self.manager.save(checkpoint_number=int(self.step.numpy()))
    except storage.STORAGE_ERRORS as error:
      what = 'The disk is full' if storage.is_disk_full(error) else 'Writing failed'
      raise storage.StorageError(
          f'{what}: could not write a checkpoint to {self._checkpoint_dir} '
          f'({checkpoints.error_summary(error)}). The last good checkpoint is '
          f'{self.last_good_checkpoint()}; free space (or fix the directory) and '
          'run the same command again to resume from it.') from None
    if not self.is_chief:
      shutil.rmtree(self._checkpoint_dir, ignore_errors=True)
    self.updated_since_save = False
    return path
