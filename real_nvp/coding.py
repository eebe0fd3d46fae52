"""Lossless coding steps of the flow's layers (local bits-back coding, Ho,
Lohn & Abbeel 2019) and the bits-back stream they run on.

Every value is held on a fixed-point grid: an integer X stands for the cell
[X, X + 1) 2^-k of width 2^-k. A layer that is element-wise given what it
conditions on maps each element by an increasing function g from its data
side (grid k_in) to its latent side (grid k_out = k_in + c). The cell of X
maps onto the interval [g(X 2^-k_in), g((X + 1) 2^-k_in)), which holds the
n = lo(X + 1) - lo(X) latent grid points Y = lo(X) + i, i < n, with
lo(X) = ceil(g(X 2^-k_in) 2^k_out). Then

    encode (data -> latent): i is *decoded* from the stream as Uniform(n)
                             (bits back), Y = lo(X) + i;
    decode (latent -> data): X = floor(g^-1(Y 2^-k_out) 2^k_in), and
                             i = Y - lo(X) is *encoded* back.

The decoder finds X by rounding, and the encoder chose Y inside X's cell,
so X comes back exactly whatever the rounding of g; only the code length
depends on how well n matches g'(x) 2^(k_out - k_in): coding Y at grid
k_out costs log2 of its cell's probability, and the log2 n bits that come
back make the net cost that of X at grid k_in, -log p(x) 2^-k_in, up to
O(1/n). A permutation (squeeze) moves values without arithmetic.

- `AffineMap`: y = x * scale + shift (couplings, flow batch norm), computed
  exactly on the integers (float64 scale and shift are dyadic rationals), so
  any precision works.
- `MonotoneMap`: a non-linear increasing map (the logit preprocessing, the
  dequantizer's sigmoid) evaluated in float64 on grids of at most 53 bits,
  with the cells found by a search that is exact by construction.
- `Permutation`: positions only (squeeze).
- `Stream`: constriction's ANS coder with uniform indices of any count up
  to 2^40 (counts above 2^12, where 24-bit probabilities would no longer be
  uniform, are split into one of 256 blocks, a categorical, and their
  indices within blocks), a categorical model, and the
  starts of the chain: while `chain_start` is set, the encoder draws what it
  would decode from a seeded generator (the file holds no bits for it to
  take back; their information is `initial_bits`) and the decoder skips the
  matching encodes. An encoder that would decode more than the stack holds
  raises StackExhausted (see `Compressor.encode`).
"""

import math

import constriction
import numpy as np

__all__ = ['AffineMap', 'MonotoneMap', 'Permutation', 'Stream', 'CodingError',
           'StackExhausted', 'encode_step', 'decode_step', 'MAX_UNIFORM']

MAX_UNIFORM = 2 ** 40  # the largest cell count a step codes
_DIRECT = 2 ** 12  # larger counts are split (see _Large)
_HIGH_SYMBOLS = 256


class CodingError(ValueError):
  """A value cannot be coded at the chosen precisions (the message says which)."""


class StackExhausted(Exception):
  """The encoder decoded more than the stack held: the values came from its
  empty bottom (zeros), not from bits. The caller restarts the image as a
  start of the chain."""


_RESERVE_BITS = 32  # fewer valid bits left after a decode: the stack ran out


def _dyadic(values):
  """float64 array -> (numerators, exponents): value = numerator / 2^exponent."""
  pairs = [float(v).as_integer_ratio() for v in np.ravel(values)]
  return [p[0] for p in pairs], [p[1].bit_length() - 1 for p in pairs]


class AffineMap:
  """y = x * scale + shift per element, scale > 0 (float64 arrays of the
  layer's shape). `conditioning`: bool array of the elements the parameters
  were computed from (the map is the identity there); a decoder recovers
  them first, then asks the layer for the map."""

  def __init__(self, scale, shift, conditioning=None):
    scale = np.asarray(scale, np.float64)
    if not np.all(np.isfinite(scale) & (scale > 0)) or not np.all(np.isfinite(shift)):
      raise CodingError('A layer\'s coding map has a scale that is not finite '
                        'and positive, or a shift that is not finite.')
    self.scale, self.shift = scale, np.asarray(shift, np.float64)
    self.conditioning = conditioning
    # Numerators and exponents, once: each step evaluates the map 3 times.
    self._terms = list(zip(*_dyadic(scale), *_dyadic(self.shift)))

  def inverse(self):
    """The map from the latent side to the data side (float64-rounded)."""
    return AffineMap(1. / self.scale, -self.shift / self.scale, self.conditioning)

  def lower_edges(self, x, k_in, k_out):
    """lo(X) = ceil(g(X 2^-k_in) 2^k_out) for integers X (flat lists), exactly."""
    out = []
    for xi, (an, ea, bn, eb) in zip(x, self._terms):
      numerator = (an * xi << eb) + (bn << (k_in + ea))
      shift = k_in + ea + eb - k_out
      if shift <= 0:
        out.append(numerator << -shift)
      else:
        out.append(-((-numerator) >> shift))
    return out

  def data_cells(self, y, k_in, k_out):
    """X = floor(g^-1(Y 2^-k_out) 2^k_in) for integers Y (flat lists), exactly."""
    return [(((yi << eb) - (bn << k_out)) << (k_in + ea)) // (an << (k_out + eb))
            for yi, (an, ea, bn, eb) in zip(y, self._terms)]


