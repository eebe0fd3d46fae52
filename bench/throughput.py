"""Throughput, memory and utilisation of Real NVP training, evaluation and sampling.

    python bench/throughput.py --preset=cifar10 --batch_size=64
    python bench/throughput.py --preset=digits --mode=all --steps=20
    python bench/throughput.py --image_shape=32,32,1 --num_scales=2 \\
        --feature_maps=32 --num_blocks=4 --mode=train,eval
    python bench/throughput.py --mode=data
    python bench/throughput.py --preset=cifar10 --mode=train --profile=/tmp/profile

Prints a table, then one JSON line that names the CPU (model, vector
features, cores), the TF kernels in use and any GPU, so runs on different
hosts are not compared by accident. Images/s are medians over the timed device
loops (--steps of --steps_per_loop steps each) after --warmup; FLOPs are an
analytic count of the s/t networks' convolutions (2 * k * k * c_in * c_out per
output pixel, as each layer reports it through `flops_per_example`, the
dequantizer's included; a training step counted as 3x the forward pass),
which dominate the flow's arithmetic.

Utilisation is achieved training GFLOP/s over the machine's float32 peak:
the best of a TF matmul with this process's kernels, a TF matmul with oneDNN
on (in a subprocess, where this process runs Eigen) and NumPy's BLAS sgemm,
so that it does not move with the kernels in use; the theoretical FMA peak
(cores x SIMD lanes x 2 FMA units x 2 x GHz) is reported beside it where the
clock is known. With --mixed_precision it is over a matmul in that dtype;
on a GPU, over the GPU's own matmul. conv_utilization is the same over a 3x3
convolution (forward and both gradients) at the first scale's shape, the
kernel the step is made of. Random images of the preset's shape stand in for
data; --mode=data times the input pipelines of --data_presets on their own
(decoding, shuffle, flips and the paper's crops), per CPU core. --profile
writes a TensorFlow profile of --profile_steps training steps (one device
loop) after the timed ones and prints its top ops by self time
(bench/op_profile.py), the convolutions' GFLOP/s beside them.
"""

import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import real_nvp  # noqa: E402,F401  before TensorFlow: it chooses the CPU kernels
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import subprocess  # noqa: E402

from real_nvp import config as config_lib  # noqa: E402
from real_nvp import cli_flags, data, distribute, hardware  # noqa: E402
from real_nvp.config import TrainConfig  # noqa: E402
from real_nvp.train_step import TrainStep  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import op_profile  # noqa: E402  pylint: disable=g-bad-import-order

# The run's own flags (train.py's), shared through cli_flags.
cli_flags.define_strategy_flag()
cli_flags.define_train_settings(('batch_size', 'xla', 'mixed_precision',
                                 'train_dequant_samples', 'allow_emulated_precision'))
cli_flags.define_architecture_flags()
# The benchmark's own.
flags.DEFINE_enum('preset', 'digits', sorted(config_lib.PRESETS), 'Architecture preset.')
flags.DEFINE_integer('steps', 10, 'Timed steps per mode.')
flags.DEFINE_integer('warmup', 3, 'Untimed steps first (tracing, autotuning).')
flags.DEFINE_list('mode', ['train', 'eval', 'sample'],
                  'Any of train, eval, sample, data; or all.')
flags.DEFINE_list('image_shape', None, 'H,W,C overriding the preset.')
flags.DEFINE_integer('matmul_size', 4096, 'Side of the matmul measuring the peak.')
flags.DEFINE_list('steps_per_loop', ['1'], 'Training steps per device-loop call, '
                  'one or more (each timed; the first is the headline figure); '
                  '--steps and --warmup count loops.')
flags.DEFINE_list('data_presets', ['cifar10', 'imagenet64', 'lsun_bedroom', 'celeba'],
                  '--mode=data: the TFDS data sets whose pipelines are timed.')
flags.DEFINE_bool('peak_only', False, 'Print the TF matmul peak as JSON and exit '
                  '(the bench runs itself so to measure oneDNN where it is off).')
flags.DEFINE_string('profile', None, 'Folder for a TensorFlow profile of the training '
                    'step (after the timed steps); its top ops are printed.')
