"""Throughput, memory and utilisation of Real NVP training, evaluation and sampling.

    python bench/throughput.py --preset=cifar10 --batch_size=64
    python bench/throughput.py --preset=digits --mode=all --steps=20
    python bench/throughput.py --image_shape=32,32,1 --num_scales=2 \\
        --feature_maps=32 --num_blocks=4 --mode=train,eval
    python bench/throughput.py --mode=data

Prints a table, then one JSON line. Images/s are medians over the timed steps
after --warmup; FLOPs are an analytic count of the s/t networks' convolutions
(2 * k * k * c_in * c_out per output pixel, as each layer reports it through
`flops_per_example`, the dequantizer's included; a training step counted as
3x the forward pass), which dominate the flow's arithmetic. Utilisation is achieved
training GFLOP/s over the matmul peak measured in the same run (float32,
or the s/t networks' dtype with --mixed_precision, whose peak is reported
beside the float32 one); conv_utilization is the same over a 3x3 convolution
(forward and both gradients) at the first scale's shape, the kernel the
step is made of.
Random images of the preset's shape stand in for data (--mode=data measures
the input pipeline on its own).
"""

import json
import os
import resource
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import real_nvp  # noqa: E402,F401  before TensorFlow: it chooses the CPU kernels
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from real_nvp import config as config_lib  # noqa: E402
from real_nvp import data, distribute  # noqa: E402
from real_nvp.config import TrainConfig  # noqa: E402
from real_nvp.train_lib import Trainer  # noqa: E402

flags.DEFINE_enum('preset', 'digits', sorted(config_lib.PRESETS), 'Architecture preset.')
flags.DEFINE_integer('batch_size', 64, 'Global batch size.')
flags.DEFINE_integer('steps', 10, 'Timed steps per mode.')
flags.DEFINE_integer('warmup', 3, 'Untimed steps first (tracing, autotuning).')
flags.DEFINE_list('mode', ['train', 'eval', 'sample'],
                  'Any of train, eval, sample, data; or all.')
flags.DEFINE_bool('xla', False, 'jit_compile the forward/backward pass.')
flags.DEFINE_enum('mixed_precision', None, ['bfloat16', 'float16'],
                  'Compute dtype of the s/t networks (flow arithmetic stays float32).')
flags.DEFINE_enum('strategy', 'mirrored', distribute.STRATEGIES, 'tf.distribute strategy.')
flags.DEFINE_list('image_shape', None, 'H,W,C overriding the preset.')
flags.DEFINE_integer('num_scales', None, 'Overrides the preset.')
flags.DEFINE_integer('feature_maps', None, 'Overrides the preset.')
flags.DEFINE_integer('num_blocks', None, 'Overrides the preset.')
flags.DEFINE_enum('dequantization', None, ['uniform', 'variational'],
                  'Overrides the preset.')
flags.DEFINE_integer('train_dequant_samples', 1,
                     'Dequantization draws per image in training (IW objective if > 1).')
flags.DEFINE_integer('matmul_size', 4096, 'Side of the matmul measuring the peak.')
FLAGS = flags.FLAGS


def flow_config():
  overrides = {}
  if FLAGS.image_shape:
    overrides['image_shape'] = tuple(int(d) for d in FLAGS.image_shape)
  for name in ('num_scales', 'feature_maps', 'num_blocks', 'dequantization'):
    if FLAGS[name].value is not None:
      overrides[name] = FLAGS[name].value
  return config_lib.preset(FLAGS.preset, **overrides)


