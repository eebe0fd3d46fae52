"""What the coder's grids cost, apart from the chain's start and the header:
the bits that batches of bits-back coding leave on a stack of random words,
against the model's bound on the same images, for several precisions, and
the ramp's take and gain (compressed_file.Ramp) at each.

    python bench/compression.py ...            # the files a user gets
    python bench/coding_loss.py --model_dir=runs/digits --split=train \\
        --num_images=1000 --dequantization_precisions=8,4 --latent_precisions=0,12

A single draw of the noise per image scatters the code length by about
0.2 % over 1,000 digits: each precision is coded on --stacks stacks of
different random words (other draws), and the table gives their mean and
the standard error of that mean. Prints a table, then one JSON line with
the CPU.
"""

import itertools
import json
import os
import sys

import numpy as np
from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from real_nvp import best_checkpoint, checkpoints, cli_flags, hardware  # noqa: E402
from real_nvp.ans_stream import Stream  # noqa: E402
from real_nvp.compression import Compressor, Precisions  # noqa: E402

flags.DEFINE_string('checkpoint', 'best', 'Which checkpoint.')
flags.DEFINE_enum('split', 'train', ['eval', 'train'], 'Which split of the run.')
flags.DEFINE_integer('every', 1, 'Every k-th image of the split.', lower_bound=1)
flags.DEFINE_integer('num_images', 1000, 'The first N images (after --every).',
                     lower_bound=1)
flags.DEFINE_list('dequantization_precisions', ['0'],
                  'k_u to compare; 0: the default for the model.')
flags.DEFINE_list('latent_precisions', ['0'],
                  'k to compare (at each k_u); 0: the default for the model.')
flags.DEFINE_integer('stacks', 4, 'Stacks of random words (draws) per precision.',
                     lower_bound=1)
flags.DEFINE_integer('coder_batch_size', 64, 'Images per network call.')
flags.DEFINE_integer('draws', 16, 'Single draws averaged for the bound (K = 1).')

FLAGS = flags.FLAGS


def _bound(model, images, batch):
  return np.mean([np.concatenate([
      model.bits_per_dim_estimates(images[b:b + batch], seed=(s, b))['bits_per_dim'].numpy()
      for b in range(0, len(images), batch)]) for s in range(FLAGS.draws)])


def _payload_over_bound(compressor, images, bound, seed):
  """Bits the batches leave on a stack of random words, / (bound N D)."""
  words = np.random.default_rng(seed).integers(1, 2 ** 32, 48 * images.size // 32 + 65536,
                                               np.uint32)
  stream = Stream(encoding=True, words=words)
  before = stream.valid_bits()
  batch = compressor.batch_size
  for b in range(0, len(images), batch):
    compressor.batch_coder.encode(stream, images[b:b + batch])
  return (stream.valid_bits() - before) / (images.size * bound)


def main(argv):
  del argv
  model, step, _ = checkpoints.restore_model(
      FLAGS.model_dir, best_checkpoint.resolve_checkpoint(FLAGS.model_dir, FLAGS.checkpoint))
  source = cli_flags.run_data_source(FLAGS.model_dir, FLAGS.split)
  images = np.asarray(source.eval.images)[::FLAGS.every][:FLAGS.num_images]
  batch = FLAGS.coder_batch_size
  bound = _bound(model, images, batch)
  dims = int(np.prod(images.shape[1:]))
  rows = []
  for k_u, k in itertools.product(*([int(p) for p in values] for values in (
      FLAGS.dequantization_precisions, FLAGS.latent_precisions))):
    compressor = Compressor(model, Precisions(dequantization=k_u, latent=k), batch_size=batch)
    ratios = [float(_payload_over_bound(compressor, images, bound, seed))
              for seed in range(FLAGS.stacks)]
    ramp = compressor._ramp(images[:min(batch, len(images))])  # pylint: disable=protected-access
    precisions = compressor.precisions
    rows.append({'run': os.path.basename(os.path.normpath(FLAGS.model_dir)), 'step': step,
                 'dequantization': model.config.dequantization, 'images': len(images),
                 'bound': float(bound), 'dequantization_precision': precisions.dequantization,
                 'latent_precision': precisions.latent, 'payload_over_bound': float(
                     np.mean(ratios)), 'standard_error': float(
                         np.std(ratios, ddof=1) / np.sqrt(len(ratios))
                         if len(ratios) > 1 else float('nan')),
                 'stacks': ratios, 'take_per_dim': ramp.take / dims,
                 'gain_per_dim': ramp.gain / dims})
    print(json.dumps(rows[-1]), flush=True)
  print('| run | deq | N | bound | k_u | k | payload / bound | ± | take bits/dim | '
        'gain bits/dim |')
  print('|' + '---|' * 10)
  for r in rows:
    print(f"| {r['run']} | {r['dequantization']} | {r['images']} | {r['bound']:.4f} | "
          f"{r['dequantization_precision']} | {r['latent_precision']} | "
          f"{r['payload_over_bound']:.4f} | {r['standard_error']:.4f} | "
          f"{r['take_per_dim']:.1f} | {r['gain_per_dim']:.2f} |")
  print(json.dumps({**hardware.cpu_info().to_json(), 'rows': rows}))


if __name__ == '__main__':
  cli_flags.define_flags()
  app.run(main)
