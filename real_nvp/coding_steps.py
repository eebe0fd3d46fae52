"""The coding steps on the bits-back stream (ans_stream.py), over whole arrays
of int64 grid values: a layer's map (coding_maps.py) and the prior. A value
X on grid k stands for X 2^-k. Each step is a bijection between (X, what it
decodes from the stream) and (Y, what it encodes), so decoding is exact
whatever the rounding; only the code length depends on how well the
integers follow the float map.

Affine steps (y = x a + b; a coupling composed with the batch norm after
it, batch_coder.py) keep the grid, as an integer scale transform (iFlow,
Zhang et al. 2021) with R / S ~= a, one of R, S a power of two up to 2^24,
the other a 12-bit integer (a 2^-12 relative resolution of a, for 2^-13 <
a < 2^12), and T = round(b 2^k):

    encode: r ~ Uniform(R) decoded (bits back), V = X R + r,
            Y = floor(V / S) + T, q = V mod S encoded under Uniform(S);
    decode: q decoded, V = (Y - T) S + q, X = floor(V / R), r = V mod R encoded.

The elements go in 8 runs, each decoded and encoded before the next: the
stack dips by an eighth of what r takes over them (11 bits an element or
more; the first images' batches grow with the inverse of that dip, see
compressed_file.Ramp).

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
(0.001 bits for ℓ >= 12, the default latent grid's least ℓ, where
the logit's slope is least). The first
and the last cells are coded up to 2^12 times finer (`_edge_refinement`):
their image may run to the latent side's cut-off, where Y drawn evenly over
the image would not follow an even draw of X.

The prior: z on the latent grid under N(0, I), its bin of width 2^-m (a
categorical) and the k - m bits below it (uniform); the loss against the
density is the Gaussian's curvature over a bin, about 2^-2m / 24 nats, out
to |z| = 64 (tails by levels, `GaussianPrior`).
"""

import functools
import math

import constriction
import numpy as np

from real_nvp.ans_stream import UniformSizes
from real_nvp.coding_maps import CodingError, MonotoneMap

__all__ = ['encode_affine', 'decode_affine', 'encode_monotone', 'decode_monotone',
           'integer_scale', 'GaussianPrior', 'SigmoidStep']

_CENTRE = 4  # the prior's first categorical: the bins of [-4, 4) and two tails
_TAIL_END = 64.  # tail levels up to here, then uniform bits
_SIGMOID_RANGE = 40.  # the variational dequantizer's v is cut to [-40, 40]
_AFFINE_RUNS = 8  # an affine step codes its elements in this many runs (`_runs`)
_EDGE_BITS = 12  # the first and last cells of a monotone step are coded this much finer
_ESCAPE_SIZE = 2 ** 24  # an escaped bin's distance: two uniform parts of this size
_POWERS_OF_TWO = 2. ** np.arange(25)  # 2^p by lookup: 4x faster than np.ldexp
_MISMATCH = ('the file does not match this model, or the computation differs '
             "from the encoder's (see docs/compression.md on portability)")


def integer_scale(step_map, k, shape):
  """(mask, R, S, T) of an AffineMap on grid k for values of `shape`: the
  transformed elements (bool of `shape`; None: all of them) and their int64
  integer scale transform, flat over them (see the module docstring). A
  map whose parameters broadcast over the batch (batch norm's) is worked
  out for one image."""
  mask = None
  if step_map.conditioning is not None:
    mask = ~np.broadcast_to(step_map.conditioning, shape)
  scale, shift = step_map.transformed_parameters(shape[1:])
  count = shape[0] * scale.shape[1]
  return (mask,) + tuple(np.broadcast_to(part, (shape[0], part.shape[1])).reshape(count)
                         for part in _integer_parts(scale, shift, k))


def _integer_parts(scale, shift, k):
  """(R, S, T) of each scale and shift (arrays of one shape)."""
  # One of R, S a power of two 2^p (exact), the other 12 bits (uniform to
  # 2^-12): scale = m 2^e with m in [0.5, 1); at or above 1 (e >= 1),
  # R = 2^p and S = round(2^p / scale) with p = 11 + e; below, S = 2^p and
  # R = round(scale 2^p) with p = 12 - e; p at most 24. The power of two is
  # the larger of the two, so each is the lesser of 2^p and its rounded
  # quotient (min, not np.where: a mask of no pattern costs 4 ns an element).
  exponent = np.frexp(scale)[1]
  power = _POWERS_OF_TWO[np.minimum(24, 11 + np.maximum(exponent, 1 - exponent))]
  with np.errstate(over='ignore'):  # scales beyond 2^1000: the quotient's inf is cut
    r_size = np.minimum(power, np.maximum(1., np.rint(scale * power)))
    s_size = np.minimum(power, np.maximum(1., np.rint(power / scale)))
  shift = np.rint(shift * 2. ** k)
  if np.abs(shift).max(initial=0.) >= 2. ** 52:
    raise CodingError('A layer\'s shift is beyond the latent grid\'s range; lower '
                      '--latent_precision.')
  return r_size.astype(np.int64), s_size.astype(np.int64), shift.astype(np.int64)


