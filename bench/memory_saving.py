"""Peak memory and speed of a training step under each --memory_saving mode.

    python bench/memory_saving.py                         # cifar10, batch 64 and 256
    python bench/memory_saving.py --presets=cifar10,imagenet64 --batch_sizes=64,256
    python bench/memory_saving.py --presets=digits --batch_sizes=64 --steps=5

Every (preset, batch, mode) runs in a fresh process, so that each peak is its
own; the modes alternate within a (preset, batch), side by side on the same
machine. A process builds the preset's model (random weights; random images
of its shape stand in for data), runs --warmup training steps (tracing and
the first step) and then --steps timed ones, on one device (the first GPU,
else the CPU). Reported per run:

- peak_rss_mb: the process's peak resident set (ru_maxrss), everything in;
- step_rss_mb: that peak over the resident set just before the first step
  (model, optimizer and TensorFlow itself): what tracing and the step need;
- timed_peak_rss_mb: the peak resident set during the timed steps alone
  (VmHWM reset after the warm-up): the steady state of training, without
  tracing and graph optimization (rss_before_timed_mb: where it started);
- tensor_peak_mb: on a GPU, or on a CPU with TF_CPU_ALLOCATOR_USE_BFC=true
  (`--bfc`), the peak of live tensors during the timed steps (TF's allocator
  statistics; tensor_current_mb: what stays allocated between steps:
  weights, optimizer state). Unlike the resident set it is not inflated by
  memory that malloc keeps after TF frees it;
- images_per_sec: batch / median seconds of the timed steps.

Ratios are over `off` at the same preset and batch. A run that fails (e.g.
runs out of memory) is reported with its error instead of numbers. Prints a
table, then one JSON line that names the CPU.
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

from real_nvp.config import MEMORY_SAVING_MODES as MODES  # noqa: E402

flags.DEFINE_list('presets', ['cifar10'], 'Architecture presets.')
flags.DEFINE_list('batch_sizes', ['64', '256'], 'Global batch sizes.')
flags.DEFINE_list('modes', list(MODES), 'Memory-saving modes, run in this order.')
flags.DEFINE_integer('steps', 2, 'Timed training steps per run.')
flags.DEFINE_integer('warmup', 1, 'Untimed steps first (tracing, first step).')
flags.DEFINE_integer('timeout', 3600, 'Seconds a run may take.')
flags.DEFINE_bool('bfc', False, 'Run TF\'s BFC allocator on the CPU too, for tensor_peak_mb.')
flags.DEFINE_string('one', None, 'Internal: PRESET,BATCH,MODE to measure in this process.')
FLAGS = flags.FLAGS


def _status_mb(field):
  """VmRSS or VmHWM (peak) of this process, MB."""
  with open('/proc/self/status') as status:
    for line in status:
      if line.startswith(field + ':'):
        return int(line.split()[1]) / 1024
  raise RuntimeError(f'{field} not in /proc/self/status')


def _reset_peak():
  """Starts VmHWM anew at the current resident set (Linux >= 4.0)."""
  with open('/proc/self/clear_refs', 'w') as clear_refs:
    clear_refs.write('5')


def _measure(preset, batch_size, mode):
  import real_nvp  # noqa: F401  before TensorFlow: it chooses the CPU kernels
  import numpy as np
  import tensorflow as tf
  from real_nvp import config, distribute
  from real_nvp.config import TrainConfig
  from real_nvp.train_step import TrainStep
  strategy = distribute.get_strategy('one_device')
  steps = TrainStep(strategy, config.PRESETS[preset],
                    TrainConfig(batch_size=batch_size, memory_saving=mode))
  shape = (batch_size,) + steps.model.config.image_shape
  images = np.random.default_rng(0).integers(0, steps.model.config.levels, shape,
                                             dtype=np.uint8)
  batches = iter(strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensors(images).repeat()))
  gpus = tf.config.list_logical_devices('GPU')
  device = 'GPU:0' if gpus else 'CPU:0'
  before = _status_mb('VmRSS')
  try:  # Statistics exist for a GPU, and for a CPU under TF_CPU_ALLOCATOR_USE_BFC=true.
    tensor_stats = bool(tf.config.experimental.get_memory_info(device))
  except ValueError:
    tensor_stats = False
  times = []
  for step in range(FLAGS.warmup + FLAGS.steps):
    if step == FLAGS.warmup:
      between = _status_mb('VmRSS')
      _reset_peak()
      if tensor_stats:
        tf.config.experimental.reset_memory_stats(device)
    start = time.perf_counter()
    bpd, _, finite = steps.train_step(next(batches))
    bpd, finite = float(bpd), bool(finite)
    if step >= FLAGS.warmup:
      times.append(time.perf_counter() - start)
  assert finite and np.isfinite(bpd), (bpd, finite)
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  result = {'preset': preset, 'batch_size': batch_size, 'mode': mode,
            'peak_rss_mb': round(peak), 'step_rss_mb': round(peak - before),
            'timed_peak_rss_mb': round(_status_mb('VmHWM')),
            'rss_before_timed_mb': round(between),
            'images_per_sec': round(batch_size / statistics.median(times), 3),
            'step_seconds': [round(t, 3) for t in times], 'bits_per_dim': bpd}
  if tensor_stats:
    info = tf.config.experimental.get_memory_info(device)
    result['tensor_peak_mb'] = round(info['peak'] / 2 ** 20)
    result['tensor_current_mb'] = round(info['current'] / 2 ** 20)
  print(json.dumps(result))


def _run(preset, batch_size, mode):
  command = [sys.executable, os.path.abspath(__file__), f'--one={preset},{batch_size},{mode}',
             f'--steps={FLAGS.steps}', f'--warmup={FLAGS.warmup}']
  env = dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC='true') if FLAGS.bfc else None
  try:
    process = subprocess.run(command, capture_output=True, text=True,
                             timeout=FLAGS.timeout, env=env)
  except subprocess.TimeoutExpired:
    return {'preset': preset, 'batch_size': batch_size, 'mode': mode,
            'error': f'did not finish in {FLAGS.timeout} s'}
  lines = process.stdout.strip().splitlines()
  if process.returncode or not lines:
    reason = (process.stderr.strip().splitlines() or ['no output'])[-1]
    return {'preset': preset, 'batch_size': batch_size, 'mode': mode,
            'error': f'exit status {process.returncode}: {reason}'}
  return json.loads(lines[-1])


def main(argv):
  del argv
  if FLAGS.one:
    preset, batch_size, mode = FLAGS.one.split(',')
    _measure(preset, int(batch_size), mode)
    return
  from real_nvp import hardware
  rows = []
  print(f'{"preset":<11}{"batch":>6} {"mode":<10}{"peak RSS MB":>12}{"x off":>7}'
        f'{"timed peak":>11}{"tensor peak":>12}{"x off":>7}{"img/s":>9}{"time x off":>11}')
  for preset in FLAGS.presets:
    for batch_size in map(int, FLAGS.batch_sizes):
      off = None
      for mode in FLAGS.modes:
        row = _run(preset, batch_size, mode)
        rows.append(row)
        if 'error' in row:
          print(f'{preset:<11}{batch_size:>6} {mode:<10}{row["error"]}', flush=True)
          continue
        off = row if mode == 'off' else off
        if off:
          row['peak_rss_x_off'] = round(row['peak_rss_mb'] / off['peak_rss_mb'], 3)
          if 'tensor_peak_mb' in row:
            row['tensor_peak_x_off'] = round(
                row['tensor_peak_mb'] / off['tensor_peak_mb'], 3)
          row['step_time_x_off'] = round(off['images_per_sec'] / row['images_per_sec'], 3)
        nan = float('nan')
        print(f'{preset:<11}{batch_size:>6} {mode:<10}{row["peak_rss_mb"]:>12}'
              f'{row.get("peak_rss_x_off", nan):>7.2f}{row["timed_peak_rss_mb"]:>11}'
              f'{row.get("tensor_peak_mb", nan):>12}{row.get("tensor_peak_x_off", nan):>7.2f}'
              f'{row["images_per_sec"]:>9.2f}'
              f'{row.get("step_time_x_off", nan):>11.2f}', flush=True)
  print(json.dumps({**hardware.cpu_info().to_json(), 'steps': FLAGS.steps,
                    'warmup': FLAGS.warmup, 'rows': rows}))


if __name__ == '__main__':
  app.run(main)
