"""The flow's structure as one tree, built once; every user walks it.

Nodes (data -> latent reading; `inverse` walks latent -> data):

    Steps(layers)    a run of flow layers, in order (layer_run.py runs it)
    Chain(nodes)     the nodes one after the other
    FactorOut(inner) [H, W, 2K]: the first K channels go straight to the latent,
                     `inner` maps the other K (paper §3.6)
    Inverted(node)   `node` run the other way (the unsqueeze: Inverted(Steps([squeeze])))

The multi-scale flow of model.py is

    Chain([Steps([logit]), scale_0])
    scale_i = Chain([Steps(couplings, squeeze, couplings), FactorOut(scale_i+1),
                     Inverted(Steps([squeeze]))]),   scale_last = Steps(couplings)

and the variational dequantizer's flow is a Chain of the same nodes with a
context. A walk is `node.walk(visitor, value, inverse)`; the visitor says what
a run of layers does to its value (`steps`), how a factor-out splits and
merges it, and how a chain groups what it accumulates (`begin`/`end`). Three
visitors live here: `TensorRun` (the flow on tensors, with log-dets and the
context), `LatentLayout` (where each scale's latent sits in z, derived from
the factor-outs) and `layers()`; the lossless coder (batch_coder.py) is a
fourth.
"""

import abc

import numpy as np
import tensorflow as tf

from real_nvp import layer_run

__all__ = ['Steps', 'Chain', 'FactorOut', 'Inverted', 'Visitor', 'TensorRun',
           'LatentLayout']


class Visitor(abc.ABC):
  """What a walk does at each kind of node; see the module docstring."""

  @abc.abstractmethod
  def steps(self, node, value, inverse):
    """A run of layers' output from its input `value`."""

  @abc.abstractmethod
  def split(self, value):
    """(factored, rest) of a factor-out's input (either direction)."""

  @abc.abstractmethod
  def merge(self, value, factored, rest):
    """The factor-out's output from its input `value` and the two parts."""

  def begin(self, value):
    """The value a chain's first node receives."""
    return value

  def end(self, value, inner):
    """The chain's output from its input `value` and its last node's output."""
    del value
    return inner


class Steps:
  """A run of flow layers; `memory_saving` says how training mode is
  differentiated (the run is the unit that `invert` keeps the output of)."""

  def __init__(self, layers, memory_saving='off'):
    self.layers = list(layers)
    self.memory_saving = memory_saving

  def walk(self, visitor, value, inverse=False):
    return visitor.steps(self, value, inverse)

  def all_layers(self):
    return list(self.layers)


class Chain:
  """Nodes in data -> latent order."""

  def __init__(self, nodes):
    self.nodes = list(nodes)

  def walk(self, visitor, value, inverse=False):
    inner = visitor.begin(value)
    for node in (reversed(self.nodes) if inverse else self.nodes):
      inner = node.walk(visitor, inner, inverse)
    return visitor.end(value, inner)

  def all_layers(self):
    """Every layer once (a squeeze and its unsqueeze are one), data side first."""
    layers = []
    for layer in (layer for node in self.nodes for layer in node.all_layers()):
      if not any(layer is seen for seen in layers):
        layers.append(layer)
    return layers


class FactorOut:
  """Channels [:K] of [H, W, 2K] factored out; `inner` maps channels [K:]."""

  def __init__(self, inner):
    self.inner = inner

  def walk(self, visitor, value, inverse=False):
    factored, rest = visitor.split(value)
    return visitor.merge(value, factored, self.inner.walk(visitor, rest, inverse))

  def all_layers(self):
    return self.inner.all_layers()


class Inverted:
  """`node` in the other direction."""

  def __init__(self, node):
    self.node = node

  def walk(self, visitor, value, inverse=False):
    return self.node.walk(visitor, value, not inverse)

  def all_layers(self):
    return self.node.all_layers()


# --- the flow on tensors ---------------------------------------------------------------


class Flowing:
  """A walk's value on tensors: the data [B, H, W, C], the log-det summed so
  far in the current chain ([B], None before the first step) and the context."""

  def __init__(self, x, log_det=None, context=None):
    self.x, self.log_det, self.context = x, log_det, context


