"""The bits-back stream: constriction's ANS stack, coded in whole arrays.

Every call takes numpy arrays: uniform indices with per-element sizes (any
size up to 2^48; sizes above 2^12 that are not powers of two, where
constriction's 24-bit probabilities would no longer be uniform to 2^-12,
are split into a high part of at most 2^12 values and an exact low part,
see _Split), and symbols of one shared categorical model. The stack may
start from given bytes (the chain's start, compression.py): what the
encoder decodes first is taken from them, and the decoder, having encoded
it all back, gets them back exactly (`remaining_bytes`).

An encoder that decodes more than the stack holds raises StackExhausted:
its values came from the stack's empty bottom, not from bits, and the
caller codes again with smaller batches (compression.py).
"""

import constriction
import numpy as np

__all__ = ['Stream', 'StackExhausted', 'UniformSizes', 'MAX_UNIFORM']

MAX_UNIFORM = 2 ** 48  # the largest size of a uniform index
_DIRECT = 2 ** 12  # sizes up to this are one uniform symbol (see _plan)
_RESERVE_BITS = 32  # fewer valid bits left after a decode: the stack ran out


class StackExhausted(Exception):
  """The encoder decoded more than the stack held."""


class Stream:
  """The ANS stack shared by every coding step.

  Args:
    encoding: True on the encoder's side (decodes are checked against the
      stack's bottom), False on the decoder's.
    words: uint32 words to start from: a file's payload (decoder).
    initial: bytes to start the stack from (encoder; see the module
      docstring), sealed so that trailing zero bytes come back too.
  """

  def __init__(self, encoding, words=None, initial=None):
    self.encoding = encoding
    coder = constriction.stream.stack.AnsCoder
    if initial is not None:
      self._ans = coder(_bytes_to_words(initial), seal=True)
    elif words is not None:
      self._ans = coder(np.asarray(words, np.uint32))
    else:
      self._ans = coder()
    self._uniform = constriction.stream.model.Uniform()
    self._categorical = constriction.stream.model.Categorical(perfect=False)
    self.low_water = self.valid_bits()  # the fewest valid bits since the start

  # --- uniform indices ----------------------------------------------------------------

  def decode_uniform(self, sizes):
    """int64 indices i < sizes (elementwise) from the stream; `sizes` an
    array or UniformSizes."""
    plan = sizes if isinstance(sizes, UniformSizes) else UniformSizes(sizes)
    if plan.symbols is not None:  # every size one symbol: no masks
      return self.decode_symbols(plan.symbols)
    sizes, direct, large = plan.sizes, plan.direct, plan.large
    index = np.zeros(sizes.shape, np.int64)
    if direct.any():
      index[direct] = self._ans.decode(self._uniform, sizes[direct].astype(np.int32))
      self._check_not_exhausted()
    if large.any():
      split = _Split(sizes[large])
      high = self.decode_uniform(split.high_sizes)
      index[large] = (high << split.shift) + self.decode_uniform(split.low_sizes(high))
    return index

  def decode_symbols(self, symbols):
    """decode_uniform of sizes that are each one symbol (UniformSizes.symbols)."""
    index = self._ans.decode(self._uniform, symbols).astype(np.int64)
    self._check_not_exhausted()
    return index

  def encode_symbols(self, index, symbols):
    """Inverse of decode_symbols, for indices known to be in range."""
    self._ans.encode_reverse(index.astype(np.int32), self._uniform, symbols)

  def encode_uniform(self, index, sizes):
    """Inverse of decode_uniform."""
    plan = sizes if isinstance(sizes, UniformSizes) else UniformSizes(sizes)
    sizes, direct, large = plan.sizes, plan.direct, plan.large
    index = np.asarray(index, np.int64).ravel()
    if np.any((index < 0) | (index >= sizes)):
      raise ValueError('A uniform index is outside its range.')
    if plan.symbols is not None:
      self.encode_symbols(index, plan.symbols)
      return
    if large.any():
      split = _Split(sizes[large])
      high = index[large] >> split.shift
      self.encode_uniform(index[large] & ((1 << split.shift) - 1), split.low_sizes(high))
      self.encode_uniform(high, split.high_sizes)
    if direct.any():
      self._ans.encode_reverse(index[direct].astype(np.int32), self._uniform,
                               sizes[direct].astype(np.int32))

  # --- symbols of one categorical model -------------------------------------------------

  def decode_categorical(self, model, amount):
    """`amount` symbols of `model` (constriction's Categorical), int64."""
    symbols = self._ans.decode(model, amount).astype(np.int64)
    self._check_not_exhausted()
    return symbols

  def encode_categorical(self, symbols, model):
    self._ans.encode_reverse(np.asarray(symbols, np.int32).ravel(), model)

  # --- the stack ------------------------------------------------------------------------

  def _check_not_exhausted(self):
    if not self.encoding:
      return
    valid = self.valid_bits()
    self.low_water = min(self.low_water, valid)
    if valid < _RESERVE_BITS:
      raise StackExhausted()

  def valid_bits(self):
    return int(self._ans.num_valid_bits())

  def words(self):
    """The compressed stream, uint32."""
    return self._ans.get_compressed()

  def remaining_bytes(self, length):
    """Decoder, at the end: the `length` initial bytes the encoder started
    from (ValueError if the stack does not hold exactly them)."""
    try:
      words = self._ans.get_compressed(unseal=True)
    except AssertionError:  # constriction's word for "not a sealed start"
      raise ValueError('the stream does not end in the chain\'s start') from None
    data = np.asarray(words, '<u4').tobytes()
    if len(data) != -(-length // 4) * 4 or any(data[length:]):
      raise ValueError('the stream does not end in the chain\'s start')
    return data[:length]

  def is_empty(self):
    return self._ans.is_empty()


def _bytes_to_words(data):
  padded = bytes(data) + b'\0' * (-len(data) % 4)
  return np.frombuffer(padded, '<u4').astype(np.uint32)


class UniformSizes:
  """Sizes of uniform indices, planned once (`_plan`): an affine step codes
  its elements in runs (coding_steps.py), each a slice of one plan."""

  def __init__(self, sizes):
    self.sizes, self.direct, self.large = _plan(sizes)
    # one int32 array of symbols when every size is one (the common case)
    self.symbols = self.sizes.astype(np.int32) if self.direct is None else None

  def __getitem__(self, part):
    """The plan of sizes[part] (a slice): the same plan, sliced; built
    field by field (copy.copy was two thirds of a slice's time under
    cProfile, and a batch slices 320 plans whatever its size)."""
    sliced = object.__new__(UniformSizes)
    sliced.sizes = self.sizes[part]
    sliced.direct, sliced.large, sliced.symbols = (
        None if value is None else value[part]
        for value in (self.direct, self.large, self.symbols))
    return sliced


def _plan(sizes):
  """(sizes as flat int64, direct, large): boolean masks of the sizes coded
  as one uniform symbol (up to 2^12, uniform to 2^-12 at constriction's
  24-bit precision, or powers of two up to 2^24, exact) and of the rest (see
  _Split); size 1 is neither: it codes nothing. (sizes, None, None) when
  every size is one symbol, the common case."""
  sizes = np.asarray(sizes, np.int64).ravel()
  if not sizes.size:
    return sizes, np.zeros(0, bool), np.zeros(0, bool)
  low, high = sizes.min(), sizes.max()
  if low < 1 or high > MAX_UNIFORM:
    raise ValueError(f'A uniform size is outside [1, 2^48] ({low}, {high}).')
  power_of_two = None if high <= _DIRECT else (sizes & (sizes - 1)) == 0
  if low > 1 and high <= 2 ** 24 and (power_of_two is None or np.all(
      power_of_two | (sizes <= _DIRECT))):
    return sizes, None, None
  if power_of_two is None:
    direct = sizes > 1
  else:
    direct = (sizes > 1) & ((sizes <= _DIRECT) | (power_of_two & (sizes <= 2 ** 24)))
  return sizes, direct, (sizes > 1) & ~direct


class _Split:
  """A uniform index below a large size n as a high part h < ceil(n / 2^m)
  (at most 2^12, coded directly) and a low part below 2^m (exact), or below
  what is left of n in the last block. The low part is uniform given h; h
  is uniform but for the last block's smaller share, a loss (the relative
  entropy to the uniform) of about 2^-11 log2(2^m / rest) bits."""

  def __init__(self, sizes):
    self.sizes = sizes
    self.shift = np.maximum(0, _bit_length(sizes) - 12)
    self.high_sizes = (sizes + (1 << self.shift) - 1) >> self.shift

  def low_sizes(self, high):
    last = high == self.high_sizes - 1
    return np.where(last, self.sizes - (high << self.shift), 1 << self.shift)


def _bit_length(values):
  return np.floor(np.log2(values.astype(np.float64))).astype(np.int64) + 1
