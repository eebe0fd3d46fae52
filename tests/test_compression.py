"""Lossless compression: each coding step on arrays, the stream's uniform
sizes, the prior's escapes, round trips over batches, the chain's start
against the codec, the code length against bits/dim, and the file's checks."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import perturb, tiny_trainer
from real_nvp import (FlowConfig, RealNVP, ans_stream, chain_start, coding_maps,
                      coding_steps, compressed_file, data, flow_tree, image_codec,
                      model_dir_layout, preset)
from real_nvp.batch_norm import FlowBatchNorm
from real_nvp.coupling import Coupling
from real_nvp.compression import CompressedFileError, Compressor, Precisions
from real_nvp.preprocess import LogitPreprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEVELS = 17


def _model(dequantization, seed=0, shape=(8, 8, 1)):
  if shape == (8, 8, 1):
    config = preset('digits', num_blocks=1, feature_maps=8,
                    dequantization=dequantization, dequant_feature_maps=8)
  else:
    config = FlowConfig(shape, levels=256, num_scales=1, num_blocks=1, feature_maps=4,
                        dequantization=dequantization, dequant_feature_maps=4)
  model = RealNVP(config)
  rng = np.random.default_rng(seed)
  model.log_weights(rng.integers(0, config.levels, (8,) + shape).astype(np.uint8),
                    training=True)
  perturb(model, scale=0.05, seed=seed)
  return model


@pytest.fixture(scope='module')
def models():
  return {name: _model(name) for name in ('uniform', 'variational')}


def _random_words(count, seed=1):
  return np.random.default_rng(seed).integers(1, 2 ** 32, count, dtype=np.uint64).astype(
      np.uint32)


# --- the stream and each coding step on arrays --------------------------------------


def test_uniform_indices_of_any_size_round_trip_at_their_log2():
  rng = np.random.default_rng(0)
  sizes = np.concatenate([rng.integers(1, 2 ** 12, 300), rng.integers(2 ** 12, 2 ** 30, 300),
                          rng.integers(2 ** 30, 2 ** 48, 300), [1, 2, 2 ** 24, 2 ** 48]])
  stream = ans_stream.Stream(encoding=True, words=_random_words(4000))
  before = stream.valid_bits()
  index = stream.decode_uniform(sizes)
  assert np.all((index >= 0) & (index < sizes))
  taken = before - stream.valid_bits()
  assert abs(taken - np.log2(sizes).sum()) < 0.002 * len(sizes) + 64
  stream.encode_uniform(index, sizes)
  np.testing.assert_array_equal(stream.words(), _random_words(4000))
  with pytest.raises(ValueError):
    stream.encode_uniform([5], [5])


def _affine_cases():
  rng = np.random.default_rng(0)
  shape = (3, 4, 4, 2)
  scales = {'near_one': np.exp(rng.normal(0, 0.5, shape)),
            'far_from_one': np.exp(rng.choice([-9., 9.], shape) + rng.normal(0, 1, shape)),
            'extreme': rng.choice([2. ** -20, 2. ** 20], shape),
            # R = 1: sizes that are no symbol, the stream's general path
            'below_the_grid': rng.choice([2. ** -26, 2. ** -30], shape)}
  return {name: coding_maps.AffineMap(scale, rng.normal(0, 3, shape),
                                      conditioning=np.arange(32).reshape(4, 4, 2) % 3 == 0)
          for name, scale in scales.items()}


def test_sizes_planned_once_code_their_slices_as_the_slices_themselves():
  """An affine step plans its sizes once and codes them in runs
  (ans_stream.UniformSizes): the same stack as planning each run."""
  rng = np.random.default_rng(5)
  for sizes in (rng.integers(2, 2 ** 12, 900),  # one symbol each
                np.concatenate([rng.integers(1, 2 ** 30, 600), [1, 2 ** 24, 2 ** 13]])):
    runs = [slice(0, 300), slice(300, 301), slice(301, 301), slice(301, sizes.size)]
    planned = ans_stream.Stream(encoding=True, words=_random_words(4000))
    each = ans_stream.Stream(encoding=True, words=_random_words(4000))
    plan = ans_stream.UniformSizes(sizes)
    for run in runs:
      index = planned.decode_uniform(plan[run])
      np.testing.assert_array_equal(index, each.decode_uniform(sizes[run]))
      planned.encode_uniform((index + 1) % sizes[run], plan[run])
      each.encode_uniform((index + 1) % sizes[run], sizes[run])
    np.testing.assert_array_equal(planned.words(), each.words())


def test_a_map_of_its_transformed_elements_only_codes_as_its_whole_shape():
  """A coupling's map holds the parameters of the elements it transforms
  only (AffineMap transformed_only): the same integers as the map over the
  whole shape, composed with a batch norm's and inverted too."""
  rng = np.random.default_rng(4)
  shape = (3, 4, 4, 2)
  conditioning = rng.random(shape[1:]) < 0.5
  scale, shift = np.exp(rng.normal(0, 2, shape)), rng.normal(0, 3, shape)
  whole = coding_maps.AffineMap(scale, shift, conditioning)
  transformed = coding_maps.AffineMap(scale[:, ~conditioning], shift[:, ~conditioning],
                                      conditioning, transformed_only=True)
  batch_norm = coding_maps.AffineMap(np.array([[[[2., 0.5]]]]), np.array([1., -3.]))
  for first, second in [(whole, transformed), (whole.then(batch_norm), transformed.then(batch_norm)),
                        (whole.inverse(), transformed.inverse())]:
    for part, same in zip(coding_steps.integer_scale(first, 16, shape),
                          coding_steps.integer_scale(second, 16, shape)):
      np.testing.assert_array_equal(part, same)


