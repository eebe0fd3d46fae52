"""GFLOP/s of the 3x3 convolution's three kernels, each alone: forward,
filter gradient and input gradient, at the given shapes (batch, side,
channels; channels -> channels, SAME padding, float32). The bare-op
measurement beside `bench/throughput.py --profile`: what TensorFlow's kernels
reach when nothing else runs.

    python bench/conv_kernels.py --shapes=64x32x32,64x32x64,64x16x128
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import real_nvp  # noqa: E402,F401  before TensorFlow: it chooses the CPU kernels
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

flags.DEFINE_list('shapes', ['64x32x32', '64x32x64', '64x16x128'],
                  'batch x side x channels of each measured convolution.')
flags.DEFINE_integer('repeats', 10, 'Timed calls per kernel (the fastest is kept).')
FLAGS = flags.FLAGS


def _best_seconds(function):
  function().numpy()
  times = []
  for _ in range(FLAGS.repeats):
    start = time.perf_counter()
    function().numpy()
    times.append(time.perf_counter() - start)
  return min(times)


def main(argv):
  del argv
  strides = [1, 1, 1, 1]
  for shape in FLAGS.shapes:
    batch, side, channels = (int(d) for d in shape.split('x'))
    x = tf.random.normal((batch, side, side, channels))
    w = tf.random.normal((3, 3, channels, channels))
    dy = tf.random.normal((batch, side, side, channels))
    kernels = {
        'forward': lambda: tf.nn.conv2d(x, w, 1, 'SAME'),
        'filter gradient': lambda: tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=tf.shape(w), out_backprop=dy, strides=strides,
            padding='SAME'),
        'input gradient': lambda: tf.raw_ops.Conv2DBackpropInput(
            input_sizes=tf.shape(x), filter=w, out_backprop=dy, strides=strides,
            padding='SAME'),
    }
    flops = 2 * 9 * channels ** 2 * batch * side * side
    rates = {name: flops / _best_seconds(tf.function(
        lambda kernel=kernel: tf.reduce_sum(kernel()))) / 1e9
             for name, kernel in kernels.items()}
    print(f'{batch}x{side}x{side}x{channels}, 3x3 {channels}->{channels}: ' +
          ', '.join(f'{name} {rate:.0f}' for name, rate in rates.items()) + ' GFLOP/s')


if __name__ == '__main__':
  app.run(main)
