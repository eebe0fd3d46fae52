"""The paper's Fig. 1 on a 2-D toy density: the flow of this project's own
channel couplings and batch norms on 2-D points (events [1, 1, 2]).

    python -m real_nvp.toy                       # writes figures/fig1_toy.png
    python -m real_nvp.toy --steps=2000 --out=/tmp/fig1.png

Four panels, as in the paper: data x ~ p_X, inferred latent z = f(x),
prior samples z ~ p_Z, generated x = f^-1(z). Points are coloured by a data
property (the position along the moons), carried through the map, so the
two directions can be followed; the generated points are coloured by the
colour of the nearest data point.
"""

import math
import os
import sys

from absl import app, flags

from real_nvp import cli_flags


def _define_flags():
  flags.DEFINE_string('out', 'figures/fig1_toy.png', 'Where to write the PNG.')
  flags.DEFINE_integer('steps', 1500, 'Training steps.', lower_bound=1)
  flags.DEFINE_integer('points', 4000, 'Points of the data set.', lower_bound=2)
  flags.DEFINE_integer('seed', 0, 'Seed of the data, the weights and the batches.')


if __name__ == '__main__':
  _define_flags()
  cli_flags.parse_before_tensorflow(sys.argv)

# pylint: disable=g-import-not-at-top,wrong-import-position
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from real_nvp import hardware, storage  # noqa: E402
from real_nvp.batch_norm import FlowBatchNorm  # noqa: E402
from real_nvp.coupling import Coupling  # noqa: E402
from real_nvp.layer_run import run_layers  # noqa: E402

__all__ = ['two_moons', 'ToyFlow', 'train_toy', 'figure_one']


def two_moons(count, seed=0, noise=0.06):
  """Points [n, 2] of two interleaved half circles and their position in [0, 1]."""
  rng = np.random.default_rng(seed)
  position = rng.uniform(size=count)
  upper = rng.uniform(size=count) < 0.5
  angle = math.pi * position
  x = np.where(upper, np.cos(angle), 1. - np.cos(angle))
  y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle))
  points = np.stack([x - 0.5, y - 0.25], axis=1) * 2.
  points += noise * rng.standard_normal(points.shape)
  colour = np.where(upper, position / 2, 0.5 + position / 2)
  return points.astype(np.float32), colour


class ToyFlow(keras.Model):
  """Alternating channel couplings (each followed by flow batch norm) on
  2-D points seen as [1, 1, 2] images. `call(x)` is f (data -> latent)."""

  def __init__(self, num_couplings=8, num_blocks=1, feature_maps=32, **kwargs):
    super().__init__(**kwargs)
    self.steps = []
    for k in range(num_couplings):
      self.steps += [Coupling('channel', k % 2, num_blocks, feature_maps,
                              name=f'coupling{k}'),
                     FlowBatchNorm(momentum=0.9, name=f'coupling{k}_bn')]

  def call(self, x, training=False):
    h, log_det = run_layers(self.steps, tf.reshape(x, [-1, 1, 1, 2]), training=training)
    return tf.reshape(h, [-1, 2]), log_det

  def decode(self, z):
    return tf.reshape(run_layers(self.steps, tf.reshape(z, [-1, 1, 1, 2]), inverse=True)[0],
                      [-1, 2])

  def log_prob(self, x, training=False):
    """log p(x) in nats: log N(f(x); 0, I) + log|det ∂f/∂x|. -> [n]."""
    z, log_det = self(x, training=training)
    return tf.reduce_sum(-0.5 * tf.square(z) - 0.5 * math.log(2 * math.pi), axis=1) + log_det


def train_toy(points, steps=1500, batch_size=256, learning_rate=3e-3, seed=0,
              **flow_kwargs):
  """A ToyFlow fitted to `points` by maximum likelihood (Adam)."""
  keras.utils.set_random_seed(seed)
  flow = ToyFlow(**flow_kwargs)
  flow(tf.constant(points[:2]), training=True)  # builds
  optimizer = keras.optimizers.Adam(learning_rate)
  # Its slots made now: a tf.function that creates variables is traced twice
  # (the step's trace 18 -> 6 s).
  optimizer.build(flow.trainable_variables)
  data = tf.constant(points)

  @tf.function
  def step(index):
    batch = tf.gather(data, tf.random.stateless_uniform(
        [batch_size], seed=tf.stack([tf.constant(seed, tf.int64), index]),
        maxval=len(points), dtype=tf.int32))
    with tf.GradientTape() as tape:
      loss = -tf.reduce_mean(flow.log_prob(batch, training=True))
    optimizer.apply_gradients(zip(tape.gradient(loss, flow.trainable_variables),
                                  flow.trainable_variables))
    return loss

  for index in range(steps):
    step(tf.constant(index, tf.int64))
  return flow


def figure_one(flow, points, colour, path, seed=1):
  """The four panels of the paper's Fig. 1 as a PNG at `path`."""
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt

  z = flow(tf.constant(points))[0].numpy()
  prior = np.random.default_rng(seed).standard_normal(points.shape).astype(np.float32)
  generated = flow.decode(tf.constant(prior)).numpy()
  nearest = np.argmin(((generated[:, None] - points[None]) ** 2).sum(-1), axis=1)
  data_side, latent_side = 3.5, 4.5  # axis limits
  panels = [('Inference: x ~ p_X', points, colour, data_side),
            ('z = f(x)', z, colour, latent_side),
            ('Generation: z ~ p_Z', prior, colour[nearest], latent_side),
            ('x = f^-1(z)', generated, colour[nearest], data_side)]
  figure, axes = plt.subplots(2, 2, figsize=(8, 8))
  for axis, (title, values, colours, limit) in zip(axes.flat, panels):
    axis.scatter(values[:, 0], values[:, 1], c=colours, cmap='viridis', s=3)
    axis.set_title(title)
    axis.set_aspect('equal')
    axis.set_xlim(-limit, limit)
    axis.set_ylim(-limit, limit)
  figure.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  figure.savefig(path, dpi=100)
  plt.close(figure)
  return path


def main(argv):
  del argv
  flags_ = flags.FLAGS
  hardware.log_platform()
  try:
    storage.check_writable(flags_.out)
  except storage.StorageError as error:
    sys.exit(f'Error: {error}')
  points, colour = two_moons(flags_.points, flags_.seed)
  flow = train_toy(points, flags_.steps, seed=flags_.seed)
  nll = -float(tf.reduce_mean(flow.log_prob(tf.constant(points))))
  prior_nll = -float(np.mean(np.sum(-0.5 * points ** 2 - 0.5 * math.log(2 * math.pi), axis=1)))
  print(f'NLL per point: flow {nll:.3f} nats, unit Gaussian {prior_nll:.3f} nats',
        flush=True)
  try:
    print(f'Figure: {figure_one(flow, points, colour, flags_.out)}')
  except OSError as error:  # The path was writable at the start.
    sys.exit(f'Error: writing {flags_.out} failed ({error.strerror or error}); '
             'the numbers above are complete.')


if __name__ == '__main__':
  app.run(main)