@pytest.mark.parametrize('name', sorted(_affine_cases()))
def test_an_affine_step_is_exact_and_costs_minus_log2_of_its_scale(name):
  """The integer scale transform: (X, r) <-> (Y, q) exactly; the bits it
  takes back are log2 R - log2 S = log2 of R / S, within 2^-10 of log2 a
  where 2^-13 < a < 2^12, and Y is X R / S + b to a grid point or so."""
  step_map = _affine_cases()[name]
  k = 16
  x = np.random.default_rng(2).integers(-2 ** 16, 2 ** 16, step_map.scale.shape)
  x[0, 0, 0, :] = [-2 ** 16, 2 ** 16]  # the largest values
  mask, r, s, shift = coding_steps.integer_scale(step_map, k, x.shape)
  assert not mask[:, np.arange(32).reshape(4, 4, 2) % 3 == 0].any()
  stream = ans_stream.Stream(encoding=True, words=_random_words(20000))
  before = stream.valid_bits()
  y = coding_steps.encode_affine(stream, step_map, x, k)
  taken = before - stream.valid_bits()
  assert abs(taken - np.log2(r / s).sum()) < 0.01 * mask.sum() + 64
  # coded in runs, the stack dips by one run's log2 R past what the runs
  # before it took, not by log2 R over every element at once
  runs = coding_steps._runs(int(mask.sum()))
  before_run = np.cumsum([0.] + [np.log2(r[run] / s[run]).sum() for run in runs[:-1]])
  deepest = max(b + np.log2(r[run]).sum() for b, run in zip(before_run, runs))
  assert before - stream.low_water <= deepest + 0.01 * mask.sum() + 64
  if name == 'near_one':
    assert deepest < 0.25 * np.log2(r).sum()
  a = step_map.scale[mask]
  inside = (a > 2. ** -13) & (a < 2. ** 12)
  assert np.all(np.abs(np.log2(r / s) - np.log2(a))[inside] < 2. ** -10)
  expected = x[mask] * a + step_map.shift[mask] * 2. ** k
  ratio_error = np.abs(x[mask]) * np.abs(r / s - a)  # the 12-bit ratio's share
  assert np.all(np.abs(y[mask] - expected) <= ratio_error + a + 2.)
  np.testing.assert_array_equal(y[~mask], x[~mask])
  np.testing.assert_array_equal(coding_steps.decode_affine(stream, step_map, y, k), x)
  np.testing.assert_array_equal(stream.words(), _random_words(20000))


def _monotone_cases():
  rng = np.random.default_rng(0)
  u = rng.uniform(0, LEVELS, size=(2, 4, 4, 2))
  u.flat[:3] = [0., LEVELS - 2. ** -8, LEVELS / 2]  # both borders
  fraction = rng.uniform(0, 1, size=(2, 4, 4, 2))
  fraction.flat[:2] = [0., 1. - 2. ** -8]
  return {'logit_preprocess': (LogitPreprocess(LEVELS).coding_map(None), u),
          'dequantizer_sigmoid': (coding_steps.SigmoidStep().coding_map(None), fraction)}


