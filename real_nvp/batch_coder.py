"""One batch of images through a RealNVP's flow trees on the ANS stack:
steps 1-3 of compression.py's docstring (the dequantization's bits back,
the flow's local bits-back coding, the prior), for the chain that
compression.py drives.

The coder is a visitor of the flow trees (flow_tree.py, `_StepCoder`): each
layer's coding map (coding_maps.py) through the coding steps of
coding_steps.py, a coupling and the batch norm after it as one affine group.
"""

import copy
import dataclasses

import numpy as np
import tensorflow as tf

from real_nvp import flow_tree, layer_run, st_network
from real_nvp.coding_maps import AffineMap, CodingError
from real_nvp.coding_steps import (GaussianPrior, SigmoidStep, decode_affine,
                                   decode_monotone, encode_affine, encode_monotone)

__all__ = ['BatchCoder']


class BatchCoder:
  """Codes batches of uint8 images with `model` (a RealNVP) in inference mode
  at `precisions` (compressed_file.Precisions, every field set). The maps of
  value-free layers and each layer's graph, with its networks' weights
  folded (st_network.folded_weights), are made on first use and kept: make
  a new one after changing the weights. `traced` (per layer) may be
  wrapped, as bench/coder_batches.py times the networks."""

  def __init__(self, model, precisions):
    self.model = model
    self._set_priors(precisions)
    self._graphs = {}
    self._folded = {}  # the graphs' folded weights, by layer (variables they read)
    self._fixed_maps = {}  # the maps of layers that depend on no value (_StepCoder)
    self._u_tree = None  # the variational dequantizer's, read from u (_u_side)

  def at(self, precisions):
    """This coder at other precisions (a file's), sharing its layers' graphs
    and value-free maps, which do not depend on them."""
    coder = copy.copy(self)
    coder._set_priors(precisions)
    return coder

  def _set_priors(self, precisions):
    """The precisions, and the priors of the latents and of the variational
    noise on their grids (the noise's walks code on its grid: `_noise`)."""
    self.precisions = precisions
    self._prior = GaussianPrior(precisions.prior_bins, precisions.latent)
    self._noise = dataclasses.replace(precisions, latent=precisions.noise)
    self._noise_prior = GaussianPrior(precisions.prior_bins, precisions.noise)

  def encode(self, stream, batch):
    """Codes uint8 images [B, H, W, C] onto `stream` (bits back)."""
    k_u = self.precisions.dequantization
    pixels = batch.astype(np.int64) << k_u
    if self.model.config.dequantization == 'uniform':
      frac = stream.decode_uniform(np.full(batch.size, 1 << k_u)).reshape(batch.shape)
    else:
      frac = self._variational_fraction(stream, batch)
    z = self._walk(stream, self.model.flow, _Coded(pixels + frac, k_u), encoding=True)
    self._prior.encode(stream, z.h)

  def decode(self, stream, size, shape):
    """Inverse of `encode`: `size` images of `shape` [H, W, C] from `stream`."""
    k_u = self.precisions.dequantization
    z = self._prior.decode(stream, (size,) + tuple(shape))
    u = self._walk(stream, self.model.flow, _Coded(z, self.precisions.latent),
                   encoding=False).h
    pixels = u >> k_u
    if pixels.min() < 0 or pixels.max() >= self.model.config.levels:
      raise CodingError('a decoded pixel is out of range')
    images = pixels.astype(np.uint8)
    frac = u - (pixels << k_u)
    if self.model.config.dequantization == 'uniform':
      stream.encode_uniform(frac.ravel(), np.full(frac.size, 1 << k_u))
    else:
      self._give_back_variational(stream, images, frac)
    return images

  # --- the variational dequantizer: ε <-> v (its flow tree) <-> frac (the sigmoid) ----------

  def _variational_fraction(self, stream, batch):
    """frac ~ q(.|x) on the grid 2^-k_u, decoded from the stream (bits back):
    ε under the prior, then ε -> v -> frac in decoding mode."""
    tree, context = self._u_side(batch)
    eps = _Coded(self._noise_prior.decode(stream, batch.shape, noise=True),
                 self._noise.latent, context)
    return self._walk(stream, tree, eps, encoding=False, precisions=self._noise).h

  def _give_back_variational(self, stream, images, frac):
    """Inverse of `_variational_fraction`: gives the noise's bits back."""
    tree, context = self._u_side(images)
    eps = self._walk(stream, tree, _Coded(frac, self.precisions.dequantization, context),
                     encoding=True, precisions=self._noise)
    self._noise_prior.encode(stream, eps.h, noise=True)

  def _u_side(self, images):
    """The dequantizer read from u's side: frac -> v = logit(frac) -> ε = g^-1(v)
    (its flow tree inverted), and its context of the images."""
    dequantizer = self.model.dequantizer
    if self._u_tree is None:
      self._u_tree = flow_tree.Chain([flow_tree.Steps([SigmoidStep()]),
                                      flow_tree.Inverted(dequantizer.flow)])
      self._graphs[dequantizer] = self._trace(dequantizer.context, images)
    return self._u_tree, self._graphs[dequantizer](tf.constant(images)).numpy()

  def _walk(self, stream, tree, value, encoding, precisions=None):
    """Codes `value` through `tree`: data -> latent with the encoding steps
    (`encoding`), else latent -> data with the decoding ones; its latent side
    on the grid of `precisions` (default: the model's)."""
    coder = _StepCoder(stream, precisions or self.precisions, encoding, self.traced,
                       self._fixed_maps)
    out = tree.walk(coder, value, inverse=not encoding)
    if out.h.shape != value.h.shape:
      raise CodingError('A flow tree changed the shape of what it codes.')
    return out

  def traced(self, layer, x, context):
    """layer.coding_tensors(x, context) as one graph per layer (`_trace`),
    traced once for any batch size, so that every batch on both sides runs
    the same kernels; () without a call for the layers that compute none
    (batch norm, the logit)."""
    inputs = [x] if context is None else [x, tf.constant(context)]
    if layer not in self._graphs:
      function = self._trace(layer.coding_tensors, *inputs)
      self._graphs[layer] = function if function.structured_outputs else None
    function = self._graphs[layer]
    if function is None:
      return ()
    return function(*inputs)

  def _trace(self, function, *inputs):
    """`function` of tensors like `inputs`, any batch size, as one graph whose
    networks read folded weights."""
    spec = [tf.TensorSpec((None,) + tuple(x.shape[1:]), x.dtype) for x in inputs]
    with st_network.folded_weights(self._folded):
      # One eager call on one image makes the folded weights, so that the
      # graph is traced once (tf.function traces twice where it makes
      # variables).
      function(*[tf.zeros((1,) + tuple(x.shape[1:]), x.dtype) for x in inputs])
      return tf.function(lambda *args: function(*args),
                         autograph=False).get_concrete_function(*spec)


