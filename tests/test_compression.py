"""Lossless compression: each layer's coding step, round trips, the code
length against bits/dim, and the file's checks."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import perturb, tiny_trainer
from real_nvp import (RealNVP, ans_stream, coding_maps, coding_steps, compressed_file,
                      data, model_dir_layout, preset)
from real_nvp.batch_norm import FlowBatchNorm
from real_nvp.coupling import Coupling
from real_nvp.compression import CompressedFileError, Compressor
from real_nvp.preprocess import LogitPreprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEVELS = 17


def _model(dequantization, seed=0):
  model = RealNVP(preset('digits', num_blocks=1, feature_maps=8,
                         dequantization=dequantization, dequant_feature_maps=8))
  model.log_weights(data.load_dataset('digits').eval.images[:32], training=True)
  perturb(model, scale=0.05, seed=seed)
  return model


@pytest.fixture(scope='module')
def models():
  return {name: _model(name) for name in ('uniform', 'variational')}


# --- each layer's coding step -------------------------------------------------------


def _grid(values, k):
  return [int(v) for v in np.floor(np.asarray(values, np.float64) * 2. ** k)]


def _layer_cases():
  """(name, the layer's coding map, data-side grid values X, k_in, the exact
  image of each cell [g(x), g(x + 2^-k_in)) as a function)."""
  rng = np.random.default_rng(0)
  x = tf.constant(rng.normal(size=(1, 4, 4, 2)), tf.float32)
  cases = []
  for mask in ('checkerboard', 'channel'):
    layer = Coupling(mask, parity=1, num_blocks=1, feature_maps=4)
    layer(x)
    perturb(layer, scale=0.5)
    cases.append((f'coupling_{mask}', layer, x, 20))
  batch_norm = FlowBatchNorm(momentum=0.)
  batch_norm(x * 3. + 1., training=True)  # moving averages of another scale
  cases.append(('batch_norm', batch_norm, x, 20))
  u = tf.constant(rng.uniform(0, LEVELS, size=(1, 4, 4, 2)), tf.float32)
  cases.append(('logit_preprocess', LogitPreprocess(LEVELS), u, 16))
  fraction = tf.constant(rng.uniform(0, 1, size=(1, 4, 4, 2)), tf.float32)
  cases.append(('dequantizer_sigmoid', coding_steps.SigmoidStep(), fraction, 16))
  return cases


def _cell_widths(step_map, x, k_in):
  """log2 of the exact width of each cell's image, 2^k_out units excluded."""
  lower = np.array(x, np.float64) * 2. ** -k_in
  upper = lower + 2. ** -k_in
  if isinstance(step_map, coding_maps.AffineMap):
    return np.log2(step_map.scale.ravel() * 2. ** -k_in)
  return np.log2(step_map.forward(upper) - step_map.forward(lower))


@pytest.mark.parametrize('case', range(5), ids=[c[0] for c in _layer_cases()])
def test_each_coding_step_round_trips_and_costs_its_log_det(case):
  """A step decodes n = |cell image| 2^k_out indices (bits back) per element:
  log2 n = log2(g'(ξ) 2^(k_out - k_in)) for some ξ in the cell (the layer's
  density term), and n is that width rounded to an integer, so
  |log2 n - log2 width| <= log2(ℓ / (ℓ - 1)) <= 1.5 / ℓ for ℓ = width >= 27."""
  name, layer, x, k_in = _layer_cases()[case]
  c = 12
  step_map = layer.coding_map(x)
  values = _grid(x.numpy().ravel(), k_in)
  widths = _cell_widths(step_map, values, k_in) + (k_in + c)  # log2 ℓ
  assert widths.min() > math.log2(27)
  stream = ans_stream.Stream(encoding=True)
  stream.chain_start = True  # what is decoded comes from the generator, counted
  latent = coding_steps.encode_step(stream, step_map, values, k_in, k_in + c)
  tolerance = np.sum(1.5 / 2. ** widths)
  assert abs(stream.initial_bits - widths.sum()) <= tolerance, name
  # Round trip on a stream of random words: the values and every word come back.
  words = np.random.default_rng(1).integers(0, 2 ** 32, 64, dtype=np.uint64).astype(np.uint32)
  stream = ans_stream.Stream(encoding=True, words=words)
  latent = coding_steps.encode_step(stream, step_map, values, k_in, k_in + c)
  assert coding_steps.decode_step(stream, step_map, latent, k_in, k_in + c) == values
  np.testing.assert_array_equal(stream.words(), words)


def test_a_squeeze_moves_values_only(models):
  squeeze = next(layer for layer in models['uniform'].scales[0]
                 if type(layer).__name__ == 'Squeeze')
  permutation = squeeze.coding_map(None)
  values = np.arange(2 * 4 * 4 * 3).reshape(2, 4, 4, 3).astype(object)
  np.testing.assert_array_equal(permutation.forward(values),
                                tf.nn.space_to_depth(values.astype(np.int64), 2))
  np.testing.assert_array_equal(permutation.inverse().forward(permutation.forward(values)),
                                values)