@pytest.mark.parametrize('name', sorted(_monotone_cases()))
def test_a_monotone_step_is_exact_and_costs_its_cells_width(name):
  """A cell of 2^-k_in maps onto n latent points, n the cell's image width
  ℓ = (g(x + 2^-k_in) - g(x)) 2^k_out rounded: |log2 n - log2 ℓ| <= 1/ℓ."""
  step_map, values = _monotone_cases()[name]
  k_in, k_out = 8, 20
  x = np.floor(values * 2. ** k_in).astype(np.int64)
  stream = ans_stream.Stream(encoding=True, words=_random_words(20000))
  before = stream.valid_bits()
  y = coding_steps.encode_monotone(stream, step_map, x, k_in, k_out)
  taken = before - stream.valid_bits()
  low, high = x * 2. ** -k_in, (x + 1) * 2. ** -k_in
  with np.errstate(divide='ignore'):
    width = (np.minimum(step_map.forward(high), step_map.latent_high) -
             np.maximum(step_map.forward(low), step_map.latent_low)) * 2. ** k_out
  assert width.min() > 40
  assert abs(taken - np.log2(width).sum()) < np.sum(1. / width) + 0.002 * x.size + 64
  np.testing.assert_array_equal(coding_steps.decode_monotone(stream, step_map, y, k_in, k_out),
                                x)
  np.testing.assert_array_equal(stream.words(), _random_words(20000))


@pytest.mark.parametrize('name', sorted(_monotone_cases()))
def test_a_monotone_maps_table_of_cells_agrees_with_its_search(name):
  """A grid of few cells keeps lo(X) of each in a table (coding_maps.py):
  the same lo(X) as the search, and the same cell of every latent point."""
  step_map = _monotone_cases()[name][0]
  k_in, k_out = 4, 12
  x_min, x_max = step_map.cell_limits(k_in)
  cells = np.arange(x_min - 2, x_max + 3)
  searched = coding_maps.MonotoneMap(step_map.forward, step_map.inverse, step_map.low,
                                     step_map.high, step_map.latent_low,
                                     step_map.latent_high)
  searched._table = lambda k_in, k_out: None  # the search alone
  lower = step_map.lower_edges(cells, k_in, k_out)
  np.testing.assert_array_equal(lower, searched.lower_edges(cells, k_in, k_out))
  y = np.concatenate([np.arange(lower[0] - 3, lower[0] + 300),
                      np.arange(lower[-1] - 300, lower[-1] + 3),
                      np.random.default_rng(0).integers(lower[0], lower[-1], 10000)])
  np.testing.assert_array_equal(step_map.data_cells(y, k_in, k_out),
                                searched.data_cells(y, k_in, k_out))


def test_the_prior_follows_the_gaussian_far_into_its_tails():
  """Latents of N(0, s^2), s = 1, 3, 10 (an image the model does not know has
  such latents) cost what N(0, I) says, to 0.1 %; beyond |z| = 64 and up to
  2^30 they still round-trip."""
  k = 16
  prior = coding_steps.GaussianPrior(6, k)
  rng = np.random.default_rng(0)
  for scale in (1., 3., 10.):
    z = np.floor(rng.normal(size=(4, 8, 8, 8)) * scale * 2. ** k).astype(np.int64)
    stream = ans_stream.Stream(encoding=True)
    prior.encode(stream, z)
    value = (z + 0.5) * 2. ** -k
    gaussian = np.sum(value ** 2 / 2. / math.log(2.) + 0.5 * math.log2(2. * math.pi) + k)
    assert abs(stream.valid_bits() / gaussian - 1.) < 1e-3, scale
    decoder = ans_stream.Stream(encoding=False, words=stream.words())
    np.testing.assert_array_equal(prior.decode(decoder, z.shape), z)
    assert decoder.is_empty()
  z.flat[:4] = [64 * 2 ** k, -64 * 2 ** k - 1, 2 ** (30 + k), -2 ** (30 + k)]
  stream = ans_stream.Stream(encoding=True)
  prior.encode(stream, z)
  np.testing.assert_array_equal(
      prior.decode(ans_stream.Stream(encoding=False, words=stream.words()), z.shape), z)


def test_noise_drawn_after_a_batch_of_latents_follows_the_prior():
  """The variational dequantizer's ε is decoded from the top of the stack,
  where the last batch left its latents: its low bits (uniform), under them
  its bins, coded under this same prior. Decoded bins first (`noise`), ε is
  a draw of N(0, I) whatever those latents were; decoded like a latent, it
  would read their bins back (measured on the digits: a file 0.37 % above
  the bound). Both orders round-trip."""
  k, shape = 16, (16, 8, 8, 1)
  prior = coding_steps.GaussianPrior(6, k)
  # a batch whose latents all lie in the bin [2.5, 2.5 + 2^-6), spread evenly there
  latents = int(2.5 * 2 ** k) + np.random.default_rng(0).integers(0, 2 ** (k - 6), shape)
  for noise in (False, True):
    stream = ans_stream.Stream(encoding=True, words=_random_words(20000))
    prior.encode(stream, latents)
    eps = prior.decode(stream, shape, noise=noise) * 2. ** -k
    if not noise:
      assert np.all(np.floor(eps * 64) == 160)  # the latents' own bins
    else:
      assert abs(eps.mean()) < 0.15 and abs(eps.std() - 1.) < 0.1, (eps.mean(), eps.std())
  z = np.floor(np.random.default_rng(1).normal(size=shape) * 2. ** k).astype(np.int64)
  stream = ans_stream.Stream(encoding=True)
  prior.encode(stream, z, noise=True)
  np.testing.assert_array_equal(
      prior.decode(ans_stream.Stream(encoding=False, words=stream.words()), shape,
                   noise=True), z)


