"""Coding maps: how each layer moves a value from the data side to the latent
side, in the terms the lossless coder needs (coding_steps.py codes them on
fixed-point grids). Pure numpy: the layers describe themselves with these,
and nothing here needs the entropy coder.

- `AffineMap`: y = x * scale + shift per element given what the layer
  conditions on (couplings, flow batch norm); coded as an exact integer
  scale transform.
- `MonotoneMap`: a non-linear increasing map (the logit preprocessing, the
  dequantizer's sigmoid) from a data grid to a latent grid: the cell
  [X, X + 1) 2^-k_in maps onto [g(X 2^-k_in), g((X + 1) 2^-k_in)), which
  holds the latent grid points lo(X) <= Y < lo(X + 1), lo(X) = ceil(g(X
  2^-k_in) 2^k_out), found by a search that is exact by construction.
- `Permutation`: positions only (squeeze).
"""

import math

import numpy as np

__all__ = ['AffineMap', 'MonotoneMap', 'Permutation', 'CodingError']

_TABLE_CELLS = 2 ** 16  # a monotone map keeps lo(X) of grids of up to this many cells


class CodingError(ValueError):
  """A value cannot be coded at the chosen precisions (the message says which)."""


class AffineMap:
  """y = x * scale + shift per element, scale > 0 (float64 arrays).

  `conditioning`: bool array [H, W, C] of the elements the parameters were
  computed from (the map is the identity there); a decoder recovers them
  first, then asks the layer for the map. The parameters broadcast to the
  values' shape [B, H, W, C]; or, `transformed_only`, they are those of
  the other elements alone, [B, n] in C order of ~conditioning (what a
  coupling's network gives: half the elements)."""

  def __init__(self, scale, shift, conditioning=None, transformed_only=False):
    scale = np.asarray(scale, np.float64)
    shift = np.asarray(shift, np.float64)
    if not np.all(np.isfinite(scale) & (scale > 0)) or not np.all(np.isfinite(shift)):
      raise CodingError('A layer\'s coding map has a scale that is not finite '
                        'and positive, or a shift that is not finite.')
    if transformed_only and (conditioning is None or scale.ndim != 2):
      raise ValueError('A map of the transformed elements only needs their '
                       'conditioning and parameters [B, n].')
    self.scale, self.shift = scale, shift
    self.conditioning = conditioning
    self.transformed_only = transformed_only
    self._reads = {}  # `_read_where`'s, by conditioning

  def transformed_parameters(self, event_shape):
    """(scale, shift), each [1 or B, n]: the parameters of the elements the
    map transforms (all of them without conditioning), in C order."""
    if self.transformed_only:
      return self.scale, self.shift
    return _at_transformed((self.scale, self.shift), self.conditioning, tuple(event_shape))

  def inverse(self):
    """The map from the latent side to the data side (float64-rounded)."""
    return AffineMap(1. / self.scale, -self.shift / self.scale, self.conditioning,
                     self.transformed_only)

  def then(self, other):
    """This map, then `other` (which conditions on nothing): y = (x a + b) c
    + d = x (a c) + (b c + d), float64-rounded; the identity stays where
    this one's is."""
    if other.conditioning is not None:
      raise ValueError('Only a map that conditions on nothing can follow another.')
    if not self.transformed_only:
      return AffineMap(self.scale * other.scale, self.shift * other.scale + other.shift,
                       self.conditioning)
    scale, shift = other._read_where(self.conditioning)
    return AffineMap(self.scale * scale, self.shift * scale + shift, self.conditioning,
                     transformed_only=True)

  def after(self, first):
    """`first` (value-free, transforming every element this map transforms),
    then this map: y = (x p + q) a + b = x (p a) + (q a + b), float64-rounded.
    What a coupling's batch norm does to the elements the coupling keeps,
    joined with the next coupling, which transforms them."""
    if (first.transformed_only or
        (first.conditioning is not None and
         (self.conditioning is None or np.any(first.conditioning & ~self.conditioning)))):
      raise ValueError('The first map must be value-free and transform every element '
                       'that the second transforms.')
    if self.transformed_only:
      scale, shift = first._read_where(self.conditioning)
    else:
      scale, shift = first.scale, first.shift
    return AffineMap(scale * self.scale, shift * self.scale + self.shift, self.conditioning,
                     self.transformed_only)

  def _read_where(self, conditioning):
    """(scale, shift) [1, n] of this map, whose parameters broadcast over the
    batch (it conditions on nothing), at the elements outside
    `conditioning` (the ones another map transforms): an image's worth,
    worked out once per conditioning (a coder composes the same value-free
    maps with every batch's)."""
    key = (conditioning.shape, conditioning.tobytes())
    if key not in self._reads:
      self._reads[key] = _at_transformed((self.scale, self.shift), conditioning,
                                         conditioning.shape)
    return self._reads[key]


def _at_transformed(parameters, conditioning, event_shape):
  """Each of `parameters` (broadcasting to [B, H, W, C]) at the elements
  outside `conditioning` (all without), [1 or B, n] in C order."""
  mask = (np.ones(event_shape, bool) if conditioning is None
          else ~np.broadcast_to(conditioning, event_shape))
  parts = []
  for values in parameters:
    values = values.reshape((1,) * (1 + len(event_shape) - values.ndim) + values.shape)
    parts.append(np.broadcast_to(values, values.shape[:1] + event_shape)[:, mask])
  return tuple(parts)


