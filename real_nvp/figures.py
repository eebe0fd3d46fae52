"""The paper's figures from a trained model (paper §4.2); no training code.

All figures are uint8 grids (see summaries.image_grid) of images decoded by
the flow in inference mode.
"""

import math
import os

import numpy as np
import tensorflow as tf

from real_nvp import summaries

__all__ = ['manifold_latents', 'manifold', 'scale_resampling', 'reconstructions',
           'sample_grid', 'ood_histogram']


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
  """What each scale encodes: S rows for the S scales of the example `image`.

  keep='coarse': row r (r = 1..S) resamples the latents of the r finest scales
  from the prior and keeps the coarser ones; keep='fine' resamples the r
  coarsest scales and keeps the finer ones. The last row resamples all. The
  first column of every row is the reconstruction.
  """
  if keep not in ('coarse', 'fine'):
    raise ValueError(f"`keep` must be 'coarse' or 'fine'. Received: keep={keep!r}")
  latents = model.encode(image[None])
  num_scales = len(latents)
  rows = []
  for resampled in range(1, num_scales + 1):
    fresh = (set(range(resampled)) if keep == 'coarse'
             else set(range(num_scales - resampled, num_scales)))
    for column in range(num_columns):
      mixed = []
      for i, z in enumerate(latents):
        if i in fresh and column > 0:
          noise = tf.random.stateless_normal(
              tf.shape(z), seed=[seed, 1000 * resampled + 10 * column + i],
              dtype=z.dtype)
          z = noise * temperature
        mixed.append(z)
      rows.append(model.decode(mixed)[0])
  return summaries.image_grid(summaries.to_display(tf.stack(rows), model.config.levels),
                              columns=num_columns)


def reconstructions(model, images):
  """Originals (top row) above decode(encode(x)) (bottom row); they must match."""
  recon = model.decode(model.encode(images))
  both = np.concatenate([np.asarray(images), recon.numpy()])
  return summaries.image_grid(summaries.to_display(both, model.config.levels),
                              columns=len(images))


def ood_histogram(in_bits_per_dim, ood_bits_per_dim, in_name, ood_name, path):
  """Histograms of both sets' bits/dim on one plot: a PNG at `path`; returns
  the picture as a uint8 array [H, W, 3] (for TensorBoard)."""
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt

  values = np.concatenate([in_bits_per_dim, ood_bits_per_dim])
  bins = np.linspace(values.min(), values.max(), 50)
  figure, axis = plt.subplots(figsize=(7, 4))
  for name, scores in ((in_name, in_bits_per_dim), (ood_name, ood_bits_per_dim)):
    axis.hist(scores, bins=bins, alpha=0.6, density=True, label=f'{name} ({len(scores)})')
  axis.set_xlabel('bits/dim')
  axis.set_ylabel('density')
  axis.legend()
  figure.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  figure.savefig(path, dpi=100)
  figure.canvas.draw()
  picture = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
  plt.close(figure)
  return picture
