"""Real files from trained models: their size in bits/dim beside the model's
bound, the importance-weighted estimate, PNG and lossless WebP.

    python bench/compression.py --model_dirs=runs/digits,runs/digits_variational

For each model directory (its --checkpoint, best by default, and its own
held-out split): `python -m real_nvp.compress encode` then `decode` (checked
equal to the split's images), `eval.py --dequant_samples=K` for the bound
and the IW estimate, and Pillow's PNG (optimize=True) and lossless WebP
(method 6) of the same images, each image alone and all in one mosaic
(a near-square grid). Prints a table, then one JSON line with the CPU.
"""

import io
import json
import math
import os
import subprocess
import sys

import numpy as np
from absl import app, flags
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from real_nvp import hardware  # noqa: E402

flags.DEFINE_list('model_dirs', ['runs/digits'], 'Trained runs to measure.')
flags.DEFINE_string('checkpoint', 'best', 'Which checkpoint of each run.')
flags.DEFINE_integer('dequant_samples', 16, 'K of the importance-weighted estimate.')
flags.DEFINE_string('out_dir', 'runs/compression_bench', 'Where the files go.')
FLAGS = flags.FLAGS


def _run(*args):
  result = subprocess.run([sys.executable, *args], cwd=ROOT, check=True, text=True,
                          capture_output=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  return json.loads(result.stdout.strip().splitlines()[-1])


def _image_bits(images, fmt, **options):
  def size(array):
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(
        buffer, fmt, **options)
    return 8 * buffer.tell()

  count = len(images)
  columns = math.ceil(math.sqrt(count))
  rows = math.ceil(count / columns)
  mosaic = np.zeros((rows * images.shape[1], columns * images.shape[2], images.shape[3]),
                    np.uint8)
  for index, image in enumerate(images):
    r, c = divmod(index, columns)
    mosaic[r * images.shape[1]:(r + 1) * images.shape[1],
           c * images.shape[2]:(c + 1) * images.shape[2]] = image
  dims = images.size
  return sum(size(image) for image in images) / dims, size(mosaic) / dims


def main(argv):
  del argv
  os.makedirs(FLAGS.out_dir, exist_ok=True)
  rows = []
  for model_dir in FLAGS.model_dirs:
    name = os.path.basename(os.path.normpath(model_dir))
    compressed = os.path.join(FLAGS.out_dir, f'{name}.rnvz')
    decoded = os.path.join(FLAGS.out_dir, f'{name}.npz')
    common = [f'--model_dir={model_dir}', f'--checkpoint={FLAGS.checkpoint}']
    encode = _run('-m', 'real_nvp.compress', 'encode', *common, f'--output={compressed}')
    decode = _run('-m', 'real_nvp.compress', 'decode', *common, f'--input={compressed}',
                  f'--output={decoded}')
    subprocess.run([sys.executable, 'eval.py', *common, '--nofigures',
                    f'--dequant_samples={FLAGS.dequant_samples}'], cwd=ROOT, check=True,
                   capture_output=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
    with open(os.path.join(model_dir, 'eval_results.json')) as f:
      evaluation = json.load(f)
    images = np.load(decoded)['images']
    png_each, png_mosaic = _image_bits(images, 'PNG', optimize=True)
    webp_each, webp_mosaic = _image_bits(images, 'WEBP', lossless=True, quality=100,
                                         method=6)
    rows.append({
        'run': name, 'dequantization': encode['dequantization'],
        'images': encode['num_images'], 'dims': encode['num_dims'],
        'bound': evaluation['bits_per_dim'], 'bound_std_error': evaluation['std_error'],
        'iw': evaluation['bits_per_dim_iw'], 'iw_std_error': evaluation['std_error_iw'],
        'model_bits_per_dim_same_images': encode['model_bits_per_dim'],
        'file': encode['bits_per_dim_file'], 'net': encode['bits_per_dim_net'],
        'net_over_bound': encode['bits_per_dim_net'] / encode['model_bits_per_dim'],
        'initial_bits': encode['initial_bits'], 'header_bits': encode['header_bits'],
        'encode_images_per_sec': encode['encode_images_per_sec'],
        'decode_images_per_sec': decode['decode_images_per_sec'],
        'png_each': png_each, 'png_mosaic': png_mosaic,
        'webp_each': webp_each, 'webp_mosaic': webp_mosaic,
        'checkpoint_step': encode['checkpoint_step']})
  header = ('run', 'deq', 'bound', f'IW K={FLAGS.dequant_samples}', 'file', 'net',
            'net/bound', 'init bits', 'enc img/s', 'dec img/s', 'PNG each/mosaic',
            'WebP each/mosaic')
  print(' | '.join(header))
  for r in rows:
    print(f"{r['run']} | {r['dequantization']} | {r['bound']:.4f} ± {r['bound_std_error']:.4f} | "
          f"{r['iw']:.4f} | {r['file']:.4f} | {r['net']:.4f} | {r['net_over_bound']:.4f} | "
          f"{r['initial_bits']:.0f} | {r['encode_images_per_sec']:.1f} | "
          f"{r['decode_images_per_sec']:.1f} | {r['png_each']:.3f} / {r['png_mosaic']:.3f} | "
          f"{r['webp_each']:.3f} / {r['webp_mosaic']:.3f}")
  print(json.dumps({**hardware.cpu_info().to_json(), 'rows': rows}))


if __name__ == '__main__':
  app.run(main)
