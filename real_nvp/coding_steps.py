"""The coding steps on the bits-back stream (ans_stream.py): a layer's map
(coding_maps.py) from one grid to a finer one, and the prior.

A step from grid k_in to grid k_out = k_in + c codes each element's cell
index i < n (see coding_maps.py):

    encode (data -> latent): i is *decoded* from the stream as Uniform(n)
                             (bits back), Y = lo(X) + i;
    decode (latent -> data): X = floor(g^-1(Y 2^-k_out) 2^k_in), and
                             i = Y - lo(X) is *encoded* back.

The decoder finds X by rounding, and the encoder chose Y inside X's cell,
so X comes back exactly whatever the rounding of g; only the code length
depends on how well n matches g'(x) 2^(k_out - k_in): coding Y at grid
k_out costs log2 of its cell's probability, and the log2 n bits that come
back make the net cost that of X at grid k_in, up to O(1/n).

`GaussianPrior` codes the latent under N(0, I): a bin of width 2^-m over
[-16, 16) with the Gaussian's probability, the bits below it uniform.
`SigmoidStep` is the variational dequantizer's sigmoid read backwards.
"""

import math

import numpy as np

from real_nvp.coding_maps import MAX_UNIFORM, CodingError, MonotoneMap

__all__ = ['encode_step', 'decode_step', 'GaussianPrior', 'SigmoidStep', 'PRIOR_RANGE']

PRIOR_RANGE = 16  # |z| and |ε| below this
_CHUNK_BITS = 16  # the prior's bits below its bin, pushed in chunks of this size
_SIGMOID_RANGE = 40.  # the variational dequantizer's v is cut to [-40, 40]


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
                      "encoder's (see docs/compression.md on portability).")
  stream.encode_uniform(index, counts)
  return x


class GaussianPrior:
  """Integers z at grids k_z under N(0, I), `bits` bits of bins."""

  def __init__(self, bits):
    self.bits = bits
    self._probabilities = _gaussian_bins(bits)

  def encode(self, stream, z, k_z):
    """The bins (categorical), then the bits below them (uniform chunks), the
    lowest last. The next image takes its first bits back from the top of the
    stack: the lowest bits of z are the most nearly uniform (the bins follow
    the data's z, which is only roughly Gaussian), so its noise is close to a
    draw of q (the default digits run: 1.7 % shorter files than with the
    bins on top)."""
    bits = self.bits
    flat, grids = list(z.ravel()), [int(k) for k in k_z.ravel()]
    bins = [v >> (k - bits) for v, k in zip(flat, grids)]
    symbols = [b + PRIOR_RANGE * 2 ** bits for b in bins]
    if min(symbols) < 0 or max(symbols) >= len(self._probabilities):
      raise CodingError(f'A latent value is outside [-{PRIOR_RANGE}, {PRIOR_RANGE}).')
    below = [v - (b << (k - bits)) for v, b, k in zip(flat, bins, grids)]
    stream.encode_categorical(symbols, self._probabilities)
    for index, counts in reversed(list(_chunks(grids, bits))):
      stream.encode_uniform([(below[p] >> (_CHUNK_BITS * index)) & (counts[i] - 1)
                             for i, p in enumerate(counts.positions)], counts)

  def decode(self, stream, k_z):
    """Inverse of `encode`: object array of the integers, k_z's shape."""
    bits = self.bits
    grids = [int(k) for k in k_z.ravel()]
    below = [0] * len(grids)
    for index, counts in _chunks(grids, bits):
      for position, value in zip(counts.positions, stream.decode_uniform(counts)):
        below[position] += value << (_CHUNK_BITS * index)
    symbols = stream.decode_categorical(self._probabilities, len(grids))
    values = [((int(s) - PRIOR_RANGE * 2 ** bits) << (k - bits)) + b
              for s, k, b in zip(symbols, grids, below)]
    out = np.empty(len(values), object)
    out[:] = values
    return out.reshape(k_z.shape)


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

  def coding_map(self, x, context=None):
    del x, context
    return MonotoneMap(
        lambda f: np.log(f) - np.log1p(-f), lambda v: 1. / (1. + np.exp(-v)),
        0., 1., -_SIGMOID_RANGE, _SIGMOID_RANGE)


class _Counts(list):
  """Cell counts of one chunk of the prior's low bits, with their positions."""

  def __init__(self, counts, positions):
    super().__init__(counts)
    self.positions = positions


def _chunks(grids, bits):
  """(chunk index, _Counts) of the bits below the prior's bins, low chunks first."""
  widths = [k - bits for k in grids]
  for index in range(-(-max(widths) // _CHUNK_BITS)):
    positions = [p for p, w in enumerate(widths) if w > _CHUNK_BITS * index]
    counts = [2 ** min(_CHUNK_BITS, widths[p] - _CHUNK_BITS * index) for p in positions]
    yield index, _Counts(counts, positions)


def _gaussian_bins(bits):
  """Probabilities of N(0, 1)'s bins [b, b + 1) 2^-bits over [-R, R)."""
  edges = np.arange(-PRIOR_RANGE * 2 ** bits, PRIOR_RANGE * 2 ** bits + 1) / 2. ** bits
  cdf = np.array([0.5 * math.erfc(-e / math.sqrt(2.)) for e in edges])
  tail = np.array([0.5 * math.erfc(e / math.sqrt(2.)) for e in edges])
  # Differences of the upper tail are accurate for positive edges.
  return np.where(edges[:-1] >= 0, tail[:-1] - tail[1:], cdf[1:] - cdf[:-1])