def test_a_squeeze_moves_values_only(models):
  squeeze = next(layer for layer in models['uniform'].flow.all_layers()
                 if type(layer).__name__ == 'Squeeze')
  permutation = squeeze.permutation()
  values = np.arange(2 * 4 * 4 * 3).reshape(2, 4, 4, 3)
  np.testing.assert_array_equal(permutation.forward(values),
                                tf.nn.space_to_depth(values, 2))
  np.testing.assert_array_equal(permutation.inverse().forward(permutation.forward(values)),
                                values)


def test_each_layer_describes_its_coding_map():
  x = tf.constant(np.random.default_rng(0).normal(size=(1, 4, 4, 2)), tf.float32)
  coupling = Coupling('checkerboard', parity=1, num_blocks=1, feature_maps=4)
  coupling(x)
  step_map = coupling.coding_map(x)
  assert isinstance(step_map, coding_maps.AffineMap)
  np.testing.assert_array_equal(step_map.conditioning, coupling.coding_conditioning((4, 4, 2)))
  batch_norm = FlowBatchNorm(momentum=0.)
  batch_norm(x * 3. + 1., training=True)
  expected = 1. / np.sqrt(np.var(x.numpy() * 3. + 1., axis=(0, 1, 2)) + batch_norm.epsilon)
  np.testing.assert_allclose(batch_norm.coding_map(x).scale[0, 0, 0], expected, rtol=1e-3)


def test_each_element_is_coded_once_per_coupling_that_transforms_it(models, monkeypatch):
  """One integer scale transform per coupling, of the elements it transforms:
  its map composed with its batch norm's, after the previous batch norm's
  on those elements (the ones the previous coupling kept); the kept
  elements of the last coupling before a squeeze or the end, by its batch
  norm alone. The composed maps are the maps one after the other."""
  rng = np.random.default_rng(0)
  conditioning = rng.random((4, 4, 2)) < 0.5
  kept = coding_maps.AffineMap(np.array([3., 0.25]), np.array([-1., 2.]), conditioning)
  first = coding_maps.AffineMap(np.exp(rng.normal(size=(2, 4, 4, 2))),
                                rng.normal(size=(2, 4, 4, 2)), conditioning=conditioning)
  second = coding_maps.AffineMap(np.array([2., 0.5]), np.array([1., -3.]))
  x = rng.normal(size=(2, 4, 4, 2))
  both = first.then(second)
  np.testing.assert_allclose(x * both.scale + both.shift,
                             (x * first.scale + first.shift) * second.scale + second.shift)
  assert both.conditioning is first.conditioning
  transformed_only = coding_maps.AffineMap(first.scale[:, ~conditioning],
                                           first.shift[:, ~conditioning], conditioning,
                                           transformed_only=True)
  for step_map in (first, transformed_only):
    joined = step_map.after(kept)
    scale, shift = step_map.transformed_parameters((4, 4, 2))
    expected = ((x * kept.scale + kept.shift)[:, ~conditioning] * scale + shift)
    scale, shift = joined.transformed_parameters((4, 4, 2))
    np.testing.assert_allclose(x[:, ~conditioning] * scale + shift, expected)
    assert joined.conditioning is conditioning
  with pytest.raises(ValueError):  # it would leave some of the transformed elements as they are
    first.after(coding_maps.AffineMap(kept.scale, kept.shift, ~conditioning))

  model = models['uniform']
  layers = model.flow.all_layers()
  couplings = sum(isinstance(layer, Coupling) for layer in layers)
  assert couplings and sum(isinstance(layer, FlowBatchNorm) for layer in layers) == couplings
  runs = 0  # runs of couplings between squeezes (their masks alternate)
  for node in _steps_nodes(model.flow):
    after_coupling = False
    for layer in node.layers:
      runs += isinstance(layer, Coupling) and not after_coupling
      if isinstance(layer, Coupling) or layer.permutation() is not None:
        after_coupling = isinstance(layer, Coupling)
  transformed = []
  integer_scale = coding_steps.integer_scale

  def counted(step_map, k, shape):
    parts = integer_scale(step_map, k, shape)
    transformed.append((parts[1].size, math.prod(shape)))
    return parts

  monkeypatch.setattr(coding_steps, 'integer_scale', counted)
  images = data.load_dataset('digits').eval.images[:4]
  compressor = Compressor(model, batch_size=4, fallback=False)
  stream = ans_stream.Stream(encoding=True, words=_random_words(1 << 14))
  compressor.batch_coder.encode(stream, images)
  assert len(transformed) == couplings + runs
  assert all(2 * changed == size for changed, size in transformed)  # half the elements each