def _add(a, b):
  return b if a is None else a if b is None else a + b


class TensorRun(Visitor):
  """Runs a tree on tensors: (output, log_det [B]) of the map in the direction
  walked, each chain summing its nodes' log-dets in the order they ran (so
  the sums group as TFP's Chain of the same bijectors would)."""

  def __init__(self, training=False):
    self.training = training

  def steps(self, node, value, inverse):
    y, log_det = layer_run.run_layers(
        node.layers, value.x, inverse=inverse, training=self.training,
        memory_saving=node.memory_saving, context=value.context)
    return Flowing(y, _add(value.log_det, log_det),
                   layer_run.advance_context(node.layers, value.context, inverse))

  def split(self, value):
    factored, rest = tf.split(value.x, 2, axis=-1)
    return factored, Flowing(rest, None, value.context)

  def merge(self, value, factored, rest):
    return Flowing(tf.concat([factored, rest.x], axis=-1),
                   _add(value.log_det, rest.log_det), value.context)

  def begin(self, value):
    return Flowing(value.x, None, value.context)

  def end(self, value, inner):
    return Flowing(inner.x, _add(value.log_det, inner.log_det), inner.context)


def run(tree, x, inverse=False, training=False, context=None):
  """(y, log_det [B]) of `tree` applied to x (see `TensorRun`)."""
  out = tree.walk(TensorRun(training), Flowing(x, None, context), inverse)
  log_det = out.log_det
  if log_det is None:  # A tree of no layers.
    log_det = tf.zeros(tf.shape(x)[:1], x.dtype)
  return out.x, log_det


# --- the latents' layout ---------------------------------------------------------------


class _IndexWalk(Visitor):
  """Walks element indices through the tree's permutations (latent -> data),
  recording what each factor-out factors out."""

  def __init__(self):
    self.parts = []
    self.last_rest = None

  def steps(self, node, value, inverse):
    for layer in (reversed(node.layers) if inverse else node.layers):
      permutation = layer.permutation()
      if permutation is not None:
        value = permutation.inverse_fn(value) if inverse else permutation.forward(value)
    return value

  def split(self, value):
    factored, rest = np.split(value, 2, axis=-1)
    self.parts.append(factored)
    self.last_rest = rest
    return factored, rest

  def merge(self, value, factored, rest):
    return np.concatenate([factored, rest], axis=-1)


class LatentLayout:
  """Where each scale's latent sits in the latent z [H, W, C], derived from
  the tree's factor-outs and permutations (as TFP's Glow derives its
  `blockwise_splits`): scale i < S's latent is what the i-th factor-out
  factors out, the last one what the innermost factor-out passes on (z
  itself for one scale). Finest scale first."""

  def __init__(self, tree, event_shape):
    size = int(np.prod(event_shape))
    walk = _IndexWalk()
    index = np.arange(size).reshape((1,) + tuple(event_shape))
    tree.walk(walk, index, inverse=True)
    parts = walk.parts + [walk.last_rest if walk.parts else index]
    self.shapes = [tuple(part.shape[1:]) for part in parts]
    self._indices = [part.reshape(-1) for part in parts]
    self._order = np.argsort(np.concatenate(self._indices))

  def split(self, z):
    """z [B, H, W, C] -> the per-scale latents, finest first."""
    flat = tf.reshape(z, [tf.shape(z)[0], -1])
    return [tf.reshape(tf.gather(flat, indices, axis=1),
                       tf.concat([tf.shape(z)[:1], shape], 0))
            for indices, shape in zip(self._indices, self.shapes)]

  def merge(self, latents, event_shape):
    """Inverse of `split`."""
    if len(latents) != len(self.shapes):
      raise ValueError(f'Expected {len(self.shapes)} per-scale latents, '
                       f'one per scale. Received {len(latents)}')
    batch = tf.shape(latents[0])[:1]
    flat = tf.concat([tf.reshape(latent, tf.concat([batch, [-1]], 0))
                      for latent in latents], axis=1)
    return tf.reshape(tf.gather(flat, self._order, axis=1),
                      tf.concat([batch, event_shape], 0))
