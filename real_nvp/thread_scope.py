"""A value held for a `with` block, in the current thread only.

Layers traced in several threads at once (the replicas of a
MirroredStrategy, each in a thread of its own) read what their own thread's
block set, and blocks nest: leaving one restores the value before it.
"""

import contextlib
import threading

__all__ = ['ThreadScope']


class ThreadScope:
  """`holding(value)`: a `with` block in which `value()` is `value`
  (None outside any block)."""

  def __init__(self):
    self._local = threading.local()

  @contextlib.contextmanager
  def holding(self, value):
    previous = self.value()
    self._local.value = value
    try:
      yield
    finally:
      self._local.value = previous

  def value(self):
    return getattr(self._local, 'value', None)
