"""Where one batch of the lossless coder's time goes: encode milliseconds per
batch of B images on a long stack, the share of the layers' networks in
it, the same networks called back to back on the same inputs, and the
model's scoring of the batch (one graph).

    python bench/coder_batches.py --model_dir=/tmp/runs/gray32 --batch_sizes=1,8,64

Each figure is the median of --repeats batches once every graph is traced.
Prints a table, then one JSON line with the CPU.

With --file_images=N, also a whole file of the split's first N images at
--file_batch_size: its encode rate, and the floor that the layers' networks set
on it: the same networks called back to back at every batch size the file
codes (its ramp of small batches included), summed over the file's
batches, against the model's scoring at --file_batch_size. No coder of these
networks with this chain start codes the file faster than that floor (the
variational dequantizer's context network, one call a batch, is left out
of it, so if anything it is high).

    python bench/coder_batches.py --model_dir=runs/digits --batch_sizes=1 --file_images=1000 --split=train
"""

import json
import os
import sys
import time

import numpy as np
from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from real_nvp import best_checkpoint, checkpoints, cli_flags, hardware  # noqa: E402
from real_nvp.ans_stream import Stream  # noqa: E402
from real_nvp.compressed_file import read_header  # noqa: E402
from real_nvp.compression import Compressor  # noqa: E402

flags.DEFINE_string('checkpoint', 'best', 'Which checkpoint.')
flags.DEFINE_list('batch_sizes', ['1', '8', '64'], 'B to time.')
flags.DEFINE_integer('repeats', 10, 'Batches timed per B.', lower_bound=1)
flags.DEFINE_integer('file_images', 0, 'N > 0: the whole-file floor of N images (above).',
                     lower_bound=0)
flags.DEFINE_integer('file_batch_size', 64, 'The whole file\'s batch size.', lower_bound=1)
flags.DEFINE_enum('split', 'eval', ['eval', 'train'], 'The whole file\'s split.')

FLAGS = flags.FLAGS


