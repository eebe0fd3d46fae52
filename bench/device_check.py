"""The prepared check for a machine with an accelerator (within 8 minutes on
one GPU), and its reduced CPU mode that the test suite runs so it cannot rot.

    python bench/device_check.py --out=/tmp/device_check   # on the GPU machine
    python bench/device_check.py --reduced --out=DIR       # a minute on a CPU

1. Exactness on the device, float32: the flow's round trip and log-det
   against the autodiff Jacobian (tests/test_model.py, tests/test_layers.py).
2. Determinism: two identical short training runs on one device
   (TF_DETERMINISTIC_OPS=1) and their checkpoints compared tensor by tensor.
3. Training throughput at the CIFAR-10 preset (reduced: a tiny digits
   model) in float32, bfloat16 and float16, with and without --xla (reduced:
   the half precisions without it only; each row is a process of its own),
   with --steps_per_loop 1 and 50 (reduced: 1 and 5); a precision the device
   only emulates is recorded as refused.
4. The input pipeline's rate (bench/throughput.py --mode=data).

Each part's output is in --out; the last line printed is one JSON object.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_bool('reduced', False, 'The CPU mode of the test suite: tiny shapes.')
flags.DEFINE_string('out', '/tmp/real_nvp_device_check', 'Folder for the logs.')
FLAGS = flags.FLAGS

_EXACTNESS_TESTS = ['tests/test_model.py::test_flow_round_trip_and_log_det',
                    'tests/test_model.py::test_flow_round_trip_float32',
                    'tests/test_layers.py::test_coupling_inference',
                    'tests/test_layers.py::test_coupling_training_mode_log_det',
                    'tests/test_layers.py::test_batch_norm_inference_round_trip_and_log_det']


def _run(name, args, env=None, timeout=600):
  """Runs a command in the repository; -> (return code, seconds, stdout, tail
  of stdout and stderr). A bench's JSON is the last line of its stdout."""
  start = time.time()
  result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, **(env or {})))
  with open(os.path.join(FLAGS.out, f'{name}.log'), 'w') as f:
    f.write(result.stdout + result.stderr)
  return (result.returncode, time.time() - start, result.stdout,
          (result.stdout + result.stderr)[-2000:])


def exactness():
  tests = _EXACTNESS_TESTS[3:4] if FLAGS.reduced else _EXACTNESS_TESTS
  code, seconds, _, tail = _run('exactness', [sys.executable, '-m', 'pytest', '-q', *tests])
  return {'passed': code == 0, 'seconds': round(seconds, 1),
          'summary': tail.strip().splitlines()[-1] if tail.strip() else ''}


def determinism():
  """Two identical runs on one device: are their checkpoints bit-identical?"""
  flags_ = ['--flagfile=flags/smoke.cfg', '--strategy=one_device', '--eval_every=0',
            '--export_checkpoint=none']
  flags_ += (['--train_steps=6', '--num_scales=1', '--num_samples=4', '--eval_examples=16']
             if FLAGS.reduced else ['--train_steps=20'])
  folders = [os.path.join(FLAGS.out, f'determinism_{i}') for i in (0, 1)]
  for i, folder in enumerate(folders):
    code, _, _, tail = _run(f'determinism_{i}', [sys.executable, 'train.py', *flags_,
                                              f'--model_dir={folder}'],
                         env={'TF_DETERMINISTIC_OPS': '1'})
    if code:
      return {'identical': False, 'error': tail[-500:]}
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  readers = [tf.train.load_checkpoint(tf.train.latest_checkpoint(f)) for f in folders]
  names = [n for n in readers[0].get_variable_to_shape_map()
           if not n.startswith('_CHECKPOINTABLE_OBJECT_GRAPH')]
  difference = max(float(np.max(np.abs(
      readers[0].get_tensor(n).astype(np.float64) -
      readers[1].get_tensor(n).astype(np.float64)))) for n in names)
  return {'identical': difference == 0., 'max_difference': difference,
          'tensors': len(names)}


def throughput():
  if FLAGS.reduced:
    model = ['--preset=digits', '--num_scales=1', '--feature_maps=8', '--num_blocks=1',
             '--batch_size=16', '--steps=2', '--warmup=1', '--matmul_size=256',
             '--steps_per_loop=1,5']
  else:
    model = ['--preset=cifar10', '--batch_size=64', '--steps=5', '--warmup=2',
             '--steps_per_loop=1,50']
  results = []
  for dtype in ('float32', 'bfloat16', 'float16'):
    for xla in ((False,) if FLAGS.reduced and dtype != 'float32' else (False, True)):
      name = f'train_{dtype}{"_xla" if xla else ""}'
      args = [sys.executable, 'bench/throughput.py', '--mode=train', *model,
              '--strategy=one_device', f'--xla={xla}']
      if dtype != 'float32':
        args.append(f'--mixed_precision={dtype}')
      code, seconds, stdout, tail = _run(name, args)
      row = {'dtype': dtype, 'xla': xla, 'seconds': round(seconds, 1)}
      if code == 0:
        bench = json.loads(stdout.strip().splitlines()[-1])
        row.update({key: bench.get(key) for key in (
            'train_images_per_sec_by_steps_per_loop', 'utilization',
            'peak_rss_mb', 'gpu_peak_memory_mb', 'gpus', 'cpu_model')})
      elif 'allow_emulated_precision' in tail:
        row['refused'] = [l for l in tail.splitlines() if 'Error:' in l][-1]
      else:
        row['error'] = tail[-500:]
      results.append(row)
  return results


def data_rate():
  presets = ['--data_presets=cifar10'] if FLAGS.reduced else []
  code, _, stdout, tail = _run('data', [sys.executable, 'bench/throughput.py', '--mode=data',
                                '--preset=digits', '--steps=1', '--warmup=1',
                                '--matmul_size=256', *presets])
  return json.loads(stdout.strip().splitlines()[-1])['data'] if code == 0 else {
      'error': tail[-500:]}


def main(argv):
  del argv
  os.makedirs(FLAGS.out, exist_ok=True)
  start = time.time()
  results = {'reduced': FLAGS.reduced, 'date': time.strftime('%Y-%m-%d %H:%M')}
  for name, part in (('exactness', exactness), ('determinism', determinism),
                     ('throughput', throughput), ('data', data_rate)):
    try:
      results[name] = part()
    except subprocess.TimeoutExpired as error:
      results[name] = {'error': f'timed out after {error.timeout} s'}
  results['seconds'] = round(time.time() - start, 1)
  print(json.dumps(results))


if __name__ == '__main__':
  app.run(main)
