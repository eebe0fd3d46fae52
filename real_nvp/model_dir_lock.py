"""One training run per model directory: {model_dir}/train.lock."""

import datetime
import json
import os
import socket
import time

from absl import logging

from real_nvp.storage import ModelDirError, StorageError

__all__ = ['ModelDirLock', 'LOCK_FILE']

LOCK_FILE = 'train.lock'
# How long a lock file may stay empty while its writer fills it.
_FILL_SECONDS = 1.


class ModelDirLock:
  """One training run per model directory: train.lock holds the writer's host,
  pid and start time, created atomically (O_EXCL).

  A lock of a process that no longer runs on this host is stale: it is taken
  over with a log line. Any other lock refuses the second writer, naming it.
  Use as a context manager; the lock is released on exit.
  """

  def __init__(self, model_dir):
    self.path = os.path.join(model_dir, LOCK_FILE)
    self._held = False

  def _holder(self):
    """The lock's holder {host, pid, started}; None if the file is gone.
    Raises ModelDirError for a file that is not a lock (after giving a writer
    that has just created it a moment to fill it)."""
    for attempt in range(2):
      try:
        with open(self.path, errors='replace') as f:
          text = f.read()
      except FileNotFoundError:
        return None
      except OSError as error:
        raise StorageError(f'Cannot read the lock {self.path}: {error}') from None
      try:
        holder = json.loads(text)
        if isinstance(holder, dict) and {'host', 'pid'} <= holder.keys():
          return holder
      except ValueError:
        pass
      if not attempt:
        time.sleep(_FILL_SECONDS)
    what = f'it holds {text[:80]!r}' if text.strip() else 'it is empty'
    raise ModelDirError(
        f'{self.path} is not a valid lock ({what}; a training run writes its host, '
        f'pid and start there). If no training run is using {os.path.dirname(self.path)}, '
        'remove the file and run again.')

  @staticmethod
  def _alive(pid):
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      return False
    except PermissionError:
      return True
    return True

  def acquire(self):
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    me = {'host': socket.gethostname(), 'pid': os.getpid(),
          'started': datetime.datetime.now().isoformat(timespec='seconds')}
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = self._holder()
        if holder is None:  # Released meanwhile.
          continue
        if (holder.get('host') == me['host'] and isinstance(holder.get('pid'), int)
            and not self._alive(holder['pid'])):
          logging.warning('Taking over the stale lock %s of process %d (no longer '
                          'running, started %s).', self.path, holder['pid'],
                          holder.get('started'))
          os.remove(self.path)
          continue
        raise ModelDirError(
            f'{os.path.dirname(self.path)} is in use by another training run '
            f'(host {holder["host"]}, pid {holder["pid"]}, started '
            f'{holder.get("started", "?")}; {self.path}). Use another --model_dir, '
            'or stop that run first; if it is dead on another host, remove the '
            'lock file.')
      except OSError as error:
        raise StorageError(f'Cannot create {self.path}: {error}') from None
      with os.fdopen(fd, 'w') as f:
        json.dump(me, f)
      self._held = True
      return self
    raise ModelDirError(f'Cannot take the lock {self.path}; try again.')

  def release(self):
    if self._held:
      self._held = False
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
