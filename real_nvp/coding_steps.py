"""The coding steps on the bits-back stream (ans_stream.py), over whole arrays
of int64 grid values: a layer's map (coding_maps.py) and the prior. A value
X on grid k stands for X 2^-k. Each step is a bijection between (X, what it
decodes from the stream) and (Y, what it encodes), so decoding is exact
whatever the rounding; only the code length depends on how well the
integers follow the float map.

Affine steps (y = x a + b; couplings, batch norm) keep the grid, as an
integer scale transform (iFlow, Zhang et al. 2021) with R / S ~= a, one of
R, S a power of two up to 2^24, the other a 12-bit integer (a 2^-12
relative resolution of a, for 2^-13 < a < 2^12), and T = round(b 2^k):

    encode: r ~ Uniform(R) decoded (bits back), V = X R + r,
            Y = floor(V / S) + T, q = V mod S encoded under Uniform(S);
    decode: q decoded, V = (Y - T) S + q, X = floor(V / R), r = V mod R encoded.

Net cost log2 S - log2 R = -log2 a to the rounding of R / S, an error of
either sign that the flow's density follows (the integer flow is an exact
bijection with that log-det); both sizes are uniform to 2^-12 in
constriction's 24-bit probabilities (ans_stream.py), a loss below 10^-4
bits per element and step.

Monotone steps (the logit preprocessing, the dequantizer's sigmoid) go from
the data grid k_in to the latent grid k_out: the cell of X holds n(X) latent
points (coding_maps.MonotoneMap), and

    encode: i ~ Uniform(n(X)) decoded, Y = lo(X) + i;
    decode: X = the cell of Y, i = Y - lo(X) encoded.

n(X) is the cell's image length ℓ = g'(ξ) 2^(k_out - k_in) rounded down or
up, so the expected loss against log2 ℓ is at most 1 / (8 ℓ^2 ln 2) bits
(below 10^-4 for ℓ >= 40, which `Compressor` checks).

The prior: z on the latent grid under N(0, I), its bin of width 2^-m (a
categorical) and the k - m bits below it (uniform); the loss against the
density is the Gaussian's curvature over a bin, about 2^-2m / 24 nats. A
bin beyond [-16, 16) escapes (`GaussianPrior`).
"""

import math

import constriction
import numpy as np

from real_nvp.coding_maps import CodingError, MonotoneMap

__all__ = ['encode_affine', 'decode_affine', 'encode_monotone', 'decode_monotone',
           'integer_scale', 'GaussianPrior', 'SigmoidStep', 'PRIOR_RANGE']

PRIOR_RANGE = 16  # |z| and |ε| below this
_SIGMOID_RANGE = 40.  # the variational dequantizer's v is cut to [-40, 40]
_ESCAPE_SIZE = 2 ** 24  # an escaped bin's distance: two uniform parts of this size
_MISMATCH = ('the file does not match this model, or the computation differs '
             "from the encoder's (see docs/compression.md on portability)")


def integer_scale(step_map, k):
  """(mask, R, S, T) of an AffineMap on grid k: the transformed elements and
  their int64 integer scale transform (see the module docstring)."""
  scale = step_map.scale
  mask = np.ones(scale.shape, bool)
  if step_map.conditioning is not None:
    mask &= ~np.broadcast_to(step_map.conditioning, scale.shape)
  scale = scale[mask]
  # One of R, S a power of two (exact), the other 12 bits (uniform to 2^-12).
  exponent = np.floor(np.log2(scale))
  up = scale >= 1.
  power = np.where(up, np.minimum(24., 12. + exponent), np.minimum(24., 11. - exponent))
  with np.errstate(over='ignore'):
    other = np.maximum(1., np.round(np.where(up, 2. ** power / scale, scale * 2. ** power)))
  r = np.where(up, 2. ** power, other)
  s = np.where(up, other, 2. ** power)
  shift = np.round(step_map.shift[mask] * 2. ** k)
  if np.abs(shift).max(initial=0.) >= 2. ** 52:
    raise CodingError('A layer\'s shift is beyond the latent grid\'s range; lower '
                      '--latent_precision.')
  return mask, r.astype(np.int64), s.astype(np.int64), shift.astype(np.int64)


def _check_range(values, factor):
  if values.size and np.abs(values).max() >= 2 ** 62 // factor.max():
    raise CodingError('A latent value is too large for the integer grid; lower '
                      '--latent_precision.')


def encode_affine(stream, step_map, x, k):
  """Data-side integers x (array) -> latent-side integers on the same grid."""
  mask, r_size, s_size, shift = integer_scale(step_map, k)
  x_b = x[mask]
  _check_range(x_b, r_size)
  v = x_b * r_size + stream.decode_uniform(r_size)
  stream.encode_uniform(v % s_size, s_size)
  y = x.copy()
  y[mask] = v // s_size + shift
  return y


def decode_affine(stream, step_map, y, k):
  """Inverse of `encode_affine`."""
  mask, r_size, s_size, shift = integer_scale(step_map, k)
  y_b = y[mask] - shift
  _check_range(y_b, s_size)
  v = y_b * s_size + stream.decode_uniform(s_size)
  stream.encode_uniform(v % r_size, r_size)
  x = y.copy()
  x[mask] = v // r_size
  return x


def _counts(step_map, x, k_in, k_out):
  lower = step_map.lower_edges(x, k_in, k_out)
  counts = step_map.lower_edges(x + 1, k_in, k_out) - lower
  if counts.size and counts.min() < 1:
    raise CodingError('A non-linear coding step maps a grid cell onto no latent '
                      'grid point; raise --latent_precision.')
  return lower, counts