class _Coded:
  """A coding walk's value: int64 values h on the grid 2^-k, and the context
  in h's layout (the variational dequantizer's, a float32 numpy array, so
  that a squeeze moves it as it moves h, without TensorFlow's per-op cost;
  else None)."""

  def __init__(self, h, k, context=None):
    self.h, self.k, self.context = h, k, context


class _StepCoder(flow_tree.Visitor):
  """Codes each layer's map on `stream`: the encoding steps where the walk
  goes from the data side to the latent side (`encoding`), else the decoding
  ones. A layer walked against its own direction while encoding (or along it
  while decoding; an inverted node) is coded by its inverted map.

  A conditioned affine layer (a coupling) and the value-free affine layers
  right after it (its batch norm) are coded as one group (`_group`): its
  transformed elements by the composed map, its kept ones by the value-free
  part. Where the next group transforms exactly the elements this one
  keeps (alternating masks), those are coded once, by the value-free part
  then the next group's map composed: every element goes through one
  integer scale transform per coupling that transforms it, instead of one
  per layer (two thirds fewer with one batch norm per coupling)."""

  def __init__(self, stream, precisions, encoding, traced, fixed_maps):
    self.stream, self.precisions, self.encoding = stream, precisions, encoding
    self.traced, self.fixed_maps = traced, fixed_maps

  def steps(self, node, value, inverse):
    # A permutation (the squeeze) moves the values; between two, the shape
    # stays, and the layers are coded in groups.
    parts, run = [], []
    for layer in node.layers:
      if layer.permutation() is None:
        run.append(layer)
      else:
        parts += [(False, run), (True, [layer])] if run else [(True, [layer])]
        run = []
    if run:
      parts.append((False, run))
    for moves, layers in (reversed(parts) if inverse else parts):
      value = (self._layer(layers[0], value, inverse) if moves
               else self._groups(layers, value, inverse))
    return value

  def _groups(self, layers, value, inverse):
    """Layers that keep the shape, coded in groups (the class docstring), in
    the walk's direction."""
    groups, joined = self._plan(layers, value)
    order = range(len(groups))
    for i in (reversed(order) if inverse else order):
      head, fixed = groups[i]
      if fixed is None:
        value = self._layer(head, value, inverse)
      else:
        before = self._tail(*groups[i - 1], value)[1] if i and joined[i - 1] else None
        value = self._group(head, fixed, value, inverse, before, code_kept=not joined[i])
    return value

  def _plan(self, layers, value):
    """(groups, joined), worked out once per run of layers and shape: the
    groups in data -> latent order, (conditioned layer, the value-free affine
    layers after it) or (layer, None); joined[i]: group i's kept elements are
    the ones group i + 1 transforms (they are coded with them)."""
    key = ('plan',) + tuple(layers) + value.h.shape[1:]
    if key not in self.fixed_maps:
      groups, i = [], 0
      while i < len(layers):
        j = i + 1
        if self._conditioned(layers[i], value):
          while j < len(layers) and self._fixed_affine(layers[j], value):
            j += 1
          groups.append((layers[i], layers[i + 1:j]))
        else:
          groups.append((layers[i], None))
        i = j
      shape = value.h.shape[1:]
      joined = [bool(first[1]) and second[1] is not None and
                np.array_equal(second[0].coding_conditioning(shape),
                               ~first[0].coding_conditioning(shape))
                for first, second in zip(groups, groups[1:])] + [False]
      self.fixed_maps[key] = groups, joined
    return self.fixed_maps[key]

  def _conditioned(self, layer, value):
    return layer.coding_conditioning(value.h.shape[1:]) is not None

  def _fixed_affine(self, layer, value):
    return (layer.coding_conditioning(value.h.shape[1:]) is None and
            isinstance(self._fixed_map(layer, value), AffineMap))

  def _fixed_map(self, layer, value):
    """The map of a layer that depends on no value: asked for once."""
    step_map = self.fixed_maps.get(layer)
    if step_map is None:
      x = np.zeros(value.h.shape, np.float32)
      step_map = layer.coding_map(x, value.context, self.traced(layer, x, value.context))
      self.fixed_maps[layer] = step_map
    return step_map

  def _tail(self, head, fixed, value):
    """(tail, kept) of a group: its value-free layers' map composed, and that
    map on the head's kept elements alone; (None, None) without them."""
    if not fixed:
      return None, None
    key = (head,) + tuple(fixed)
    if key not in self.fixed_maps:
      tail = self._fixed_map(fixed[0], value)
      for layer in fixed[1:]:
        tail = tail.then(self._fixed_map(layer, value))
      conditioning = head.coding_conditioning(value.h.shape[1:])
      self.fixed_maps[key] = tail, AffineMap(tail.scale, tail.shift, conditioning=~conditioning)
    return self.fixed_maps[key]

  def _conditioned_map(self, layer, conditioning, h, k, context):
    """The map of a conditioned layer, from what it conditions on in h (the
    elements `conditioning`, known to both sides)."""
    x = _floats(np.where(conditioning, h, 0), k)
    return layer.coding_map(x, context, self.traced(layer, x, context))

  def _affine(self, step_map, h, k, inverse):
    """h through an affine map (data -> latent), or its inverse where the walk
    goes against the coding direction."""
    if inverse == self.encoding:
      step_map = step_map.inverse()
    code = encode_affine if self.encoding else decode_affine
    return code(self.stream, step_map, h, k)

  def _group(self, head, fixed, value, inverse, before, code_kept):
    """A conditioned affine layer then value-free affine ones, data -> latent:
    y = x (a c) + (b c + d) where the head transforms (a, b from the kept
    elements x_K), y = x c + d on x_K (unless `code_kept` is False: the next
    group codes them). `before`: the previous group's map of its kept
    elements, which are the ones this head transforms, applied first. Data
    -> latent codes the transformed elements, then the kept ones; latent ->
    data the kept ones first, which gives x_K back for the head's map."""
    conditioning = head.coding_conditioning(value.h.shape[1:])
    tail, kept = self._tail(head, fixed, value)
    code_kept = code_kept and kept is not None
    h = value.h
    if inverse and code_kept:
      h = self._affine(kept, h, value.k, inverse)
    layers = [head] + list(fixed)
    data_context = (layer_run.advance_context(layers, value.context, inverse=True)
                    if inverse else value.context)
    step_map = self._conditioned_map(head, conditioning, h, value.k, data_context)
    if not isinstance(step_map, AffineMap):
      raise CodingError(f'{type(head).__name__} is conditioned but not affine.')
    if tail is not None:
      step_map = step_map.then(tail)
    if before is not None:
      step_map = step_map.after(before)
    h = self._affine(step_map, h, value.k, inverse)
    if not inverse and code_kept:
      h = self._affine(kept, h, value.k, inverse)
    return _Coded(h, value.k, layer_run.advance_context(layers, value.context, inverse))

  def _layer(self, layer, value, inverse):
    permutation = layer.permutation()
    if permutation is not None:  # the context (numpy, like h) moves with the values
      move = permutation.inverse_fn if inverse else permutation.forward
      return _Coded(move(value.h), value.k,
                    None if value.context is None else move(value.context))
    context = layer_run.advance_context([layer], value.context, inverse)
    step_map = self._fixed_map(layer, value)  # conditioned layers are coded in groups
    if isinstance(step_map, AffineMap):
      return _Coded(self._affine(step_map, value.h, value.k, inverse), value.k, context)
    if inverse == self.encoding:
      raise CodingError(f'{type(layer).__name__} cannot be coded inverted.')
    data, latent = self.precisions.dequantization, self.precisions.latent
    if self.encoding:
      return _Coded(encode_monotone(self.stream, step_map, value.h, data, latent),
                    latent, context)
    return _Coded(decode_monotone(self.stream, step_map, value.h, data, latent),
                  data, context)

  def split(self, value):
    factored, rest = np.split(value.h, 2, axis=-1)
    return _Coded(factored, value.k), _Coded(rest, value.k, value.context)

  def merge(self, value, factored, rest):
    return _Coded(np.concatenate([factored.h, rest.h], -1), factored.k, value.context)


def _floats(x, k):
  """Grid integers -> float32 tensor of their values (correctly rounded: one
  rounding to float32, then an exact power of two)."""
  return tf.constant(x.astype(np.float32) * np.float32(2. ** -k))