def test_large_cells_are_coded_in_exact_parts():
  counts = [5, 2 ** 24 + 3, 2 ** 39 + 12345, 1, 2 ** 16 * 7 + 1]
  index = [4, 2 ** 24 + 2, 2 ** 39 + 777, 0, 2 ** 16 * 7]
  words = np.arange(1, 33, dtype=np.uint32)
  stream = ans_stream.Stream(encoding=True, words=words)
  stream.encode_uniform(index, counts)
  assert stream.decode_uniform(counts) == index
  np.testing.assert_array_equal(stream.words(), words)


# --- whole images --------------------------------------------------------------------


@pytest.mark.parametrize('dequantization', ['uniform', 'variational'])
@pytest.mark.parametrize('images', ['digits', 'random'])
def test_round_trip_is_lossless(models, dequantization, images):
  if images == 'digits':
    batch = data.load_dataset('digits').eval.images[:6]
  else:
    batch = np.random.default_rng(3).integers(0, LEVELS, (4, 8, 8, 1)).astype(np.uint8)
  compressor = Compressor(models[dequantization])
  blob, info = compressor.encode(batch)
  np.testing.assert_array_equal(compressor.decode(blob), batch)
  assert info['file_bits'] == 8 * len(blob) and info['initial_bits'] > 0


def test_an_image_that_would_empty_the_stack_restarts_the_chain(models, monkeypatch):
  """Forced: every image after the first finds the stack too short, so each
  is coded as a start of the chain; the header lists them all."""
  monkeypatch.setattr(ans_stream, '_RESERVE_BITS', 10 ** 9)
  batch = data.load_dataset('digits').eval.images[:3]
  compressor = Compressor(models['uniform'])
  blob, info = compressor.encode(batch)
  assert info['chain_starts'] == 3
  assert compressed_file.read_header(blob)[0].chain_starts == (0, 1, 2)
  np.testing.assert_array_equal(compressor.decode(blob), batch)


def test_the_code_length_is_the_models_bits_per_dim(tmp_path):
  """Over a trained model's held-out images, the file without its initial
  bits is within 3 % of the model's bound (a Monte Carlo estimate too: the
  coder's noise is other draws than the evaluation's)."""
  trainer = tiny_trainer(tmp_path, 120, checkpoint_every=120)
  trainer.train()
  images = data.load_dataset('digits').eval.images[:120]
  blob, info = Compressor(trainer.model).encode(images)
  net = (info['file_bits'] - info['initial_bits']) / (120 * 64)
  bound = float(tf.reduce_mean(trainer.model.bits_per_dim_estimates(
      images, seed=5, num_samples=16)['bits_per_dim']))
  assert abs(net / bound - 1.) < 0.03, (net, bound)


# --- the file ------------------------------------------------------------------------


def test_a_file_of_another_model_or_damaged_is_refused_in_one_line(models):
  images = data.load_dataset('digits').eval.images[:3]
  blob, _ = Compressor(models['uniform']).encode(images)
  other = Compressor(_model('uniform', seed=7))
  cases = {
      'another model': lambda: other.decode(blob),
      'truncated': lambda: Compressor(models['uniform']).decode(blob[:-6]),
      'payload byte': lambda: Compressor(models['uniform']).decode(
          blob[:-9] + bytes([blob[-9] ^ 0x10]) + blob[-8:]),
      'not a file of ours': lambda: Compressor(models['uniform']).decode(b'PK' + blob),
      'header byte': lambda: Compressor(models['uniform']).decode(
          blob[:10] + bytes([blob[10] ^ 0xff]) + blob[11:]),
  }
  for name, call in cases.items():
    with pytest.raises(CompressedFileError) as raised:
      call()
    assert '\n' not in str(raised.value), name
  with pytest.raises(CompressedFileError, match='another model'):
    cases['another model']()


def test_the_command_encodes_and_decodes_in_new_processes(tmp_path):
  model_dir = tmp_path / 'run'
  tiny_trainer(model_dir, 4, checkpoint_every=4).train()
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')

  def command(*args):
    return subprocess.run([sys.executable, '-m', 'real_nvp.compress', *args,
                           f'--model_dir={model_dir}'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)

  encoded = command('encode', f'--output={tmp_path}/digits.rnvz', '--num_images=20')
  assert encoded.returncode == 0, encoded.stderr[-2000:]
  report = __import__('json').loads(encoded.stdout.strip().splitlines()[-1])
  assert report['num_images'] == 20 and report['num_dims'] == 64
  assert report['file_bits'] == 8 * os.path.getsize(tmp_path / 'digits.rnvz')
  assert report['bits_per_dim_net'] < report['bits_per_dim_file']
  decoded = command('decode', f'--input={tmp_path}/digits.rnvz',
                    f'--output={tmp_path}/back.npz')
  assert decoded.returncode == 0, decoded.stderr[-2000:]
  np.testing.assert_array_equal(np.load(tmp_path / 'back.npz')['images'],
                                data.load_dataset('digits').eval.images[:20])
  # Another run's checkpoint: one line, no traceback.
  other = tmp_path / 'other'
  tiny_trainer(other, 2).train()
  refused = subprocess.run(
      [sys.executable, '-m', 'real_nvp.compress', 'decode', f'--model_dir={other}',
       f'--input={tmp_path}/digits.rnvz', f'--output={tmp_path}/x.npz'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert refused.returncode != 0 and 'Traceback' not in refused.stderr
  assert 'another model' in refused.stderr
  assert model_dir_layout.has_checkpoint(str(other))