flags.DEFINE_integer('profile_steps', 5, 'Training steps in the profile.')
flags.DEFINE_integer('profile_top', 20, 'Ops in the printed profile table.')
FLAGS = flags.FLAGS


def flow_config():
  overrides = cli_flags.architecture_overrides()
  if FLAGS.image_shape:
    overrides['image_shape'] = tuple(int(d) for d in FLAGS.image_shape)
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
  """GFLOP/s of a size x size matmul with this process's TF kernels."""
  a = tf.cast(tf.random.normal((size, size)), dtype)
  b = tf.cast(tf.random.normal((size, size)), dtype)
  matmul = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
  times = timed(lambda: matmul().numpy(), 5, 2)
  return 2 * size ** 3 / min(times) / 1e9


def float32_peaks(size):
  """The machine's float32 peak, from measurements that do not depend on which
  kernels this process's TF uses: TF matmul with this process's kernels and
  with oneDNN on (in a subprocess where they differ), NumPy's BLAS sgemm, all
  of size^3; and the theoretical FMA peak where the CPU's clock is known.
  -> dict; 'float32_peak_gflops' is the best measurement."""
  peaks = {f'tf_matmul_{hardware.kernels_in_use()}_gflops': matmul_peak_gflops(size)}
  if hardware.kernels_in_use() != 'oneDNN' and hardware.cpu_info().is_x86:
    output = subprocess.run(
        [sys.executable, os.path.abspath(__file__), '--peak_only',
         f'--matmul_size={size}'], capture_output=True, text=True, check=True,
        env=dict(os.environ, TF_ENABLE_ONEDNN_OPTS='1', TF_CPP_MIN_LOG_LEVEL='2'))
    peaks['tf_matmul_oneDNN_gflops'] = json.loads(output.stdout.splitlines()[-1])
  a = np.random.default_rng(0).standard_normal((size, size), np.float32)
  times = timed(lambda: a @ a, 5, 1)
  peaks['numpy_sgemm_gflops'] = 2 * size ** 3 / min(times) / 1e9
  peaks['float32_peak_gflops'] = max(peaks.values())
  peaks['theoretical_fma_peak_gflops'] = hardware.cpu_info().fma_peak_gflops()
  return peaks


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


def _stored_images(name, count, rng):
  """`count` encoded images as TFDS stores them for `name` (PNG of the final
  size; LSUN's JPEGs at 256 x 341, CelebA's 218 x 178)."""
  size = {'lsun': (256, 341), 'celeba': (218, 178)}.get(
      name.split('_')[0], data.TFDS_DATASETS[name][3][:2])
  channels = data.TFDS_DATASETS[name][3][2]
  encode = tf.io.encode_jpeg if name.startswith(('lsun', 'celeba')) else tf.io.encode_png
  return [encode(rng.integers(0, 256, (*size, channels), dtype=np.uint8)).numpy()
          for _ in range(count)]


def data_throughput():
  """Images/s of the training pipeline (decoding, shuffle, the data set's own
  flip and crops, batching) for each of --data_presets, on every core; the
  encoded images stand in for TFDS's records, read from memory."""
  rng = np.random.default_rng(0)
  results = {}
  for name in FLAGS.data_presets:
    _, _, _, shape, flip, transform, _ = data.TFDS_DATASETS[name]
    encoded = _stored_images(name, 256, rng)

    def dataset_fn(encoded=encoded, channels=shape[2]):
      return tf.data.Dataset.from_tensor_slices(encoded).repeat().map(
          lambda record: tf.io.decode_image(record, channels, expand_animations=False),
          num_parallel_calls=tf.data.AUTOTUNE)

    split = data.Split(10 ** 6, dataset_fn=dataset_fn, transform=transform)
    source = data.DataSource(name, shape, 256, split, split, 'test', flip)
    iterator = iter(data.train_dataset(source, FLAGS.batch_size, seed=0))
    times = timed(lambda: next(iterator).numpy(), 100, 20)
    rate = FLAGS.batch_size / statistics.median(times)
    results[name] = {'images_per_sec': rate,
                     'images_per_sec_per_core': rate / hardware.cpu_info().cores,
                     'cores_for_5000_per_sec': 5000 * hardware.cpu_info().cores / rate}
  return results