class MonotoneMap:
  """An increasing element-wise map y = forward(x) from the data interval
  [low, high) onto the latent interval [latent_low, latent_high] (a bound
  where forward is infinite), with its inverse; float64 numpy functions."""

  conditioning = None

  def __init__(self, forward, inverse, low, high, latent_low, latent_high):
    self.forward, self.inverse = forward, inverse
    self.low, self.high = low, high
    self.latent_low, self.latent_high = latent_low, latent_high

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

  def data_cells(self, y, k_in, k_out):
    self._check(k_in, k_out)
    return [int(v) for v in self._cells(y, k_in, k_out)]

  def lower_edges(self, x, k_in, k_out):
    """lo(X) = the first latent grid point whose cell is X or after, found
    by the decoder's own rounding (so exact by construction)."""
    self._check(k_in, k_out)
    x = np.asarray(x, np.int64)
    x_min, x_max, y_min, y_max = self._limits(k_in, k_out)
    with np.errstate(over='ignore', invalid='ignore', divide='ignore'):
      guess = np.ceil(self.forward(x * 2. ** -k_in) * 2. ** k_out)
    lo = np.clip(np.nan_to_num(guess, nan=y_min, posinf=y_max + 1, neginf=y_min),
                 y_min, y_max + 1).astype(np.int64)
    for _ in range(64):
      earlier = (lo > y_min) & (self._cells(lo - 1, k_in, k_out) >= x)
      later = (lo <= y_max) & (self._cells(np.minimum(lo, y_max), k_in, k_out) < x)
      if not (earlier.any() or later.any()):
        break
      lo = lo - earlier + later
    else:
      raise CodingError('The cells of a non-linear coding step could not be found.')
    lo = np.where(x > x_max, y_max + 1, np.where(x <= x_min, y_min, lo))
    return [int(v) for v in lo]


class Permutation:
  """Moves values between positions: forward(array) data -> latent layout."""

  def __init__(self, forward, inverse):
    self.forward, self.inverse_fn = forward, inverse

  def inverse(self):
    return Permutation(self.inverse_fn, self.forward)


def _counts(step_map, x, k_in, k_out):
  lower = step_map.lower_edges(x, k_in, k_out)
  upper = step_map.lower_edges([v + 1 for v in x], k_in, k_out)
  counts = [u - l for l, u in zip(lower, upper)]
  if counts and (min(counts) < 1 or max(counts) > MAX_UNIFORM):
    worst = min(counts) if min(counts) < 1 else max(counts)
    raise CodingError(
        f'A coding step maps a grid cell onto {worst} latent grid points (1 to '
        f'2^40 can be coded); the layer\'s scale is outside what the precisions '
        f'cover. Change --layer_precision.')
  return lower, counts


def encode_step(stream, step_map, x, k_in, k_out):
  """Data-side integers x (flat list) -> latent-side integers; decodes the
  cell indices from `stream` (bits back)."""
  lower, counts = _counts(step_map, x, k_in, k_out)
  index = stream.decode_uniform(counts)
  return [l + i for l, i in zip(lower, index)]


def decode_step(stream, step_map, y, k_in, k_out):
  """Latent-side integers y -> data-side integers; encodes the cell indices
  back onto `stream`. Inverse of `encode_step`."""
  x = step_map.data_cells(y, k_in, k_out)
  lower, counts = _counts(step_map, x, k_in, k_out)
  index = [v - l for v, l in zip(y, lower)]
  if any(not 0 <= i < n for i, n in zip(index, counts)):
    raise CodingError('A decoded value lies outside its cell: the file does not '
                      'match this model, or the computation differs from the '
                      "encoder's (see the README on portability).")
  stream.encode_uniform(index, counts)
  return x


