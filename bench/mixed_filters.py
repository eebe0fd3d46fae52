"""Are TensorFlow's CPU convolutions deterministic when one process holds
graphs of the same convolution with a constant filter and with a variable
one? The lossless coder needs every network call to give the same bits on
the decoder's side as on the encoder's, whatever ran before in the process
(docs/compression.md, "The coder's networks with constant weights").

One 3x3 convolution + ReLU at 8x8, as concrete functions of the same (or,
for 'w', other) weights: 'c' with the filter a tf.constant, 'v' and 'w'
reading a tf.Variable. Each is called once per batch size 1..39 for
reference outputs, then --passes more times over the sizes in reverse and
shuffled orders; prints the calls whose outputs differ bit for bit from
the reference, and one JSON line with the CPU.

    python bench/mixed_filters.py --graphs=vc   # constant and variable filters
    python bench/mixed_filters.py --graphs=vw   # two variable filters
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import real_nvp  # noqa: E402,F401  before TensorFlow: it chooses the CPU kernels
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from real_nvp import hardware  # noqa: E402

flags.DEFINE_string('graphs', 'vc', "Which graphs the process holds: any of 'v', 'c', 'w'.")
flags.DEFINE_integer('channels', 16, 'Channels in and out.')
flags.DEFINE_integer('passes', 5, 'Passes over the batch sizes after the reference one.')
FLAGS = flags.FLAGS


def _graphs(weights):
  spec = tf.TensorSpec((None, 8, 8, FLAGS.channels))
  # 'c' makes its filter inside the graph (a Const node; an eager tensor
  # would be captured as an input, like a variable)
  filters = {'c': lambda: tf.constant(weights), 'v': lambda v=tf.Variable(weights): v,
             'w': lambda w=tf.Variable(0.5 * weights): w}

  def graph(kernel):
    return tf.function(lambda x: tf.nn.relu(tf.nn.conv2d(x, kernel(), 1, 'SAME')),
                       autograph=False).get_concrete_function(spec)

  return {name: graph(filters[name]) for name in FLAGS.graphs}


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  c = FLAGS.channels
  graphs = _graphs((0.1 * rng.standard_normal((3, 3, c, c))).astype(np.float32))
  sizes = list(range(1, 40))
  inputs = {b: tf.constant(rng.standard_normal((b, 8, 8, c)).astype(np.float32))
            for b in sizes}
  reference = {(name, b): graph(inputs[b]).numpy()
               for b in sizes for name, graph in graphs.items()}
  differing = {name: 0 for name in graphs}
  for i in range(FLAGS.passes):
    for b in (sizes[::-1] if i % 2 == 0 else rng.permutation(sizes)):
      for name, graph in graphs.items():
        out = graph(inputs[int(b)]).numpy()
        if not np.array_equal(out, reference[(name, int(b))]):
          differing[name] += 1
          print(f'{name}: batch {b} differs by up to '
                f'{np.max(np.abs(out - reference[(name, int(b))])):.3g}')
  print(json.dumps({**hardware.cpu_info().to_json(), 'kernels': hardware.kernels_in_use(),
                    'graphs': FLAGS.graphs, 'calls_per_graph': FLAGS.passes * len(sizes),
                    'differing_calls': differing}))


if __name__ == '__main__':
  app.run(main)