def main(argv):
  del argv
  if FLAGS.peak_only:
    print(json.dumps(matmul_peak_gflops(FLAGS.matmul_size)))
    return
  modes = {'train', 'eval', 'sample', 'data'} if 'all' in FLAGS.mode else set(FLAGS.mode)
  config = flow_config()
  strategy = distribute.get_strategy(FLAGS.strategy)
  hardware.log_platform()
  try:
    hardware.check_precision(FLAGS.mixed_precision, strategy,
                             FLAGS.allow_emulated_precision)
  except hardware.EmulatedPrecisionError as error:
    sys.exit(f'Error: {error}')
  results = _setting(config, strategy)
  table = _measure(modes, config, strategy, results)
  conv_peak = _peaks_and_utilisation(config, results)
  _print_report(config, results, table, conv_peak)


def _setting(config, strategy):
  """What the measurement is of: the configuration, the machine, TF."""
  return {'preset': FLAGS.preset, 'batch_size': FLAGS.batch_size,
          'dequantization': config.dequantization,
          'train_dequant_samples': FLAGS.train_dequant_samples,
          'image_shape': list(config.image_shape), 'xla': FLAGS.xla,
          'mixed_precision': FLAGS.mixed_precision or 'float32',
          'steps_per_loop': int(FLAGS.steps_per_loop[0]),
          'replicas': strategy.num_replicas_in_sync,
          **hardware.cpu_info().to_json(), 'cpu_kernels': hardware.kernels_in_use(),
          'gpus': [d.name for d in tf.config.list_logical_devices('GPU')],
          'tensorflow': tf.__version__}


def _measure(modes, config, strategy, results):
  """Times each mode into `results`; -> rows (mode, images/s, s/step)."""
  source = synthetic_source(config, max(4 * FLAGS.batch_size, 256))
  train_config = TrainConfig(batch_size=FLAGS.batch_size, eval_every=0,
                             jit_compile=FLAGS.xla, log_every_secs=1e9,
                             mixed_precision=FLAGS.mixed_precision,
                             train_dequant_samples=FLAGS.train_dequant_samples,
                             steps_per_loop=int(FLAGS.steps_per_loop[0]))
  steps = TrainStep(strategy, config, train_config)
  model = steps.model
  results['params'] = int(sum(np.prod(v.shape) for v in model.trainable_variables))
  flops = results['flops_per_image'] = model.flops_per_example()  # forward pass
  results['train_flops_per_image'] = 3 * flops
  local_batch = tf.constant(source.train.images[:FLAGS.batch_size])
  table = []
  if 'train' in modes:
    table += _train_rates(steps, source, strategy, flops, results)
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
    results['data'] = data_throughput()
  return table


def _train_rates(steps, source, strategy, flops, results):
  """Training images/s for each --steps_per_loop; the first is the headline."""
  iterator = iter(strategy.distribute_datasets_from_function(
      lambda ctx: data.train_dataset(source, FLAGS.batch_size, 0, 0, ctx)))
  by_length = results['train_images_per_sec_by_steps_per_loop'] = {}
  table = []
  for length in map(int, FLAGS.steps_per_loop):  # One trace: N is a tensor.
    n = tf.constant(length, tf.int64)
    times = [t / length for t in timed(lambda: steps.loop(iterator, n)['step'].numpy(),
                                       FLAGS.steps, FLAGS.warmup)]
    by_length[length] = FLAGS.batch_size / statistics.median(times)
    if 'step_seconds' not in results:
      median = statistics.median(times)
      results['step_seconds'] = {'min': min(times), 'median': median,
                                 'max': max(times)}
      results['train_images_per_sec'] = FLAGS.batch_size / median
      results['achieved_gflops'] = 3 * flops * FLAGS.batch_size / median / 1e9
    table.append((f'train/{length}', by_length[length],
                  FLAGS.batch_size / by_length[length]))
  if FLAGS.profile:
    results['profile'] = _profile(steps, iterator, flops)
  return table


