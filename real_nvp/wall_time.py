"""Where a run's wall time goes: the line train.py ends with.

    Wall time 61.2 s: start-up 5.1 s, tracing and compilation 7.9 s, training
    steps 40.3 s, evaluations 2.2 s, checkpoints and samples 1.4 s, export 3.9 s,
    other 0.4 s.

Phases nest: time spent in an inner phase (the first, tracing call of the
evaluation step inside an evaluation) counts for the inner one only, so the
phases add up to the wall time, "other" (the host loop, summaries, logging)
being what no phase claimed.
"""

import contextlib
import time

__all__ = ['WallTime', 'START_UP', 'TRACING', 'STEPS', 'EVALUATIONS',
           'CHECKPOINTS', 'EXPORT']

START_UP = 'start-up'  # imports, data, model, restore: until the first step
TRACING = 'tracing and compilation'  # a traced function's first call
STEPS = 'training steps'
EVALUATIONS = 'evaluations'
CHECKPOINTS = 'checkpoints and samples'
EXPORT = 'export'
_ORDER = (START_UP, TRACING, STEPS, EVALUATIONS, CHECKPOINTS, EXPORT)


class WallTime:
  """Seconds per phase of a run since `since` (a `time.perf_counter()` value;
  default: now)."""

  def __init__(self, since=None):
    self.since = time.perf_counter() if since is None else since
    self.seconds = dict.fromkeys(_ORDER, 0.)
    self._nested = []  # Seconds claimed by inner phases, per open phase.

  def add(self, name, seconds):
    self.seconds[name] = self.seconds.get(name, 0.) + seconds

  @contextlib.contextmanager
  def phase(self, name):
    """Counts the time of the block for `name` (less what inner phases claim)."""
    began = time.perf_counter()
    self._nested.append(0.)
    try:
      yield
    finally:
      elapsed = time.perf_counter() - began
      self.add(name, elapsed - self._nested.pop())
      if self._nested:
        self._nested[-1] += elapsed

  def summary(self):
    """{'wall': total seconds, phase: seconds, ..., 'other': the rest}."""
    wall = time.perf_counter() - self.since
    return {'wall': wall, **self.seconds, 'other': wall - sum(self.seconds.values())}

  def line(self):
    seconds = self.summary()
    wall = seconds.pop('wall')
    return f'Wall time {wall:.1f} s: ' + ', '.join(
        f'{name} {value:.1f} s' for name, value in seconds.items()) + '.'