class Stream:
  """The ANS stack shared by every step (see the module docstring).

  Args:
    encoding: True on the encoder's side, False on the decoder's.
    words: the compressed words to start from (decoder), as uint32.
    seed: seed of the generator behind the chain's start (both sides).
  """

  def __init__(self, encoding, words=None, seed=0):
    self.encoding = encoding
    self._ans = (constriction.stream.stack.AnsCoder(words) if words is not None
                 else constriction.stream.stack.AnsCoder())
    self._uniform = constriction.stream.model.Uniform()
    self._categorical = constriction.stream.model.Categorical(perfect=False)
    self._rng = np.random.default_rng(seed)
    self.chain_start = False
    self.initial_bits = 0.
    self.low_water = 0  # the fewest valid bits seen since it was last set

  # --- uniform indices of any count -------------------------------------------------

  def decode_uniform(self, counts):
    """Indices i_p < counts[p] from the stream (on the chain's start: drawn
    from the generator, their information added to initial_bits)."""
    if self.encoding and self.chain_start:
      index = []
      for count in counts:
        index.append(int(self._rng.integers(count)) if count > 1 else 0)
        self.initial_bits += math.log2(count)
      return index
    index = self._decode_uniform(counts)
    self._check_not_exhausted()
    return index

  def _decode_uniform(self, counts):
    index = [0] * len(counts)
    direct, large = _plan(counts)
    if direct:
      values = self._ans.decode(self._uniform, np.array([counts[p] for p in direct], np.int32))
      for p, v in zip(direct, values):
        index[p] = int(v)
    if large:
      parts = [_Large(counts[p]) for p in large]
      highs = [int(h) for h in self._ans.decode(
          self._categorical, np.stack([part.probabilities for part in parts]))]
      blocks = [part.block(high) for part, high in zip(parts, highs)]
      lows = self._decode_uniform([size for _, size in blocks])
      for p, (offset, _), low in zip(large, blocks, lows):
        index[p] = offset + low
    return index

  def encode_uniform(self, index, counts):
    """Inverse of decode_uniform (skipped on the chain's start when decoding)."""
    if not self.encoding and self.chain_start:
      return
    direct, large = _plan(counts)
    if large:
      parts = [_Large(counts[p]) for p in large]
      highs = [part.high(index[p]) for p, part in zip(large, parts)]
      blocks = [part.block(high) for part, high in zip(parts, highs)]
      # (The chain's-start rule was applied above; the parts follow it.)
      self.encode_uniform([index[p] - offset for p, (offset, _) in zip(large, blocks)],
                          [size for _, size in blocks])
      self._ans.encode_reverse(np.array(highs, np.int32), self._categorical,
                               np.stack([part.probabilities for part in parts]))
    if direct:
      self._ans.encode_reverse(np.array([index[p] for p in direct], np.int32),
                               self._uniform, np.array([counts[p] for p in direct], np.int32))

  # --- symbols of a categorical model ------------------------------------------------

  def decode_categorical(self, probabilities, amount):
    """`amount` symbols of one categorical model (float64 probabilities)."""
    if self.encoding and self.chain_start:
      symbols = self._rng.choice(len(probabilities), size=amount,
                                 p=probabilities / probabilities.sum())
      self.initial_bits += float(-np.log2(probabilities[symbols] / probabilities.sum()).sum())
      return symbols.astype(np.int64)
    model = constriction.stream.model.Categorical(probabilities, perfect=False)
    symbols = self._ans.decode(model, amount).astype(np.int64)
    self._check_not_exhausted()
    return symbols

  def encode_categorical(self, symbols, probabilities):
    if not self.encoding and self.chain_start:
      return
    model = constriction.stream.model.Categorical(probabilities, perfect=False)
    self._ans.encode_reverse(np.asarray(symbols, np.int32), model)

  # --- the stream ------------------------------------------------------------------------

  def _check_not_exhausted(self):
    if not self.encoding:
      return
    valid = self._ans.num_valid_bits()
    self.low_water = min(self.low_water, valid)
    if valid < _RESERVE_BITS:
      raise StackExhausted()

  def valid_bits(self):
    return self._ans.num_valid_bits()

  def snapshot(self):
    """The state to go back to (see `restore`)."""
    return self._ans.clone(), self.initial_bits

  def restore(self, snapshot):
    ans, self.initial_bits = snapshot
    self._ans = ans.clone()

  def words(self):
    """The compressed stream, uint32."""
    return self._ans.get_compressed()

  def is_empty(self):
    return self._ans.is_empty()


def _plan(counts):
  """(direct, large): positions coded by one uniform symbol (sizes up to
  2^12, where constriction's 24-bit probabilities are uniform to 2^-12, or
  exact powers of two up to 2^24), and the rest (see _Large)."""
  direct, large = [], []
  for p, n in enumerate(counts):
    if n < 2:
      continue
    if n <= _DIRECT or (n & (n - 1) == 0 and n <= 2 ** 24):
      direct.append(p)
    else:
      large.append(p)
  return direct, large


class _Large:
  """A uniform index below a large count n, coded as a block h < 256 and an
  index below the block's size: the blocks are n // 256 or n // 256 + 1
  long, h is a categorical with exactly their shares, and the index within
  the block is coded the same way again until it is small (every level is
  uniform to 24-bit precision, where one symbol of a count near 2^24 would
  not be)."""

  def __init__(self, count):
    self.size, self.longer = divmod(count, _HIGH_SYMBOLS)  # `longer` blocks of size + 1
    probabilities = np.full(_HIGH_SYMBOLS, float(self.size))
    probabilities[:self.longer] += 1.
    self.probabilities = probabilities / count

  def block(self, high):
    """(offset, size) of block `high`."""
    return (high * self.size + min(high, self.longer),
            self.size + (1 if high < self.longer else 0))

  def high(self, index):
    boundary = self.longer * (self.size + 1)
    if index < boundary:
      return index // (self.size + 1)
    return self.longer + (index - boundary) // self.size