def _profile(steps, iterator, flops):
  """Profiles one device loop of --profile_steps steps; prints the top ops.
  A convolution's FLOPs per step are taken as the batch's forward FLOPs for
  each of the forward, input-gradient and filter-gradient kernels."""
  n = tf.constant(FLAGS.profile_steps, tf.int64)
  tf.profiler.experimental.start(FLAGS.profile)
  try:
    steps.loop(iterator, n)['step'].numpy()
  finally:
    tf.profiler.experimental.stop()
  times = op_profile.op_times(FLAGS.profile)
  conv_flops = {name: flops * FLAGS.batch_size for name in times if 'Conv2D' in name}
  print(op_profile.format_table(times, FLAGS.profile_steps, FLAGS.profile_top,
                                conv_flops), file=sys.stderr)
  return {name: {'count_per_step': count / FLAGS.profile_steps,
                 'ms_per_step': 1e3 * seconds / FLAGS.profile_steps}
          for name, (count, seconds) in times.items()}


def _peaks_and_utilisation(config, results):
  """The peaks, the utilisation against them, memory and load; -> conv peak."""
  if results['gpus']:  # The device's own peak; the CPU's measurements do not apply.
    results['float32_peak_gflops'] = matmul_peak_gflops(FLAGS.matmul_size)
  else:
    results.update(float32_peaks(FLAGS.matmul_size))
  peak = results['float32_peak_gflops']
  if FLAGS.mixed_precision:  # Utilisation against the compute dtype's peak.
    peak = results[f'matmul_peak_gflops_{FLAGS.mixed_precision}'] = matmul_peak_gflops(
        FLAGS.matmul_size, tf.as_dtype(FLAGS.mixed_precision))
  results['peak_used_gflops'] = peak
  # The s/t networks' first-scale convolution: the kernel the step is made of.
  height, width, _ = config.image_shape
  conv_peak = results['conv_peak_gflops'] = conv_peak_gflops(
      FLAGS.batch_size, height, width, config.feature_maps,
      tf.as_dtype(FLAGS.mixed_precision or 'float32'))
  if 'achieved_gflops' in results:
    results['utilization'] = results['achieved_gflops'] / peak
    results['conv_utilization'] = results['achieved_gflops'] / conv_peak
    if results.get('theoretical_fma_peak_gflops') and not FLAGS.mixed_precision:
      results['utilization_of_theoretical'] = (
          results['achieved_gflops'] / results['theoretical_fma_peak_gflops'])
  results['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  if results['gpus']:
    results['gpu_peak_memory_mb'] = tf.config.experimental.get_memory_info(
        'GPU:0')['peak'] / 2 ** 20
  results['load_average'] = os.getloadavg()[0]
  return conv_peak


def _print_report(config, results, table, conv_peak):
  print(f"\n{FLAGS.preset} {config.image_shape} batch {FLAGS.batch_size}, "
        f"{results['params']:,} parameters, "
        f"{results['flops_per_image'] / 1e9:.3f} GFLOP/image forward; "
        f"{results['cpu_model']} ({' '.join(results['vector_features'])}), "
        f"{results['cpu_kernels']} kernels")
  print(f"{'mode':<10}{'images/s':>12}{'s/step':>10}   (train/N: N steps per loop)")
  for mode, rate, seconds in table:
    print(f'{mode:<10}{rate:>12.1f}{seconds:>10.3f}')
  for name, rates in results.get('data', {}).items():
    print(f"data:{name:<20}{rates['images_per_sec']:>10.0f} img/s, "
          f"{rates['images_per_sec_per_core']:.0f} per core, "
          f"{rates['cores_for_5000_per_sec']:.1f} cores for 5,000 img/s")
  print(f"peak {results['peak_used_gflops']:.0f} GFLOP/s (best of the measurements), "
        f"utilisation {results.get('utilization', float('nan')):.2f}; "
        f"3x3 conv fwd+bwd {conv_peak:.0f} GFLOP/s, "
        f"utilisation {results.get('conv_utilization', float('nan')):.2f}; "
        f"peak RSS {results['peak_rss_mb']:.0f} MB, load {results['load_average']:.2f}")
  print(json.dumps(results))


if __name__ == '__main__':
  app.run(main)