def _check_range(values, factor):
  if values.size and np.abs(values).max() >= 2 ** 62 // factor.max():
    raise CodingError('A latent value is too large for the integer grid; lower '
                      '--latent_precision.')


def _transformed(values, mask):
  return values.ravel() if mask is None else values[mask]


def _with_transformed(values, mask, transformed):
  if mask is None:
    return transformed.reshape(values.shape)
  out = values.copy()
  out[mask] = transformed
  return out


def _runs(count):
  """The slices an affine step codes its `count` elements in, one after the
  other (see the module docstring)."""
  bounds = [count * j // _AFFINE_RUNS for j in range(_AFFINE_RUNS + 1)]
  return [slice(low, high) for low, high in zip(bounds, bounds[1:]) if high > low]


def encode_affine(stream, step_map, x, k):
  """Data-side integers x (array) -> latent-side integers on the same grid."""
  mask, r_size, s_size, shift = integer_scale(step_map, k, x.shape)
  x_b = _transformed(x, mask)
  _check_range(x_b, r_size)
  y_b = np.empty_like(x_b)
  decode, encode = _run_coders(stream, r_size, s_size)
  for run in _runs(x_b.size):
    v = x_b[run] * r_size[run] + decode(run)
    y_b[run], remainder = np.divmod(v, s_size[run])
    encode(remainder, run)
  return _with_transformed(x, mask, y_b + shift)


def decode_affine(stream, step_map, y, k):
  """Inverse of `encode_affine`."""
  mask, r_size, s_size, shift = integer_scale(step_map, k, y.shape)
  y_b = _transformed(y, mask) - shift
  _check_range(y_b, s_size)
  x_b = np.empty_like(y_b)
  decode, encode = _run_coders(stream, s_size, r_size)
  for run in reversed(_runs(y_b.size)):
    v = y_b[run] * s_size[run] + decode(run)
    x_b[run], remainder = np.divmod(v, r_size[run])
    encode(remainder, run)
  return _with_transformed(y, mask, x_b)


def _run_coders(stream, decoded_sizes, encoded_sizes):
  """(decode(run), encode(values, run)): an affine step's uniform indices of
  a run of its elements, sizes planned once for all runs. Where every size
  is one symbol (one of R, S a power of two up to 2^24, the other up to
  2^12: all but scales beyond 2^+-12), straight to the stream's symbols,
  unchecked: the remainders of a division are in range by construction."""
  decoded, encoded = UniformSizes(decoded_sizes), UniformSizes(encoded_sizes)
  if decoded.symbols is None or encoded.symbols is None:
    return (lambda run: stream.decode_uniform(decoded[run]),
            lambda values, run: stream.encode_uniform(values, encoded[run]))
  return (lambda run: stream.decode_symbols(decoded.symbols[run]),
          lambda values, run: stream.encode_symbols(values, encoded.symbols[run]))


def _cells(step_map, x, k_in, k_out):
  """(lo(X), n(X)): each data cell's first latent point and how many it holds."""
  lower = step_map.lower_edges(x, k_in, k_out)
  return lower, step_map.lower_edges(x + 1, k_in, k_out) - lower


def _counts(step_map, x, k_in, k_out):
  """`_cells`, refusing a cell that holds no latent point."""
  lower, counts = _cells(step_map, x, k_in, k_out)
  if counts.size and counts.min() < 1:
    raise CodingError('A non-linear coding step maps a grid cell onto no latent '
                      'grid point; raise --latent_precision.')
  return lower, counts


def _edge_refinement(step_map, x, k_in, k_out):
  """Bits E >= 0 per element by which its data cell is coded finer: up to 12
  in the first and the last cells, where the map may run to a cut-off (the
  logit's at the top pixel value, the sigmoid's at both ends), as long as
  each of the 2^E finer cells keeps at least two latent points (checked at
  both ends of the cell, where its slope is least); 0 elsewhere. Without
  it a latent point drawn evenly over such a cell's long image would not
  follow the data side's even draw (the top pixel value of the digits: 2 %
  of the file at 2^-8 cells)."""
  low, high = step_map.cell_limits(k_in)
  refine = np.zeros(x.shape, np.int64)
  for edge in {low, high}:
    refine[x == edge] = _edge_bits(step_map, edge, k_in, k_out)
  return refine


@functools.lru_cache(maxsize=16)
def _edge_bits(step_map, cell, k_in, k_out):
  """`_edge_refinement` of the data cell `cell`: the same for every element
  in it, so worked out once per map, cell and grids."""
  for bits in range(_EDGE_BITS, 0, -1):
    fine = np.array([cell << bits, (cell << bits) + (1 << bits) - 1])
    if np.all(_cells(step_map, fine, k_in + bits, k_out)[1] >= 2):
      return bits
  return 0


def encode_monotone(stream, step_map, x, k_in, k_out):
  """Data-side integers x on grid k_in -> latent-side integers on grid k_out;
  the cells `_edge_refinement` names are coded finer (their position within
  the cell decoded first)."""
  flat = x.ravel()
  refine = _edge_refinement(step_map, flat, k_in, k_out)
  edge = np.flatnonzero(refine)  # the rest decode nothing here (size 1)
  fine = flat.copy()
  fine[edge] = (flat[edge] << refine[edge]) + stream.decode_uniform(1 << refine[edge])
  lower, counts = _counts(step_map, flat, k_in, k_out)
  for bits, at in _by_refinement(refine, edge):
    lower[at], counts[at] = _counts(step_map, fine[at], k_in + bits, k_out)
  y = lower + stream.decode_uniform(counts)
  return y.reshape(x.shape)


def decode_monotone(stream, step_map, y, k_in, k_out):
  """Inverse of `encode_monotone`."""
  flat = y.ravel()
  x = step_map.data_cells(flat, k_in, k_out)
  refine = _edge_refinement(step_map, x, k_in, k_out)
  edge = np.flatnonzero(refine)
  fine = x.copy()
  lower, counts = _counts(step_map, x, k_in, k_out)
  for bits, at in _by_refinement(refine, edge):
    fine[at] = step_map.data_cells(flat[at], k_in + bits, k_out)
    lower[at], counts[at] = _counts(step_map, fine[at], k_in + bits, k_out)
  index = flat - lower
  if np.any((index < 0) | (index >= counts)) or np.any((fine[edge] >> refine[edge]) != x[edge]):
    raise CodingError(f'A decoded value lies outside its cell: {_MISMATCH}.')
  stream.encode_uniform(index, counts)
  stream.encode_uniform(fine[edge] & ((1 << refine[edge]) - 1), 1 << refine[edge])
  return x.reshape(y.shape)


def _by_refinement(refine, edge):
  """(bits, positions) of the refined elements `edge`, by their bits."""
  bits = refine[edge]
  return [(int(b), edge[bits == b]) for b in np.unique(bits)]


class GaussianPrior:
  """Integers z on grid k under N(0, I): z's bin of width h = 2^-bits, then
  the k - bits bits below it (uniform).

  The bin follows the Gaussian to |z| = 64, tails included: a categorical
  over the bins of [-4, 4) and the two tails; in a tail, levels of bins
  [t, t + w) (w about 8 / t, so that every symbol of a level keeps a
  probability that 24-bit coding represents) and a symbol for "beyond",
  each with its conditional probability given |z| >= t. Beyond 64, 48
  uniform bits of the distance: what no model reaches, still coded."""

  def __init__(self, bits, k):
    if k < bits:
      raise CodingError(f'The latent grid 2^-{k} is coarser than the prior\'s bins '
                        f'2^-{bits}.')
    self.bits, self.k = bits, k
    self._centre = _CENTRE << bits  # bins -centre .. centre - 1 are the centre's
    centre, self._tail_levels = _gaussian_tables(bits)
    self._models = [constriction.stream.model.Categorical(table, perfect=False)
                    for table in [centre] + [level for _, level in self._tail_levels]]
    self._tail_end = (self._tail_levels[-1][0] + len(self._tail_levels[-1][1]) - 1
                      if self._tail_levels else 0)

  def _levels(self, distance):
    """(level index, offset within it) of tail distances d >= 0 in bins."""
    starts = np.array([start for start, _ in self._tail_levels])
    level = np.searchsorted(starts, distance, side='right') - 1
    return level, distance - starts[level]

  def encode(self, stream, z, noise=False):
    """The tails' levels deepest first, the bins, then the bits below them:
    the next batch takes its first bits back from the top of the stack, and
    the lowest bits are the most nearly uniform, so its noise is close to a
    draw of q. `noise`: z is a draw of the noise that the decoder gives back
    (the variational dequantizer's ε): the bits below the bins go first, the
    bins last (see `decode`)."""
    low_bits = self.k - self.bits
    flat = z.ravel()
    low = flat & ((1 << low_bits) - 1)
    if noise:
      stream.encode_uniform(low, np.full(flat.shape, 1 << low_bits))
    bins = flat >> low_bits
    above, below = bins >= self._centre, bins < -self._centre
    tail = above | below
    distance = np.where(above, bins - self._centre, -self._centre - 1 - bins)[tail]
    far = distance >= self._tail_end
    if far.any():
      beyond = distance[far] - self._tail_end
      if beyond.max() >= _ESCAPE_SIZE ** 2:
        raise CodingError('A latent value is beyond any the coder can represent.')
      stream.encode_uniform(np.stack([beyond >> 24, beyond & (_ESCAPE_SIZE - 1)], 1),
                            np.full(2 * beyond.size, _ESCAPE_SIZE))
    level, offset = self._levels(np.minimum(distance, self._tail_end - 1))
    level = np.where(far, len(self._tail_levels), level)
    # the levels an element reaches, deepest first (of some 270 levels, the
    # few a batch's tails reach: no empty ones asked for)
    for j in reversed(range(min(len(self._tail_levels), level.max(initial=-1) + 1))):
      here = level >= j
      beyond_symbol = len(self._tail_levels[j][1]) - 1
      stream.encode_categorical(np.where(level[here] == j, offset[here], beyond_symbol),
                                self._models[j + 1])
    symbols = np.where(above, 2 * self._centre + 1, np.where(below, 2 * self._centre,
                                                             bins + self._centre))
    stream.encode_categorical(symbols, self._models[0])
    if not noise:
      stream.encode_uniform(low, np.full(flat.shape, 1 << low_bits))

  def decode(self, stream, shape, noise=False):
    """Inverse of `encode`: int64 array of `shape`. `noise`: a draw of noise
    (bits back): the bins first, from the top of the stack, where the last
    batch left its latents' uniform low bits; decoded after those, they
    would read that batch's own bins back, coded under this same prior, and
    the draw would follow that batch's latents instead of N(0, I)."""
    count = int(np.prod(shape))
    low_bits = self.k - self.bits
    if not noise:
      low = stream.decode_uniform(np.full(count, 1 << low_bits))
    symbols = stream.decode_categorical(self._models[0], count)
    bins = symbols - self._centre
    tail = symbols >= 2 * self._centre
    distance = np.zeros(int(tail.sum()), np.int64)
    going = np.ones(distance.shape, bool)
    for j, (start, level) in enumerate(self._tail_levels):
      if not going.any():
        break
      values = stream.decode_categorical(self._models[j + 1], int(going.sum()))
      stop = values < len(level) - 1
      index = np.flatnonzero(going)
      distance[index[stop]] = start + values[stop]
      going[index[stop]] = False
    if going.any():
      parts = stream.decode_uniform(np.full(2 * int(going.sum()), _ESCAPE_SIZE))
      distance[going] = self._tail_end + (parts[0::2] << 24) + parts[1::2]
    above = symbols[tail] == 2 * self._centre + 1
    bins[tail] = np.where(above, self._centre + distance, -self._centre - 1 - distance)
    if noise:
      low = stream.decode_uniform(np.full(count, 1 << low_bits))
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


def _log_upper_tail(t):
  """log P(Z >= t) for N(0, 1), accurate far into the tail."""
  t = np.asarray(t, np.float64)
  flat = t.ravel()
  with np.errstate(divide='ignore'):
    direct = np.log(np.array([0.5 * math.erfc(v / math.sqrt(2.)) for v in flat]))
  large = np.maximum(flat, 1.)  # the asymptotic series is used from 30 on only
  asymptotic = (-0.5 * flat ** 2 - np.log(large * math.sqrt(2. * math.pi)) +
                np.log1p(-1. / large ** 2 + 3. / large ** 4))
  return np.where(flat < 30., direct, asymptotic).reshape(t.shape)


def _gaussian_tables(bits):
  """(the centre's probabilities: its bins over [-4, 4), then the lower and
  the upper tail), [(start, probabilities)] of the tail levels: bins from
  distance `start` (in bins past 4), then "beyond", given |z| >= its start."""
  h = 2. ** -bits
  edges = np.arange(-_CENTRE / h, _CENTRE / h + 1) * h
  cdf = np.array([0.5 * math.erfc(-e / math.sqrt(2.)) for e in edges])
  centre = np.concatenate([cdf[1:] - cdf[:-1], [cdf[0], cdf[0]]])
  levels, start = [], 0
  while _CENTRE + start * h < _TAIL_END:
    t = _CENTRE + start * h
    width = max(1, int(8. / (t * h)))
    log_edges = _log_upper_tail(t + h * np.arange(width + 1)) - _log_upper_tail(t)
    masses = np.exp(log_edges[:-1]) - np.exp(log_edges[1:])
    levels.append((start, np.append(masses, np.exp(log_edges[-1]))))
    start += width
  return centre, levels
