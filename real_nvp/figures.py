"""The paper's figures from a trained model (paper §4.2); no training code.

All figures are uint8 grids (see summaries.image_grid) of images decoded by
the flow in inference mode.
"""

import math

import numpy as np
import tensorflow as tf

from real_nvp import summaries

__all__ = ['manifold_latents', 'manifold', 'scale_resampling', 'reconstructions',
           'sample_grid']


def sample_grid(model, temperature, num_samples=64, seed=0):
  """Samples at one temperature, as a grid."""
  images = model.sample(num_samples, temperature, seed=seed)
  return summaries.image_grid(summaries.to_display(images, model.config.levels))


def manifold_latents(z, phis, phi_primes):
  """Paper Fig. 6: the 2-D latent manifold through four latents z[0..3].

      z(phi, phi') = cos(phi) (cos(phi') z1 + sin(phi') z2)
                   + sin(phi) (cos(phi') z3 + sin(phi') z4)

  z: [4, H, W, C] -> [len(phis) * len(phi_primes), H, W, C], row-major in phi.
  """
  z1, z2, z3, z4 = tf.unstack(z[:4])
  rows = []
  for phi in phis:
    for phi_prime in phi_primes:
      rows.append(math.cos(phi) * (math.cos(phi_prime) * z1 + math.sin(phi_prime) * z2) +
                  math.sin(phi) * (math.cos(phi_prime) * z3 + math.sin(phi_prime) * z4))
  return tf.stack(rows)


def manifold(model, images, size=8):
  """Fig. 6 through the first four `images` (uint8), a size x size grid."""
  z = model.merge_latents(model.encode(images[:4]))
  angles = np.linspace(0., np.pi / 2, size)
  decoded = model.decode(manifold_latents(z, angles, angles))
  return summaries.image_grid(summaries.to_display(decoded, model.config.levels),
                              columns=size)


def scale_resampling(model, image, num_columns=8, temperature=1.0, seed=0,
                     keep='coarse'):
  """What each scale encodes: one row per scale s of the example `image`.

  keep='coarse': row s keeps the latents of scales >= s (the coarse ones) and
  resamples the finer scales < s from the prior; keep='fine' keeps the scales
  <= s and resamples the coarser ones. The first column is the
  reconstruction.
  """
  if keep not in ('coarse', 'fine'):
    raise ValueError(f"`keep` must be 'coarse' or 'fine'. Received: keep={keep!r}")
  latents = model.encode(image[None])
  num_scales = len(latents)
  rows = []
  for s in range(num_scales):
    kept = [(i >= s) if keep == 'coarse' else (i <= s) for i in range(num_scales)]
    columns = []
    for column in range(num_columns):
      mixed = []
      for i, z in enumerate(latents):
        if kept[i] or column == 0:
          mixed.append(z)
        else:
          noise = tf.random.stateless_normal(
              tf.shape(z), seed=[seed, 1000 * s + 10 * column + i], dtype=z.dtype)
          mixed.append(noise * temperature)
      columns.append(model.decode(mixed)[0])
    rows.extend(columns)
  return summaries.image_grid(summaries.to_display(tf.stack(rows), model.config.levels),
                              columns=num_columns)


def reconstructions(model, images):
  """Originals (top row) above decode(encode(x)) (bottom row); they must match."""
  recon = model.decode(model.encode(images))
  both = np.concatenate([np.asarray(images), recon.numpy()])
  return summaries.image_grid(summaries.to_display(both, model.config.levels),
                              columns=len(images))
