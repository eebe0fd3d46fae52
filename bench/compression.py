"""Real files from trained models at N = 1, 10, 100 and the whole held-out
split: their size beside the model's bound and the conventional codecs, and
the coder's speed beside the model's own scoring rate.

    pip install -r bench/requirements.txt   # JPEG-XL (imagecodecs)
    python bench/compression.py --model_dirs=runs/digits,runs/digits_variational

For each model directory (its --checkpoint, best by default, and its own
held-out split) and each N (the first N images): `Compressor` encode and
decode at --coder_batch_size on the bits-back path (checked equal; the file
a user gets is the smaller of that and WebP's, as the fallback picks), their
rates once each layer's graph is traced (as the scoring rate is; the
tracing, once per process and model, is the `set-up` column) and encode's
split (the images and seconds up to the first full batch: the chain's start
and its ramp of smaller batches; the rate after it), the bound on the same images (the
mean over --draws single draws, K = 1) and the importance-weighted estimate
(K = --dequant_samples), the model's scoring rate at the same batch
(`bits_per_dim_estimates`, K = 1, traced once) and at the coder's own
batches (the start images as one batch, then the ramp's sizes and the full
ones: what the networks alone cost in the chain's batch sizes), and PNG (Pillow,
optimize=True), WebP lossless (Pillow, method 6) and JPEG-XL lossless
(imagecodecs, effort 7) of the same images, each image alone and all in
one mosaic (a near-square grid). Prints a table, then one JSON line with
the CPU.
"""

import io
import json
import os
import sys
import time

import numpy as np
from absl import app, flags
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from real_nvp import best_checkpoint, checkpoints, cli_flags, hardware, image_codec  # noqa: E402
from real_nvp.compression import Compressor, read_header  # noqa: E402

flags.DEFINE_list('model_dirs', ['runs/digits'], 'Trained runs to measure.')
flags.DEFINE_string('checkpoint', 'best', 'Which checkpoint of each run.')
flags.DEFINE_list('counts', ['1', '10', '100', '0'], 'N; 0: the whole split.')
flags.DEFINE_integer('coder_batch_size', 64, 'Images per network call.')
flags.DEFINE_bool('speed_only', False, 'Only the coder\'s and the scoring rates and '
                  'the file sizes (no bounds, no other codecs): for a large N.')
flags.DEFINE_enum('split', 'eval', ['eval', 'train'], 'Which split of each run.')
flags.DEFINE_integer('every', 1, 'Every k-th image of the split (a large N from '
                     'overlapping training patches).', lower_bound=1)
flags.DEFINE_integer('draws', 16, 'Single draws averaged for the bound (K = 1).')
flags.DEFINE_integer('dequant_samples', 16, 'K of the importance-weighted estimate.')
FLAGS = flags.FLAGS


def _pillow(fmt, **options):
  def size(array):
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(
        buffer, fmt, **options)
    return 8 * buffer.tell()
  return size


def _jpeg_xl(array):
  import imagecodecs  # pylint: disable=g-import-not-at-top
  return 8 * len(imagecodecs.jpegxl_encode(array[..., 0] if array.shape[-1] == 1 else array,
                                            lossless=True, effort=7))


CODECS = {'png': _pillow('PNG', optimize=True),
          'webp': _pillow('WEBP', lossless=True, quality=100, method=6),
          'jxl': _jpeg_xl}


_CODEC_COLUMNS = [f'{name}_{how}' for name in CODECS for how in ('each', 'mosaic')]


def _codec_bits_per_dim(images):
  out = {}
  for name, size in CODECS.items():
    try:
      out[f'{name}_each'] = sum(size(image) for image in images) / images.size
      out[f'{name}_mosaic'] = size(image_codec.mosaic(images)) / images.size
    except ImportError:  # imagecodecs not installed
      out[f'{name}_each'] = out[f'{name}_mosaic'] = float('nan')
  return out


def _bounds(model, images, batch):
  """Per image: (the mean of FLAGS.draws single-draw bounds, the IW estimate
  with K samples), bits/dim."""
  def per_image(fn):
    return np.concatenate([fn(images[b:b + batch], b) for b in range(0, len(images), batch)])
  single = np.mean([per_image(lambda x, b, s=s: model.bits_per_dim_estimates(
      x, seed=(s, b))['bits_per_dim'].numpy()) for s in range(FLAGS.draws)], axis=0)
  iw = per_image(lambda x, b: model.bits_per_dim_estimates(
      x, seed=(99, b), num_samples=FLAGS.dequant_samples)['bits_per_dim_iw'].numpy())
  return single, iw


def _scoring_rate(model, images, batch):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  score = tf.function(lambda x: model.bits_per_dim_estimates(x, seed=(0, 0)))
  chunks = [images[b:b + batch] for b in range(0, len(images), batch)]
  for chunk in chunks[:2]:
    score(chunk)  # trace (and the last, shorter batch)
  score(chunks[-1])
  start = time.perf_counter()
  for chunk in chunks:
    score(chunk)['bits_per_dim'].numpy()
  return len(images) / (time.perf_counter() - start)