class _StepsNodes(flow_tree.Visitor):
  """Collects a tree's runs of layers by walking it (no values)."""

  def __init__(self):
    self.nodes = []

  def steps(self, node, value, inverse):
    self.nodes.append(node)
    return value

  def split(self, value):
    return value, value

  def merge(self, value, factored, rest):
    return value


def _steps_nodes(tree):
  visitor = _StepsNodes()
  tree.walk(visitor, None)
  return visitor.nodes


# --- whole images in batches -------------------------------------------------------


@pytest.mark.parametrize('dequantization', ['uniform', 'variational'])
@pytest.mark.parametrize('images', ['digits', 'random'])
def test_round_trip_is_lossless_over_batches(models, dequantization, images):
  """A batch and a half and several batches (batch_size 4), bits back after
  the codec's start (no fallback); N = 1 is the codec's alone."""
  if images == 'digits':
    batch = data.load_dataset('digits').eval.images[:30]
  else:
    batch = np.random.default_rng(3).integers(0, LEVELS, (30, 8, 8, 1)).astype(np.uint8)
  compressor = Compressor(models[dequantization], batch_size=4, fallback=False)
  for count in (1, 30):
    blob, info = compressor.encode(batch[:count])
    decoder = Compressor(models[dequantization])  # the batch size is in the file
    np.testing.assert_array_equal(decoder.decode(blob), batch[:count])
    assert info['file_bits'] == 8 * len(blob)
  assert info['start_images'] < 30 and info['batches'] >= 2
  header = compressed_file.read_header(blob)[0]
  assert header.batch_size == 4 and max(header.batches()) <= 4
  assert sum(header.batches()) + header.start_images == 30


@pytest.mark.parametrize('dequantization', ['uniform', 'variational'])
def test_the_coders_networks_read_their_folded_weights_only(models, dequantization):
  """Every graph the coder traced (the couplings', the dequantizer's and its
  context network's) reads the s/t networks' weights folded once
  (st_network.folded_weights), none of the networks' own variables."""
  model = models[dequantization]
  compressor = Compressor(model, batch_size=4, fallback=False)
  compressor.encode(data.load_dataset('digits').eval.images[:12])
  trees = [model.flow] + ([model.dequantizer.flow] if dequantization == 'variational' else [])
  networks = [layer.st_net for tree in trees for layer in tree.all_layers()
              if isinstance(layer, Coupling)]
  if dequantization == 'variational':
    networks.append(model.dequantizer.context_net)
  own = {id(variable.handle) for network in networks  # Keras wraps tf.Variables
         for variable in network.variables}
  graphs = [graph for graph in compressor.batch_coder._graphs.values() if graph is not None]
  assert len(graphs) == len(networks) and own
  for graph in graphs:
    assert graph.variables and not own & {id(variable.handle) for variable in graph.variables}