def encode_monotone(stream, step_map, x, k_in, k_out):
  """Data-side integers x on grid k_in -> latent-side integers on grid k_out."""
  lower, counts = _counts(step_map, x.ravel(), k_in, k_out)
  return (lower + stream.decode_uniform(counts)).reshape(x.shape)


def decode_monotone(stream, step_map, y, k_in, k_out):
  """Inverse of `encode_monotone`."""
  x = step_map.data_cells(y.ravel(), k_in, k_out)
  lower, counts = _counts(step_map, x, k_in, k_out)
  index = y.ravel() - lower
  if np.any((index < 0) | (index >= counts)):
    raise CodingError(f'A decoded value lies outside its cell: {_MISMATCH}.')
  stream.encode_uniform(index, counts)
  return x.reshape(y.shape)


class GaussianPrior:
  """Integers z on grid k under N(0, I): bins 2^-bits wide over
  [-PRIOR_RANGE, PRIOR_RANGE), the k - bits bits below them uniform.

  With `escape`, a bin beyond the range is coded as one of two escape
  symbols (below, above; constriction's least probability, 2^-24 each) and
  its distance from the range as 48 uniform bits, so that every latent a
  model can reach is coded. Without it (the variational dequantizer's ε,
  which is only ever decoded first, so always in range), such a z is a
  CodingError."""

  def __init__(self, bits, k, escape=True):
    if k < bits:
      raise CodingError(f'The latent grid 2^-{k} is coarser than the prior\'s bins '
                        f'2^-{bits}.')
    self.bits, self.k, self.escape = bits, k, escape
    probabilities = _gaussian_bins(bits)
    if escape:
      probabilities = np.concatenate([[0.], probabilities, [0.]])
    self._model = constriction.stream.model.Categorical(probabilities, perfect=False)
    self._range = PRIOR_RANGE << bits  # bins -range .. range - 1 are in range
    self._offset = self._range + (1 if escape else 0)

  def encode(self, stream, z):
    """Escapes, the bins, then the bits below them: the next batch takes its
    first bits back from the top of the stack, and the lowest bits are the
    most nearly uniform, so its noise is close to a draw of q."""
    low_bits = self.k - self.bits
    flat = z.ravel()
    bins = flat >> low_bits
    below, above = bins < -self._range, bins >= self._range
    if below.any() or above.any():
      if not self.escape:
        raise CodingError(f'A latent value is outside [-{PRIOR_RANGE}, {PRIOR_RANGE}).')
      distance = np.where(below, -self._range - 1 - bins, bins - self._range)[below | above]
      if distance.max() >= _ESCAPE_SIZE ** 2:
        raise CodingError('A latent value is beyond any the coder can escape to.')
      stream.encode_uniform(np.stack([distance >> 24, distance & (_ESCAPE_SIZE - 1)], 1),
                            np.full(2 * distance.size, _ESCAPE_SIZE))
    symbols = np.clip(bins, -self._range - 1, self._range) + self._offset
    stream.encode_categorical(symbols, self._model)
    stream.encode_uniform(flat & ((1 << low_bits) - 1), np.full(flat.shape, 1 << low_bits))

  def decode(self, stream, shape):
    """Inverse of `encode`: int64 array of `shape`."""
    count = int(np.prod(shape))
    low_bits = self.k - self.bits
    low = stream.decode_uniform(np.full(count, 1 << low_bits))
    bins = stream.decode_categorical(self._model, count) - self._offset
    below, above = bins < -self._range, bins >= self._range
    escaped = below | above
    if escaped.any():
      parts = stream.decode_uniform(np.full(2 * int(escaped.sum()), _ESCAPE_SIZE))
      distance = (parts[0::2] << 24) + parts[1::2]
      bins[escaped] = np.where(below[escaped], -self._range - 1 - distance,
                               self._range + distance)
    return ((bins << low_bits) + low).reshape(shape)


class SigmoidStep:
  """frac in [0, 1) -> v = logit(frac), the dequantizer's sigmoid read
  backwards, as a step of a flow tree (the parts of `FlowLayer` a coding
  walk asks for)."""

  takes_context = False

  def coding_conditioning(self, event_shape):
    del event_shape

  def permutation(self):
    return None

  def encoded_context(self, context):
    return context

  def decoded_context(self, context):
    return context

  def coding_tensors(self, x, context=None):
    del x, context
    return ()

  def coding_map(self, x, context=None, tensors=None):
    del x, context, tensors
    return MonotoneMap(
        lambda f: np.log(f) - np.log1p(-f), lambda v: 1. / (1. + np.exp(-v)),
        0., 1., -_SIGMOID_RANGE, _SIGMOID_RANGE)


def _gaussian_bins(bits):
  """Probabilities of N(0, 1)'s bins [b, b + 1) 2^-bits over [-R, R)."""
  edges = np.arange(-PRIOR_RANGE * 2 ** bits, PRIOR_RANGE * 2 ** bits + 1) / 2. ** bits
  cdf = np.array([0.5 * math.erfc(-e / math.sqrt(2.)) for e in edges])
  tail = np.array([0.5 * math.erfc(e / math.sqrt(2.)) for e in edges])
  # Differences of the upper tail are accurate for positive edges.
  return np.where(edges[:-1] >= 0, tail[:-1] - tail[1:], cdf[1:] - cdf[:-1])