def timed(fn, steps, warmup):
  """Seconds of each of `steps` calls after `warmup` calls (fn syncs)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def matmul_peak_gflops(size, dtype=tf.float32):
  a = tf.cast(tf.random.normal((size, size)), dtype)
  b = tf.cast(tf.random.normal((size, size)), dtype)
  matmul = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
  times = timed(lambda: matmul().numpy(), 5, 2)
  return 2 * size ** 3 / min(times) / 1e9


def conv_peak_gflops(batch, height, width, channels, dtype=tf.float32):
  """GFLOP/s of one 3x3 channels->channels convolution, forward + both gradients."""
  x = tf.cast(tf.random.normal((batch, height, width, channels)), dtype)
  w = tf.cast(tf.random.normal((3, 3, channels, channels)), dtype)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      tape.watch([x, w])
      y = tf.nn.conv2d(x, w, strides=1, padding='SAME')
    return [tf.reduce_sum(g) for g in tape.gradient(y, [x, w], output_gradients=y)]

  times = timed(lambda: [g.numpy() for g in step()], 5, 2)
  return 3 * 2 * 9 * channels ** 2 * batch * height * width / min(times) / 1e9


def synthetic_source(config, count):
  rng = np.random.default_rng(0)
  images = rng.integers(0, config.levels, (count,) + config.image_shape, dtype=np.uint8)
  return data.in_memory_source('random', images, images[:count // 4 or 1],
                                config.levels, 'random')


def data_throughput():
  """Images/s the training pipeline delivers: the digits and an npz set."""
  results = {}
  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, 'random.npz')
    np.savez(path, images=np.random.default_rng(0).integers(
        0, 256, (5000, 32, 32, 3), dtype=np.uint8))
    for name in ('digits', f'npz:{path}'):
      source = data.load_dataset(name)
      source.flip = True
      iterator = iter(data.train_dataset(source, FLAGS.batch_size, seed=0))
      times = timed(lambda: next(iterator).numpy(), 200, 20)
      results[name.split(':')[0]] = FLAGS.batch_size / statistics.median(times)
  return results


def main(argv):
  del argv
  modes = {'train', 'eval', 'sample', 'data'} if 'all' in FLAGS.mode else set(FLAGS.mode)
  config = flow_config()
  strategy = distribute.get_strategy(FLAGS.strategy)
  source = synthetic_source(config, max(4 * FLAGS.batch_size, 256))
  train_config = TrainConfig(batch_size=FLAGS.batch_size, eval_every=0,
                             jit_compile=FLAGS.xla, log_every_secs=1e9,
                             mixed_precision=FLAGS.mixed_precision,
                             train_dequant_samples=FLAGS.train_dequant_samples)
  results = {'preset': FLAGS.preset, 'batch_size': FLAGS.batch_size,
             'dequantization': config.dequantization,
             'train_dequant_samples': FLAGS.train_dequant_samples,
             'image_shape': list(config.image_shape), 'xla': FLAGS.xla,
             'mixed_precision': FLAGS.mixed_precision or 'float32',
             'replicas': strategy.num_replicas_in_sync}
  with tempfile.TemporaryDirectory() as model_dir:
    trainer = Trainer(strategy, source, config, train_config, model_dir)
  model = trainer.model
  results['params'] = int(sum(np.prod(v.shape) for v in model.trainable_variables))
  flops = model.flops_per_example()
  results['flops_per_image'] = flops  # forward pass
  results['train_flops_per_image'] = 3 * flops
  batch = next(iter(strategy.distribute_datasets_from_function(
      lambda ctx: data.train_dataset(source, FLAGS.batch_size, 0, 0, ctx))))
  local_batch = tf.constant(source.train.images[:FLAGS.batch_size])
  table = []

  if 'train' in modes:
    times = timed(lambda: trainer.train_step(batch)[0].numpy(), FLAGS.steps, FLAGS.warmup)
    median = statistics.median(times)
    results['step_seconds'] = {'min': min(times), 'median': median, 'max': max(times)}
    results['train_images_per_sec'] = FLAGS.batch_size / median
    results['achieved_gflops'] = 3 * flops * FLAGS.batch_size / median / 1e9
    table.append(('train', results['train_images_per_sec'], median))
  if 'eval' in modes:
    score = tf.function(lambda x: model.bits_per_dim(x), jit_compile=FLAGS.xla or None)
    times = timed(lambda: score(local_batch).numpy(), FLAGS.steps, FLAGS.warmup)
    results['eval_images_per_sec'] = FLAGS.batch_size / statistics.median(times)
    table.append(('eval', results['eval_images_per_sec'], statistics.median(times)))
  if 'sample' in modes:
    sample = tf.function(lambda seed: model.sample(FLAGS.batch_size, 1.0, seed=seed))
    counter = iter(range(10 ** 9))
    times = timed(lambda: sample(tf.constant(next(counter))).numpy(), FLAGS.steps,
                  FLAGS.warmup)
    results['sample_images_per_sec'] = FLAGS.batch_size / statistics.median(times)
    table.append(('sample', results['sample_images_per_sec'], statistics.median(times)))
  if 'data' in modes:
    results['data_images_per_sec'] = data_throughput()

  results['matmul_peak_gflops'] = matmul_peak_gflops(FLAGS.matmul_size)
  peak = results['matmul_peak_gflops']
  if FLAGS.mixed_precision:  # Utilisation against the compute dtype's peak.
    peak = results[f'matmul_peak_gflops_{FLAGS.mixed_precision}'] = matmul_peak_gflops(
        FLAGS.matmul_size, tf.as_dtype(FLAGS.mixed_precision))
  # The s/t networks' first-scale convolution: the kernel the step is made of.
  height, width, _ = config.image_shape
  conv_peak = results['conv_peak_gflops'] = conv_peak_gflops(
      FLAGS.batch_size, height, width, config.feature_maps,
      tf.as_dtype(FLAGS.mixed_precision or 'float32'))
  if 'achieved_gflops' in results:
    results['utilization'] = results['achieved_gflops'] / peak
    results['conv_utilization'] = results['achieved_gflops'] / conv_peak
  results['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  results['load_average'] = os.getloadavg()[0]

  print(f"\n{FLAGS.preset} {config.image_shape} batch {FLAGS.batch_size}, "
        f"{results['params']:,} parameters, {flops / 1e9:.3f} GFLOP/image forward")
  print(f"{'mode':<8}{'images/s':>12}{'s/step':>10}")
  for mode, rate, seconds in table:
    print(f'{mode:<8}{rate:>12.1f}{seconds:>10.3f}')
  if 'data_images_per_sec' in results:
    for name, rate in results['data_images_per_sec'].items():
      print(f'data:{name:<3}{rate:>12.0f}')
  print(f"matmul peak {peak:.0f} GFLOP/s, "
        f"utilisation {results.get('utilization', float('nan')):.2f}; "
        f"3x3 conv fwd+bwd {conv_peak:.0f} GFLOP/s, "
        f"utilisation {results.get('conv_utilization', float('nan')):.2f}; "
        f"peak RSS {results['peak_rss_mb']:.0f} MB, load {results['load_average']:.2f}")
  print(json.dumps(results))


if __name__ == '__main__':
  app.run(main)