def _median_ms(function, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    function()
    times.append(time.perf_counter() - start)
  return 1000. * float(np.median(times))


class _NetworkClock:
  """Wraps the coder's per-layer graphs: their time, and their inputs."""

  def __init__(self, coder):
    self.traced = coder.traced
    self.seconds, self.calls = 0., []
    coder.traced = self

  def __call__(self, layer, x, context):
    start = time.perf_counter()
    out = self.traced(layer, x, context)
    out = tuple(np.asarray(tensor) for tensor in out)
    self.seconds += time.perf_counter() - start
    if out:
      self.calls.append((layer, x, context))
    return out


def _back_to_back(traced, calls, size=None):
  """The recorded graph calls on their first `size` images, back to back."""
  return [tuple(np.asarray(t) for t in traced(layer, x[:size], None if context is None
                                              else context[:size]))
          for layer, x, context in calls]


def _file_floor(model, step, score):
  """The whole file's encode rate beside its networks-alone floor (the module
  docstring)."""
  source = cli_flags.run_data_source(FLAGS.model_dir, FLAGS.split)
  images = np.asarray(source.eval.images)[:FLAGS.file_images]
  compressor = Compressor(model, batch_size=FLAGS.file_batch_size, fallback=False)
  compressor.encode(images)  # traces every graph at every size
  start = time.perf_counter()
  data, _ = compressor.encode(images)
  seconds = time.perf_counter() - start
  sizes = read_header(data)[0].batches()
  if not sizes:
    raise app.UsageError(f'--file_images={len(images)}: the chain\'s start codes every '
                         'image, there is no bits-back batch to time.')
  coder = compressor.batch_coder
  clock = _NetworkClock(coder)
  words = np.random.default_rng(0).integers(1, 2 ** 32, 48 * images.size // 32 + 65536,
                                            np.uint32)
  coder.encode(Stream(encoding=True, words=words), images[:max(sizes)])
  by_size = {size: _median_ms(lambda: _back_to_back(clock.traced, clock.calls, size),
                              FLAGS.repeats) / 1000. for size in set(sizes)}
  floor = sum(by_size[size] for size in sizes)
  batch = images[np.arange(FLAGS.file_batch_size) % len(images)]
  scoring = FLAGS.file_batch_size / (
      _median_ms(lambda: score(batch)['bits_per_dim'].numpy(), FLAGS.repeats) / 1000.)
  row = {'run': os.path.basename(os.path.normpath(FLAGS.model_dir)), 'step': step,
         'file_images': len(images), 'batch_size': FLAGS.file_batch_size, 'batches': len(sizes),
         'batches_below_batch_size': sum(size < FLAGS.file_batch_size for size in sizes),
         'encode_images_per_sec': len(images) / seconds,
         'networks_floor_images_per_sec': len(images) / floor,
         'networks_floor_seconds_below_batch_size': sum(
             by_size[size] for size in sizes if size < FLAGS.file_batch_size),
         'scoring_images_per_sec': scoring}
  row['encode_over_scoring'] = row['encode_images_per_sec'] / scoring
  row['networks_floor_over_scoring'] = row['networks_floor_images_per_sec'] / scoring
  return row


def main(argv):
  del argv
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  model, step, _ = checkpoints.restore_model(
      FLAGS.model_dir, best_checkpoint.resolve_checkpoint(FLAGS.model_dir, FLAGS.checkpoint))
  images = np.asarray(cli_flags.run_data_source(FLAGS.model_dir, 'eval').eval.images)
  score = tf.function(lambda x: model.bits_per_dim_estimates(x, seed=(0, 0)))
  rows = []
  for batch_size in (int(b) for b in FLAGS.batch_sizes):
    batch = images[np.arange(batch_size) % len(images)]
    compressor = Compressor(model, batch_size=batch_size, fallback=False)
    words = np.random.default_rng(0).integers(
        1, 2 ** 32, (FLAGS.repeats + 2) * 48 * batch.size // 32 + 65536, np.uint32)
    stream = Stream(encoding=True, words=words)
    coder = compressor.batch_coder
    clock = _NetworkClock(coder)
    coder.encode(stream, batch)
    calls, clock.calls = clock.calls, []
    clock.seconds = 0.
    encode = _median_ms(lambda: coder.encode(stream, batch), FLAGS.repeats)
    networks = 1000. * clock.seconds / FLAGS.repeats
    back_to_back = _median_ms(lambda: _back_to_back(clock.traced, calls), FLAGS.repeats)
    score(batch)
    scoring = _median_ms(lambda: score(batch)['bits_per_dim'].numpy(), FLAGS.repeats)
    rows.append({'run': os.path.basename(os.path.normpath(FLAGS.model_dir)), 'step': step,
                 'batch_size': batch_size, 'encode_ms': encode,
                 'networks_in_coder_ms': networks, 'networks_back_to_back_ms': back_to_back,
                 'scoring_ms': scoring, 'encode_over_scoring_rate': scoring / encode})
    print(json.dumps(rows[-1]), flush=True)
  print('| run | B | encode ms | networks in it ms | the same networks back to back ms | '
        'scoring ms | encode / scoring rate |')
  print('|' + '---|' * 7)
  for r in rows:
    print(f"| {r['run']} | {r['batch_size']} | {r['encode_ms']:.1f} | "
          f"{r['networks_in_coder_ms']:.1f} | {r['networks_back_to_back_ms']:.1f} | "
          f"{r['scoring_ms']:.1f} | {r['encode_over_scoring_rate']:.2f} |")
  result = {**hardware.cpu_info().to_json(), 'rows': rows}
  if FLAGS.file_images:
    result['file'] = _file_floor(model, step, score)
    f = result['file']
    print(f"whole file of {f['file_images']} images at B = {f['batch_size']}: "
          f"{f['batches']} batches ({f['batches_below_batch_size']} smaller); encode "
          f"{f['encode_images_per_sec']:.0f} img/s, the networks alone at its batch sizes "
          f"{f['networks_floor_images_per_sec']:.0f} img/s "
          f"({f['networks_floor_seconds_below_batch_size']:.2f} s below B), scoring "
          f"{f['scoring_images_per_sec']:.0f} img/s: {f['encode_over_scoring']:.2f} and "
          f"{f['networks_floor_over_scoring']:.2f} of it")
  print(json.dumps(result))


if __name__ == '__main__':
  cli_flags.define_flags()
  app.run(main)