class MonotoneMap:
  """An increasing element-wise map y = forward(x) from the data interval
  [low, high) onto the latent interval [latent_low, latent_high] (a bound
  where forward is infinite), with its inverse; float64 numpy functions."""

  conditioning = None

  def __init__(self, forward, inverse, low, high, latent_low, latent_high):
    self.forward, self.inverse = forward, inverse
    self.low, self.high = low, high
    self.latent_low, self.latent_high = latent_low, latent_high
    self._tables = {}

  def _check(self, k_in, k_out):
    largest = max(abs(self.low), abs(self.high)) * 2. ** k_in
    latent = max(abs(self.latent_low), abs(self.latent_high)) * 2. ** k_out
    if max(largest, latent) >= 2. ** 52:
      raise CodingError(f'A non-linear coding step needs grids below 2^52 '
                        f'(data 2^-{k_in}, latent 2^-{k_out}); lower the precisions.')

  def _limits(self, k_in, k_out):
    return (int(math.floor(self.low * 2. ** k_in)), int(math.ceil(self.high * 2. ** k_in)) - 1,
            int(math.ceil(self.latent_low * 2. ** k_out)),
            int(math.floor(self.latent_high * 2. ** k_out)))

  def _cells(self, y, k_in, k_out):
    x_min, x_max, _, _ = self._limits(k_in, k_out)
    with np.errstate(over='ignore', invalid='ignore', divide='ignore'):
      x = np.floor(self.inverse(np.asarray(y, np.float64) * 2. ** -k_out) * 2. ** k_in)
    return np.clip(np.nan_to_num(x, nan=x_min), x_min, x_max).astype(np.int64)

  def cell_limits(self, k_in):
    """(first, last) data cell on grid k_in."""
    return self._limits(k_in, 0)[:2]

  def _table(self, k_in, k_out):
    """lo(X) of every cell X from the first to one past the last, when there
    are at most _TABLE_CELLS (the data grid of a pixel's noise: L 2^k_u
    cells), worked out once; else None."""
    key = (k_in, k_out)
    if key not in self._tables:
      x_min, x_max, _, _ = self._limits(k_in, k_out)
      self._tables[key] = (self._lower_edges(np.arange(x_min, x_max + 2), k_in, k_out)
                           if x_max + 2 - x_min <= _TABLE_CELLS else None)
    return self._tables[key]

  def data_cells(self, y, k_in, k_out):
    """X = the data cell of each latent grid point Y (int64 arrays): the last
    X with lo(X) <= Y, so a Y drawn from [lo(X), lo(X + 1)) finds X."""
    self._check(k_in, k_out)
    table = self._table(k_in, k_out)
    if table is None:
      return self._cells(y, k_in, k_out)
    x_min, x_max, _, _ = self._limits(k_in, k_out)
    cells = np.searchsorted(table, np.asarray(y, np.int64), side='right') - 1 + x_min
    return np.clip(cells, x_min, x_max)

  def lower_edges(self, x, k_in, k_out):
    """lo(X) = the first latent grid point whose cell is X or after, found
    by the decoder's own rounding (so exact by construction)."""
    self._check(k_in, k_out)
    x = np.asarray(x, np.int64)
    table = self._table(k_in, k_out)
    if table is None:
      return self._lower_edges(x, k_in, k_out)
    x_min, x_max, _, _ = self._limits(k_in, k_out)
    return table[np.clip(x, x_min, x_max + 1) - x_min]

  def _lower_edges(self, x, k_in, k_out):
    x_min, x_max, y_min, y_max = self._limits(k_in, k_out)
    with np.errstate(over='ignore', invalid='ignore', divide='ignore'):
      guess = np.ceil(self.forward(x * 2. ** -k_in) * 2. ** k_out)
    lo = np.clip(np.nan_to_num(guess, nan=y_min, posinf=y_max + 1, neginf=y_min),
                 y_min, y_max + 1).astype(np.int64)
    for _ in range(4):  # the float guess is almost always within a point or two
      earlier = (lo > y_min) & (self._cells(lo - 1, k_in, k_out) >= x)
      later = (lo <= y_max) & (self._cells(np.minimum(lo, y_max), k_in, k_out) < x)
      if not (earlier.any() or later.any()):
        break
      lo = lo - earlier + later
    else:
      wrong = earlier | later
      lo[wrong] = self._search(x[wrong], lo[wrong], k_in, k_out)
    return np.where(x > x_max, y_max + 1, np.where(x <= x_min, y_min, lo))

  def _search(self, x, guess, k_in, k_out):
    """lo(X) from a guess however far off: a bracket grown by doubling steps
    from the guess, then bisection (each step asks the decoder's rounding)."""
    _, _, y_min, y_max = self._limits(k_in, k_out)

    def reaches(y):  # cell(y) >= x, with y_max + 1 past every cell
      return (y > y_max) | (self._cells(np.clip(y, y_min, y_max), k_in, k_out) >= x)

    above = reaches(guess)
    # (low, high]: cell(low) < x (or low < y_min), cell(high) >= x.
    low = np.where(above, guess - 1, guess)
    high = np.where(above, guess, guess + 1)
    step = np.ones_like(guess)
    while True:
      grow_down = above & (low >= y_min) & reaches(low)
      grow_up = ~above & (high <= y_max) & ~reaches(high)
      if not (grow_down.any() or grow_up.any()):
        break
      high, low = np.where(grow_down, low, high), np.where(grow_up, high, low)
      low = np.where(grow_down, np.maximum(low - step, y_min - 1), low)
      high = np.where(grow_up, np.minimum(high + step, y_max + 1), high)
      step = step * 2
    while np.any(high - low > 1):
      middle = (low + high) // 2
      upper = reaches(middle)
      low, high = np.where(upper, low, middle), np.where(upper, middle, high)
    return high


class Permutation:
  """Moves values between positions: forward(array) data -> latent layout."""

  def __init__(self, forward, inverse):
    self.forward, self.inverse_fn = forward, inverse

  def inverse(self):
    return Permutation(self.inverse_fn, self.forward)
