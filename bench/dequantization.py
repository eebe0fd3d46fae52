"""Uniform vs variational dequantization: the same run twice, then held-out
bits/dim as the bound and as the K-draw importance-weighted estimate.

    python bench/dequantization.py                                  # digits, default steps
    python bench/dequantization.py --dataset=digits32 --train_steps=600 \\
        --extra=--batch_size=32,--num_scales=2,--num_blocks=2,--feature_maps=16

`--dataset=digits32` writes the digits upscaled 4x (nearest neighbour) to
32x32, 17 levels, as an npz under --out_dir and trains on it. Each
configuration runs `train.py` then `eval.py --dequant_samples=K`
(same seed and steps for both); the table and one JSON line are printed.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from real_nvp import data  # noqa: E402

flags.DEFINE_string('dataset', 'digits', 'digits32, or any --dataset of train.py.')
flags.DEFINE_integer('train_steps', 1500, 'Training steps of each run.')
flags.DEFINE_integer('dequant_samples', 16, 'K of the importance-weighted estimate.')
flags.DEFINE_list('dequantization', ['uniform', 'variational'], 'Runs to compare.')
flags.DEFINE_list('extra', [], 'More train.py flags, shared by every run.')
flags.DEFINE_string('out_dir', 'runs/dequantization_bench', 'Model directories.')
FLAGS = flags.FLAGS


def _digits32(out_dir):
  source = data.load_dataset('digits')
  path = os.path.join(out_dir, 'digits32.npz')
  upscale = lambda images: images.repeat(4, axis=1).repeat(4, axis=2)  # noqa: E731
  np.savez(path, train=upscale(source.train.images), test=upscale(source.eval.images),
           levels=np.array(source.levels))
  return f'npz:{path}'


def _run(*args):
  start = time.time()
  subprocess.run([sys.executable, *args], cwd=ROOT, check=True,
                 env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  return time.time() - start


def main(argv):
  del argv
  os.makedirs(FLAGS.out_dir, exist_ok=True)
  dataset = _digits32(FLAGS.out_dir) if FLAGS.dataset == 'digits32' else FLAGS.dataset
  rows = []
  for dequantization in FLAGS.dequantization:
    model_dir = os.path.join(FLAGS.out_dir, f'{FLAGS.dataset}_{dequantization}')
    seconds = _run('train.py', f'--dataset={dataset}', f'--model_dir={model_dir}',
                   f'--train_steps={FLAGS.train_steps}',
                   f'--dequantization={dequantization}', *FLAGS.extra)
    _run('eval.py', f'--model_dir={model_dir}', '--nofigures',
         f'--dequant_samples={FLAGS.dequant_samples}')
    with open(os.path.join(model_dir, 'eval_results.json')) as f:
      results = json.load(f)
    rows.append({'dataset': FLAGS.dataset, 'dequantization': dequantization,
                 'train_seconds': seconds, **results})
  print(f"\n{'dequantization':<16}{'bound':>18}{'IW, K=' + str(FLAGS.dequant_samples):>20}"
        f"{'train s':>10}")
  for row in rows:
    print(f"{row['dequantization']:<16}"
          f"{row['bits_per_dim']:>10.4f} ± {row['std_error']:.4f}"
          f"{row['bits_per_dim_iw']:>12.4f} ± {row['std_error_iw']:.4f}"
          f"{row['train_seconds']:>10.0f}")
  print(json.dumps(rows))


if __name__ == '__main__':
  app.run(main)
