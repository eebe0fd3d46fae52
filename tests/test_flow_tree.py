"""The flow as one tree: the one layer run, the walks, the latents' layout
derived from the factor-outs, and the rooms that import without TensorFlow
or the entropy coder."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import perturb
from real_nvp import RealNVP, flow_tree, preset
from real_nvp.batch_norm import FlowBatchNorm
from real_nvp.coupling import Coupling
from real_nvp.layer_run import run_layers
from real_nvp.squeeze import Squeeze

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _layers():
  layers = [Coupling('checkerboard', 0, 1, 4, name='c0'), FlowBatchNorm(name='bn0'),
            Squeeze(name='sq'), Coupling('channel', 1, 1, 4, name='c1'),
            FlowBatchNorm(name='bn1')]
  x = tf.random.stateless_normal((6, 4, 4, 2), seed=[1, 2], dtype=tf.float64)
  h = x
  for layer in layers:
    h = layer(h, training=True)[0]
  for layer in layers:
    perturb(layer, 0.2)
  return layers, x


def test_run_layers_is_the_layers_in_order_and_sums_their_log_dets(float64):
  layers, x = _layers()
  y, log_det = run_layers(layers, x)
  h, total = x, 0.
  for layer in layers:
    h, step = layer(h)
    total += step
  np.testing.assert_array_equal(y, h)
  np.testing.assert_allclose(log_det, total, rtol=1e-12)
  back, inverse_log_det = run_layers(layers, y, inverse=True)
  np.testing.assert_allclose(back, x, atol=1e-10)
  np.testing.assert_allclose(inverse_log_det, -log_det, rtol=1e-10)


@pytest.mark.parametrize('mode', ['recompute', 'invert'])
def test_run_layers_under_memory_saving_gives_the_same_values(float64, mode):
  layers, x = _layers()
  plain = run_layers(layers, x, training=True)
  saved = run_layers(layers, x, training=True, memory_saving=mode)
  for a, b in zip(plain, saved):
    np.testing.assert_allclose(a, b, rtol=1e-12)
  with pytest.raises(ValueError, match='memory_saving'):
    run_layers(layers, x, training=True, memory_saving='sometimes')


def test_a_context_is_squeezed_with_the_data(float64):
  """The dequantizer's tree: the channel couplings after the squeeze see the
  squeezed context; the round trip and the inverse log-det hold."""
  context = tf.random.stateless_normal((3, 4, 4, 5), seed=[3, 4], dtype=tf.float64)
  checkerboard = Coupling('checkerboard', 0, 1, 4, name='dc')
  channel = Coupling('channel', 0, 1, 4, name='dch')
  squeeze = flow_tree.Steps([Squeeze(name='dsq')])
  tree = flow_tree.Chain([flow_tree.Steps([checkerboard]), squeeze,
                          flow_tree.Steps([channel]), flow_tree.Inverted(squeeze)])
  x = tf.random.stateless_normal((3, 4, 4, 2), seed=[5, 6], dtype=tf.float64)
  flow_tree.run(tree, x, context=context)
  perturb(checkerboard, 0.3)
  perturb(channel, 0.3)
  y, log_det = flow_tree.run(tree, x, context=context)
  h, first = checkerboard(x, context=context)
  h, second = channel(tf.nn.space_to_depth(h, 2), context=tf.nn.space_to_depth(context, 2))
  np.testing.assert_allclose(y, tf.nn.depth_to_space(h, 2), rtol=1e-12)
  np.testing.assert_allclose(log_det, first + second, rtol=1e-12)
  back, inverse_log_det = flow_tree.run(tree, y, inverse=True, context=context)
  np.testing.assert_allclose(back, x, atol=1e-10)
  np.testing.assert_allclose(inverse_log_det, -log_det, rtol=1e-10)


def _reference_split(z, num_scales):
  """The per-scale latents as the multi-scale recursion writes them out."""
  latents = []
  for _ in range(num_scales - 1):
    factored, z = tf.split(tf.nn.space_to_depth(z, 2), 2, axis=-1)
    latents.append(factored)
  return latents + [z]


@pytest.mark.parametrize('shape,num_scales', [((8, 8, 1), 1), ((8, 8, 1), 2),
                                              ((8, 16, 3), 3), ((16, 16, 2), 4)])
def test_the_latent_layout_is_derived_from_the_factor_outs(shape, num_scales):
  model = RealNVP(preset('digits', image_shape=shape, num_scales=num_scales,
                         num_blocks=0, feature_maps=2))
  z = tf.reshape(tf.range(2 * np.prod(shape), dtype=tf.float32), (2,) + shape)
  latents = model.split_latents(z)
  reference = _reference_split(z, num_scales)
  assert model.latent_layout.shapes == [tuple(r.shape[1:]) for r in reference]
  for latent, expected in zip(latents, reference):
    np.testing.assert_array_equal(latent, expected)
  np.testing.assert_array_equal(model.merge_latents(latents), z)


def test_the_tree_holds_every_layer_once_in_the_models_order():
  model = RealNVP(preset('digits', num_scales=2, num_blocks=0, feature_maps=2))
  names = [layer.name for layer in model.flow.all_layers()]
  assert names[0] == 'preprocess'
  assert names == ['preprocess'] + [layer.name for steps in model.scales for layer in steps]
  assert len(set(names)) == len(names)


def _python(code):
  return subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)


def test_the_file_container_needs_no_tensorflow():
  """compressed_file.py is pure bytes: loaded on its own, it imports no
  TensorFlow, and a header round-trips."""
  result = _python(
      'import importlib.util, sys\n'
      'spec = importlib.util.spec_from_file_location("cf", "real_nvp/compressed_file.py")\n'
      'cf = importlib.util.module_from_spec(spec); spec.loader.exec_module(cf)\n'
      'header = cf.Header(cf.Precisions(16, 24, 6), b"abcd", b"p", 300, (8, 8, 1), 64,\n'
      '                   10, 5, cf.Ramp(300, 40), b"wxyz")\n'
      'back, payload = cf.read_header(header.to_bytes() + bytes(8))\n'
      'assert back == header and payload == bytes(8), back\n'
      'assert sum(back.batches()) == 290 and max(back.batches()) <= 64\n'
      'assert "tensorflow" not in sys.modules and "numpy" in sys.modules\n'
      'print("ok")')
  assert result.stdout.strip() == 'ok', result.stderr[-2000:]


def test_training_and_evaluation_import_without_the_entropy_coder():
  result = _python(
      'import sys\nsys.modules["constriction"] = None  # import fails\n'
      'import real_nvp.train_lib, real_nvp.evaluation, real_nvp.export\n'
      'from real_nvp import RealNVP, preset\n'
      'RealNVP(preset("digits", num_blocks=0, feature_maps=2))\nprint("ok")')
  assert result.stdout.strip().endswith('ok'), result.stderr[-2000:]