def _scoring_rate_in_batches(model, images, sizes):
  """Images/s of scoring `images` in consecutive batches of `sizes`, one
  graph for all sizes (traced on one image first; each new size pays its
  kernels' set-up, as the coder's batches do)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  score = tf.function(lambda x: model.bits_per_dim_estimates(x, seed=(0, 0)),
                      input_signature=[tf.TensorSpec((None,) + images.shape[1:], tf.uint8)])
  score(images[:1])['bits_per_dim'].numpy()
  start, position = time.perf_counter(), 0
  for size in sizes:
    score(images[position:position + size])['bits_per_dim'].numpy()
    position += size
  return len(images) / (time.perf_counter() - start)


def _ramp_split(marks, batch):
  """Where encode's time went (`marks`: seconds and images done after each
  batch): up to the first batch of `batch` images (the chain's start, the
  set-up and the ramp of smaller batches), and the rest."""
  ramp_seconds, ramp_images = 0., 0
  for seconds, done in marks:
    if done - ramp_images >= batch:
      break
    ramp_seconds, ramp_images = seconds, done
  rest_seconds, rest_images = (marks[-1][0] - ramp_seconds, marks[-1][1] - ramp_images
                               ) if marks else (0., 0)
  return {'ramp_images': ramp_images, 'ramp_encode_seconds': ramp_seconds,
          'after_ramp_encode_images_per_sec': (rest_images / rest_seconds if rest_images
                                               else float('nan'))}


def _measure(model_dir):
  model, step, _ = checkpoints.restore_model(
      model_dir, best_checkpoint.resolve_checkpoint(model_dir, FLAGS.checkpoint))
  source = cli_flags.run_data_source(model_dir, FLAGS.split)
  split = np.asarray(source.eval.images)[::FLAGS.every]
  batch = FLAGS.coder_batch_size
  rows = []
  for count in (int(c) or len(split) for c in FLAGS.counts):
    images = split[:count]
    # The bits-back path always (its speed and net); the file a user gets is
    # the smaller of it and the codec's (what Compressor's fallback picks).
    compressor = Compressor(model, batch_size=batch, fallback=False)
    start = time.perf_counter()
    compressor.decode(compressor.encode(split[:1])[0])  # traces every layer's graph
    set_up_seconds = time.perf_counter() - start
    marks = []  # (seconds, images done) after each batch
    start = time.perf_counter()
    blob, info = compressor.encode(
        images, progress=lambda done, total: marks.append((time.perf_counter() - start, done)))
    encode_seconds = time.perf_counter() - start
    ramp = _ramp_split(marks, batch)
    start = time.perf_counter()
    decoded = compressor.decode(blob)
    decode_seconds = time.perf_counter() - start
    if not np.array_equal(decoded, images):
      raise AssertionError(f'{model_dir}: N={count} did not decode to the same images')
    single, iw = ((np.full(count, np.nan),) * 2 if FLAGS.speed_only else
                  _bounds(model, images, batch))
    dims = images.size
    start = info['start_images']
    initial = info['start_bits'] - float(np.sum(single[:start])) * images[0].size
    codec_file = info['header_bits'] + 8 * len(image_codec.encode(images))
    rows.append({
        'run': os.path.basename(os.path.normpath(model_dir)), 'step': step,
        'dequantization': model.config.dequantization, 'shape': list(images.shape[1:]),
        'levels': model.config.levels, 'images': count, 'batch_size': batch,
        'bound': float(np.mean(single)), 'iw': float(np.mean(iw)),
        'file': min(info['file_bits'], codec_file) / dims,
        'bits_back_file': info['file_bits'] / dims,
        'net': (info['file_bits'] - initial) / dims, 'initial_bits': initial,
        'start_images': info['start_images'], 'header_bits': info['header_bits'],
        'set_up_seconds': set_up_seconds, 'encode_images_per_sec': count / encode_seconds,
        'decode_images_per_sec': count / decode_seconds, **ramp,
        'scoring_images_per_sec': _scoring_rate(model, images, batch),
        'scoring_at_coder_batches_images_per_sec': _scoring_rate_in_batches(
            model, images, (start,) + read_header(blob)[0].batches()),
        **({name: float('nan') for name in _CODEC_COLUMNS} if FLAGS.speed_only else
           _codec_bits_per_dim(images))})
    print(json.dumps(rows[-1]), flush=True)
  return rows


def main(argv):
  del argv
  rows = [row for model_dir in FLAGS.model_dirs for row in _measure(model_dir)]
  print('| run | deq | N | bound K=1 | IW K=16 | file (all-in) | bits-back file | net | '
        'net / bound | start imgs | enc / dec / score img/s | score at the coder\'s batches | '
        'ramp imgs, s; enc img/s after | '
        'set-up s | PNG each / mosaic | '
        'WebP each / mosaic | JPEG-XL each / mosaic |')
  print('|' + '---|' * 17)
  for r in rows:
    print(f"| {r['run']} | {r['dequantization']} | {r['images']} | {r['bound']:.4f} | "
          f"{r['iw']:.4f} | {r['file']:.4f} | {r['bits_back_file']:.4f} | {r['net']:.4f} | "
          f"{r['net'] / r['bound']:.4f} | "
          f"{r['start_images']} | {r['encode_images_per_sec']:.0f} / "
          f"{r['decode_images_per_sec']:.0f} / {r['scoring_images_per_sec']:.0f} | "
          f"{r['scoring_at_coder_batches_images_per_sec']:.0f} | "
          f"{r['ramp_images']}, {r['ramp_encode_seconds']:.2f}; "
          f"{r['after_ramp_encode_images_per_sec']:.0f} | "
          f"{r['set_up_seconds']:.1f} | "
          f"{r['png_each']:.3f} / {r['png_mosaic']:.3f} | {r['webp_each']:.3f} / "
          f"{r['webp_mosaic']:.3f} | {r['jxl_each']:.3f} / {r['jxl_mosaic']:.3f} |")
  print(json.dumps({**hardware.cpu_info().to_json(), 'rows': rows}))


if __name__ == '__main__':
  cli_flags.define_flags()
  app.run(main)
