"""Where one batch of the lossless coder's time goes: encode milliseconds per
batch of B images on a long stack, the share of the layers' networks in
it, the same networks called back to back on the same inputs, and the
model's scoring of the batch (one graph).

    python bench/coder_batches.py --model_dir=/tmp/runs/gray32 --batch_sizes=1,8,64

Each figure is the median of --repeats batches once every graph is traced.
Prints a table, then one JSON line with the CPU.
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
from real_nvp.compression import Compressor  # noqa: E402

flags.DEFINE_string('checkpoint', 'best', 'Which checkpoint.')
flags.DEFINE_list('batch_sizes', ['1', '8', '64'], 'B to time.')
flags.DEFINE_integer('repeats', 10, 'Batches timed per B.', lower_bound=1)

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
    graphs = [(clock.traced, layer, x, context) for layer, x, context in calls]
    back_to_back = _median_ms(lambda: [tuple(np.asarray(t) for t in traced(layer, x, context))
                                       for traced, layer, x, context in graphs],
                              FLAGS.repeats)
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
  print(json.dumps({**hardware.cpu_info().to_json(), 'rows': rows}))


if __name__ == '__main__':
  cli_flags.define_flags()
  app.run(main)