def test_the_ramp_is_replayed_from_two_numbers():
  """The batch sizes follow min(B, left, max(1, (S + done·gain) // take)),
  batch by batch; the header lists none of them."""
  def one_by_one(ramp, count, batch_size, start_bits):
    sizes, done = [], 0
    while done < count:
      sizes.append(min(batch_size, count - done,
                       max(1, (start_bits + done * ramp.gain) // ramp.take)))
      done += sizes[-1]
    return tuple(sizes)
  rng = np.random.default_rng(0)
  for _ in range(2000):
    ramp = compressed_file.Ramp(int(rng.integers(1, 5000)), int(rng.integers(0, 600)))
    count, batch_size, start_bits = (int(v) for v in rng.integers(1, [3000, 100, 20000]))
    assert ramp.sizes(count, batch_size, start_bits) == one_by_one(
        ramp, count, batch_size, start_bits)
  sizes = compressed_file.Ramp(30000, 3000).sizes(1000, 64, 35000)
  assert sizes[:4] == (1, 1, 1, 1) and sizes[-2] == 64 and sum(sizes) == 1000
  with pytest.raises(ValueError, match='more batches'):
    compressed_file.Ramp(10 ** 9, 0).sizes(2 ** 60, 64, 8, most_batches=10 ** 6)


def test_a_ramp_that_runs_out_of_bits_is_coded_again_more_slowly(models, monkeypatch):
  """A ramp counting on far more bits than the images leave exhausts the
  stack; the encoder codes again with the gain it measured, and the file
  decodes."""
  images = data.load_dataset('digits').eval.images[:40]
  compressor = Compressor(models['uniform'], batch_size=8, fallback=False)
  measured = compressor._ramp(images[:8])  # pylint: disable=protected-access
  too_fast = compressed_file.Ramp(measured.take, 40 * measured.gain)
  monkeypatch.setattr(compressor, '_ramp', lambda batch: too_fast)
  blob, info = compressor.encode(images)
  assert info['batches'] >= 2 and info['start_images'] < 20
  ramp = compressed_file.read_header(blob)[0].ramp
  assert ramp.take > too_fast.take and ramp.gain < too_fast.gain
  np.testing.assert_array_equal(Compressor(models['uniform']).decode(blob), images)


@pytest.mark.parametrize('dequantization', ['uniform', 'variational'])
def test_three_channels_and_constant_and_extreme_images_round_trip(dequantization):
  model = _model(dequantization, shape=(4, 4, 3))
  rng = np.random.default_rng(0)
  images = np.concatenate([
      np.zeros((2, 4, 4, 3)), np.full((2, 4, 4, 3), 255),
      np.indices((4, 4)).sum(0)[None, :, :, None].repeat(3, -1) % 2 * 255 + np.zeros((2, 1, 1, 1)),
      rng.integers(0, 256, (20, 4, 4, 3))]).astype(np.uint8)
  compressor = Compressor(model, batch_size=8, fallback=False)
  blob, info = compressor.encode(images)
  assert info['batches'] >= 1
  np.testing.assert_array_equal(Compressor(model).decode(blob), images)


def test_the_default_grids_follow_the_models_dequantization_and_levels(models):
  # 17 levels, alpha 0.05: the logit's least slope maps a cell onto
  # 4 * 0.95 / 17 * 2^(k - k_u) latent points, at least 12 from k = k_u + 6
  assert Compressor(models['uniform']).precisions == Precisions(4, 10, 6)
  assert Compressor(models['variational']).precisions == Precisions(6, 12, 6)
  assert Compressor(models['variational']).precisions.noise == 10  # k_u + 4
  assert Compressor(models['uniform'], Precisions(dequantization=8)).precisions == (
      Precisions(8, 14, 6))


def test_another_precision_decodes_from_its_header(models):
  images = data.load_dataset('digits').eval.images[:12]
  compressor = Compressor(models['uniform'], Precisions(10, 22, 7), batch_size=5,
                          fallback=False)
  blob, _ = compressor.encode(images)
  assert compressed_file.read_header(blob)[0].precisions == Precisions(10, 22, 7)
  np.testing.assert_array_equal(Compressor(models['uniform']).decode(blob), images)


@pytest.mark.parametrize('precisions', [(24, 40, 10), (8, 40, 6), (24, 0, 1), (1, 0, 10)])
def test_the_ends_of_the_precision_ranges_round_trip(models, precisions):
  images = data.load_dataset('digits').eval.images[:60]
  compressor = Compressor(models['uniform'], Precisions(*precisions), batch_size=8,
                          fallback=False)
  blob, info = compressor.encode(images)
  assert info['batches'] >= 1
  np.testing.assert_array_equal(Compressor(models['uniform']).decode(blob), images)


def test_a_precision_combination_that_cannot_code_names_the_flag_to_change(models):
  with pytest.raises(ValueError, match=r'--latent_precision=5 is coarser than the prior.*'
                     r'--prior_bins_precision=6\): raise the first, lower the second'):
    Precisions(8, 5, 6)
  with pytest.raises(ValueError, match=r'--latent_precision=10 is too coarse for this '
                     r'model \(17 levels\) at --dequantization_precision=8: the logit '
                     r'preprocessing needs at least 11\. Raise --latent_precision, lower'):
    Compressor(models['uniform'], Precisions(8, 10, 6))
  Compressor(models['uniform'], Precisions(8, 11, 6)).encode(
      data.load_dataset('digits').eval.images[:3])


def test_the_chain_start_never_loses_to_the_codec(models):
  """N = 1 and N = 3: the file is the codec's bytes and the header, to the
  byte; with fallback, never more than the codec's file and the header."""
  images = data.load_dataset('digits').eval.images[:40]
  for count in (1, 3):
    blob, info = Compressor(models['uniform']).encode(images[:count])
    assert len(blob) * 8 == info['header_bits'] + 8 * len(image_codec.encode(images[:count]))
    assert info['start_images'] == count
  blob, info = Compressor(models['uniform'], batch_size=8).encode(images)
  assert len(blob) * 8 <= info['header_bits'] + 8 * len(image_codec.encode(images))


@pytest.mark.parametrize('shape', [(8, 8, 1), (16, 16, 3)])
def test_the_chain_start_is_the_fewest_images_whose_codec_bytes_hold_the_bits(shape):
  """Against every count's codec size in turn, for thresholds from below
  one image to beyond all of them (the search assumes sizes that grow with
  the count, as these do)."""
  rng = np.random.default_rng(3)
  images = (rng.integers(0, 4, (12,) + shape) * rng.integers(1, 60, (12, 1, 1, 1))
            ).astype(np.uint8)
  sizes = [8 * len(image_codec.encode(images[:n])) for n in range(1, 13)]
  assert sizes == sorted(sizes)
  for bits in [1, sizes[0], sizes[0] + 1, sizes[4] - 1, sizes[4], sizes[10] + 1,
               sizes[11], sizes[11] + 1] + list(rng.integers(sizes[0], sizes[11], 6)):
    count, start_bytes = chain_start.start_images(images, int(bits))
    expected = next((n for n, size in enumerate(sizes, 1) if size >= bits), 12)
    assert count == expected, (bits, sizes)
    assert start_bytes == image_codec.encode(images[:count])


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  trainer = tiny_trainer(tmp_path_factory.mktemp('trained'), 120, checkpoint_every=120)
  trainer.train()
  return trainer.model


def _net_and_bound(model, images):
  """(net bits/dim of the bits-back images of a file, their bound from 16
  draws, the tolerance): the net is one draw's integrand per image, the
  bound the mean of 16 others, so their difference has a standard deviation
  of sqrt(sum_i var_i (1 + 1/16)) / (N D) from the per-image variances of
  the integrand; 5 of those, and 0.5 % for the coder's rounding losses
  (coding_steps.py; measured below 0.1 %)."""
  blob, info = Compressor(model, batch_size=32, fallback=False).encode(images)
  np.testing.assert_array_equal(Compressor(model).decode(blob), images)
  start, dims = info['start_images'], info['num_dims']
  coded = len(images) - start
  assert coded >= len(images) // 2, info
  net = (info['file_bits'] - info['header_bits'] - info['start_bits']) / (coded * dims)
  bits = -model.log_weights(images[start:], (5, 3), 16).numpy() / (dims * math.log(2.))
  bound = bits.mean()
  noise = math.sqrt(bits.var(axis=0, ddof=1).sum() * (1 + 1 / 16)) / coded
  return net, bound, 5 * noise + 0.005 * bound


def test_the_code_length_is_the_models_bits_per_dim(trained):
  """Over a trained model's held-out images, the bits-back images' net cost
  is the model's bound on them, within the noise of the draws."""
  net, bound, tolerance = _net_and_bound(trained, data.load_dataset('digits').eval.images)
  assert abs(net - bound) < tolerance, (net, bound, tolerance)


def test_the_code_length_is_the_bound_out_of_distribution(trained):
  """Random, constant, extreme and checkerboard images, far from the digits:
  the file's net and the model's bound are the same number there too."""
  rng = np.random.default_rng(0)
  checkers = (np.indices((8, 8)).sum(0) % 2 * (LEVELS - 1))[None, :, :, None]
  images = np.concatenate([
      rng.integers(0, LEVELS, (48, 8, 8, 1)),
      np.repeat(np.arange(LEVELS)[:, None, None, None], 2, 0) * np.ones((1, 8, 8, 1), int),
      np.repeat(checkers, 8, 0), np.repeat(LEVELS - 1 - checkers, 8, 0)]).astype(np.uint8)
  images = images[rng.permutation(len(images))]
  net, bound, tolerance = _net_and_bound(trained, images)
  assert bound > 3., bound  # far out of distribution (the digits: about 2)
  assert abs(net - bound) < tolerance, (net, bound, tolerance)


# --- the file ------------------------------------------------------------------------


def test_a_file_of_another_model_or_damaged_is_refused_in_one_line(models):
  images = data.load_dataset('digits').eval.images[:12]
  blob, _ = Compressor(models['uniform'], batch_size=4, fallback=False).encode(images)
  codec_only, _ = Compressor(models['uniform']).encode(images[:2])
  other = Compressor(_model('uniform', seed=7))
  own = Compressor(models['uniform'])
  cases = {
      'another model': lambda: other.decode(blob),
      'truncated': lambda: own.decode(blob[:-8]),
      'payload byte': lambda: own.decode(blob[:-9] + bytes([blob[-9] ^ 0x10]) + blob[-8:]),
      'not a file of ours': lambda: own.decode(b'PK' + blob),
      'header byte': lambda: own.decode(blob[:12] + bytes([blob[12] ^ 0xff]) + blob[13:]),
      'appended': lambda: own.decode(blob + b'\0\0\0\1'),
      'codec truncated': lambda: own.decode(codec_only[:-3]),
      'codec byte': lambda: own.decode(codec_only[:-5] + bytes([codec_only[-5] ^ 1]) +
                                       codec_only[-4:]),
      'an older format': lambda: own.decode(blob[:2] + bytes([blob[2] - 1]) + blob[3:]),
  }
  for name, call in cases.items():
    with pytest.raises(CompressedFileError) as raised:
      call()
    assert '\n' not in str(raised.value), name
  with pytest.raises(CompressedFileError, match='another model'):
    cases['another model']()
  older = compressed_file.FORMAT_VERSION - 1
  with pytest.raises(CompressedFileError,
                     match=f'Format version {older} is not {older + 1}'):
    cases['an older format']()


def test_a_hostile_header_is_refused_before_anything_is_allocated(models):
  images = data.load_dataset('digits').eval.images[:12]
  blob, _ = Compressor(models['uniform'], batch_size=4, fallback=False).encode(images)
  header, payload = compressed_file.read_header(blob)
  for changes in ({'num_images': 10 ** 11},
                  {'num_images': 10 ** 6, 'ramp': compressed_file.Ramp(10 ** 9, 0)},
                  {'num_images': 2 ** 41, 'batch_size': 2 ** 40},
                  {'image_shape': (2 ** 20, 2 ** 20, 3)}, {'start_bytes': 2 ** 40}):
    forged = compressed_file.Header(**{**header.__dict__, **changes}).to_bytes() + payload
    with pytest.raises(CompressedFileError):
      Compressor(models['uniform']).decode(forged)


@pytest.mark.slow
def test_the_command_encodes_and_decodes_in_new_processes(tmp_path):
  model_dir = tmp_path / 'run'
  tiny_trainer(model_dir, 4, checkpoint_every=4).train()
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')

  def command(*args):
    return subprocess.run([sys.executable, '-m', 'real_nvp.compress', *args,
                           f'--model_dir={model_dir}'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)

  encoded = command('encode', f'--output={tmp_path}/digits.rnvz', '--num_images=20',
                    '--batch_size=8')
  assert encoded.returncode == 0, encoded.stderr[-2000:]
  report = json.loads(encoded.stdout.strip().splitlines()[-1])
  assert report['num_images'] == 20 and report['num_dims'] == 64
  assert report['batch_size'] == 8
  assert report['file_bits'] == 8 * os.path.getsize(tmp_path / 'digits.rnvz')
  assert math.isfinite(report['initial_bits'])
  decoded = command('decode', f'--input={tmp_path}/digits.rnvz',
                    f'--output={tmp_path}/back.npz')
  assert decoded.returncode == 0, decoded.stderr[-2000:]
  assert json.loads(decoded.stdout.strip().splitlines()[-1])['decode_images_per_sec'] > 0
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


def test_random_damage_to_a_file_ends_in_one_error_or_the_same_images(models):
  """Fuzz: random byte edits, cuts and appended bytes anywhere, and headers
  claiming up to 2^64 images: each decode is CompressedFileError, or (an
  edit the coder cannot see, such as a checksum-neutral one) the images."""
  images = data.load_dataset('digits').eval.images[:10]
  blob, _ = Compressor(models['uniform'], batch_size=4, fallback=False).encode(images)
  header, payload = compressed_file.read_header(blob)
  rng = np.random.default_rng(0)
  own = Compressor(models['uniform'])
  files = []
  for _ in range(60):
    damaged = bytearray(blob)
    for position in rng.integers(0, len(blob), rng.integers(1, 4)):
      damaged[position] = rng.integers(0, 256)
    files.append(bytes(damaged))
    files.append(blob[:rng.integers(0, len(blob))])
    files.append(blob + rng.bytes(int(rng.integers(1, 9))))
  for count in (2 ** 32, 2 ** 63, 2 ** 64 - 1):
    files.append(compressed_file.Header(**{**header.__dict__, 'num_images': count})
                 .to_bytes() + payload)
  for damaged in files:
    try:
      back = own.decode(damaged)
    except CompressedFileError as error:
      assert '\n' not in str(error)
    else:
      np.testing.assert_array_equal(back, images)


def test_decoding_into_a_folder_refuses_one_that_holds_files(tmp_path):
  from real_nvp import compress  # pylint: disable=g-import-not-at-top
  (tmp_path / 'old').mkdir()
  (tmp_path / 'old' / '00003.png').write_bytes(b'x')
  with pytest.raises(FileExistsError, match='already holds files'):
    compress._check_png_folder(str(tmp_path / 'old'))
  (tmp_path / 'held.rnvz').write_bytes(b'RZ')
  with pytest.raises(FileExistsError, match='taken as a folder'):
    compress._check_png_folder(str(tmp_path / 'held.rnvz'))
  compress._check_png_folder(str(tmp_path / 'new'))  # a new folder is fine
