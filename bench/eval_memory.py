"""Peak memory of scoring with K dequantization draws per image.

    python bench/eval_memory.py                                   # digits preset
    python bench/eval_memory.py --preset=cifar10 --batch_size=64 --draws=1,16,256

Each K runs in a fresh process (so the peak resident set is its own): a
randomly initialised model of the preset scores one batch of random images
with `RealNVP.bits_per_dim_estimates(..., num_samples=K)` in inference mode,
as eval.py and the SavedModel do, in one tf.function. Prints a table and one
JSON line with the CPU, and for each K the peak RSS (MB), the peak's growth
over K = the smallest K, and the seconds per draw.
"""

import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

flags.DEFINE_string('preset', 'digits', 'Architecture preset.')
flags.DEFINE_integer('batch_size', 256, 'Images scored at once.')
flags.DEFINE_list('draws', ['1', '16', '256', '4096'], 'The K to measure.')
flags.DEFINE_integer('one', None, 'Internal: measure this K in this process.')
FLAGS = flags.FLAGS


def _measure(num_samples):
  import real_nvp  # noqa: F401  before TensorFlow: it chooses the CPU kernels
  import numpy as np
  import tensorflow as tf
  from real_nvp import RealNVP, config
  model = RealNVP(config.PRESETS[FLAGS.preset])
  shape = (FLAGS.batch_size,) + model.config.image_shape
  images = tf.constant(np.random.default_rng(0).integers(
      0, model.config.levels, shape), tf.uint8)
  score = tf.function(lambda k: model.bits_per_dim_estimates(images, 0, k))
  score(tf.constant(1))  # Traces once; K is a tensor.
  start = time.time()
  bpd = score(tf.constant(num_samples))['bits_per_dim_iw'].numpy()
  seconds = time.time() - start
  assert np.all(np.isfinite(bpd))
  peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(json.dumps({'draws': num_samples, 'peak_rss_mb': round(peak_mb, 1),
                    'seconds_per_draw': round(seconds / num_samples, 4)}))


def main(argv):
  del argv
  if FLAGS.one is not None:
    _measure(FLAGS.one)
    return
  from real_nvp import hardware  # noqa: E402
  rows = []
  for num_samples in sorted(int(k) for k in FLAGS.draws):
    output = subprocess.run(
        [sys.executable, os.path.abspath(__file__), f'--one={num_samples}',
         f'--preset={FLAGS.preset}', f'--batch_size={FLAGS.batch_size}'],
        check=True, capture_output=True, text=True).stdout
    rows.append(json.loads(output.strip().splitlines()[-1]))
  base = rows[0]['peak_rss_mb']
  print(f'{"K":>6} {"peak RSS MB":>12} {"growth MB":>10} {"s/draw":>8}')
  for row in rows:
    row['growth_mb'] = round(row['peak_rss_mb'] - base, 1)
    print(f'{row["draws"]:>6} {row["peak_rss_mb"]:>12} {row["growth_mb"]:>10} '
          f'{row["seconds_per_draw"]:>8}')
  print(json.dumps({'preset': FLAGS.preset, 'batch_size': FLAGS.batch_size,
                    **hardware.cpu_info().to_json(), 'rows': rows}))


if __name__ == '__main__':
  app.run(main)
