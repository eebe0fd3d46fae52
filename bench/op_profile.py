"""Per-op self time of a TensorFlow profile (the XSpace that
`tf.profiler.experimental` writes), without TensorBoard's profile plugin.

On the CPU the executor runs each op as one event on one of its compute
threads; an op's event is its kernel's wall time (a kernel may fan out to
the intra-op threads, so op times are not CPU times). What the executor
does around the kernels (scheduling, allocation, the per-op overhead) is the
time of its `ExecutorState::Process` events that no op event covers.
"""

import collections
import glob
import os

from tensorflow.tsl.profiler.protobuf import xplane_pb2

__all__ = ['op_times', 'format_table']

_EXECUTOR = 'ExecutorState::Process'


def _host_plane(log_dir):
  paths = sorted(glob.glob(os.path.join(log_dir, '**', '*.xplane.pb'), recursive=True),
                 key=os.path.getmtime)
  if not paths:
    raise FileNotFoundError(f'No *.xplane.pb under {log_dir}')
  space = xplane_pb2.XSpace()
  with open(paths[-1], 'rb') as f:
    space.ParseFromString(f.read())
  return next(plane for plane in space.planes if plane.name == '/host:CPU')


def op_times(log_dir):
  """{op type: (count, seconds)} of the executor's ops in the newest profile
  under `log_dir`; the key 'executor overhead' holds the executor's time
  outside any op. Ops are the events named 'node name:op type'."""
  plane = _host_plane(log_dir)
  totals = collections.defaultdict(lambda: [0, 0.])
  overhead = 0.
  for line in plane.lines:
    if not line.name.startswith('tf_Compute'):
      continue
    process_ps = ops_ps = 0
    for event in line.events:
      name = plane.event_metadata[event.metadata_id].name
      if name == _EXECUTOR:
        process_ps += event.duration_ps
      elif ':' in name and not name.startswith(('ExecutorState', 'Threadpool')):
        op_type = name.rsplit(':', 1)[1]
        totals[op_type][0] += 1
        totals[op_type][1] += event.duration_ps * 1e-12
        ops_ps += event.duration_ps
    overhead += max(process_ps - ops_ps, 0) * 1e-12
  result = {name: tuple(value) for name, value in totals.items()}
  result['executor overhead'] = (0, overhead)
  return result


def format_table(times, steps, top=20, flops=None):
  """Markdown rows of the `top` ops by time: op, count per step, ms per step,
  share of the total; GFLOP/s for the ops `flops` ({op type: FLOPs per
  step}) names."""
  total = sum(seconds for _, seconds in times.values())
  rows = ['| op | per step | ms / step | share | GFLOP/s |', '|---|---|---|---|---|']
  for name, (count, seconds) in sorted(times.items(), key=lambda item: -item[1][1])[:top]:
    rate = (flops or {}).get(name)
    gflops = f'{rate * steps / seconds / 1e9:.0f}' if rate else ''
    rows.append(f'| {name} | {count / steps:.0f} | {1e3 * seconds / steps:.2f} | '
                f'{seconds / total:.1%} | {gflops} |')
  return '\n'.join(rows)
