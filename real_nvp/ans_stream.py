"""The bits-back stream: constriction's ANS stack with uniform indices of any
count up to 2^40 (counts above 2^12, where 24-bit probabilities would no
longer be uniform, are split into one of 256 blocks, a categorical, and
their indices within blocks), a categorical model, and the starts of the
chain: while `chain_start` is set, the encoder draws what it would decode
from a seeded generator (the file holds no bits for it to take back; their
information is `initial_bits`) and the decoder skips the matching encodes.
An encoder that would decode more than the stack holds raises
StackExhausted (see `Compressor.encode`).
"""

import math

import constriction
import numpy as np

__all__ = ['Stream', 'StackExhausted']

_DIRECT = 2 ** 12  # larger counts are split (see _Large)
_HIGH_SYMBOLS = 256


class StackExhausted(Exception):
  """The encoder decoded more than the stack held: the values came from its
  empty bottom (zeros), not from bits. The caller restarts the image as a
  start of the chain."""


_RESERVE_BITS = 32  # fewer valid bits left after a decode: the stack ran out


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
