"""A progress line for long loops (encode, decode, evaluation)."""

import time

__all__ = ['progress_printer']


def progress_printer(label, stream, every=5.):
  """A `progress` callback that prints images done, img/s and the ETA to
  `stream` at most every `every` seconds (the last batch always)."""
  began, last = time.time(), [0.]

  def report(done, total):
    now = time.time()
    if now - last[0] < every and done < total:
      return
    last[0] = now
    rate = done / max(now - began, 1e-9)
    eta = (total - done) / rate if rate else float('inf')
    print(f'{label}: {done}/{total} images, {rate:.1f} img/s, ETA {eta:.0f} s',
          file=stream, flush=True)

  return report
