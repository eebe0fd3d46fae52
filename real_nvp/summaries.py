"""Image grids for PNG files and TensorBoard; chief-only writers."""

import io
import os

import numpy as np
import tensorflow as tf

__all__ = ['image_grid', 'save_png', 'to_display', 'SummaryWriters']


def to_display(images, levels):
  """uint8 images with `levels` levels -> uint8 [0, 255] for viewing."""
  images = np.asarray(images, np.float32)
  return np.round(images * (255. / max(levels - 1, 1))).astype(np.uint8)


def image_grid(images, columns=None, pad=1):
  """[N, H, W, C] uint8 -> one [rows*(H+pad)+pad, cols*(W+pad)+pad, C] image."""
  images = np.asarray(images)
  count, height, width, channels = images.shape
  columns = columns or int(np.ceil(np.sqrt(count)))
  rows = int(np.ceil(count / columns))
  grid = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad,
                  channels), 255, np.uint8)
  for i, image in enumerate(images):
    top, left = pad + (i // columns) * (height + pad), pad + (i % columns) * (width + pad)
    grid[top:top + height, left:left + width] = image
  return grid


def save_png(path, image, upscale=1):
  """Writes a uint8 [H, W, C] image as PNG (C = 1 or 3), optionally upscaled."""
  from PIL import Image
  image = np.repeat(np.repeat(image, upscale, axis=0), upscale, axis=1)
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  mode = 'L' if image.shape[-1] == 1 else 'RGB'
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if mode == 'L' else image, mode).save(buffer, 'PNG')
  with open(path, 'wb') as f:
    f.write(buffer.getvalue())


class SummaryWriters:
  """`{model_dir}/train` and `{model_dir}/eval` writers; no-ops off the chief."""

  def __init__(self, model_dir, enabled):
    self._model_dir, self._enabled = model_dir, enabled
    self._writers = {}

  def _writer(self, which):
    """Created at the first summary, so that a run refused before it trains
    leaves no event file behind."""
    if self._enabled and which not in self._writers:
      self._writers[which] = tf.summary.create_file_writer(
          os.path.join(self._model_dir, which))
    return self._writers.get(which)

  def scalars(self, which, step, values):
    writer = self._writer(which)
    if writer is None:
      return
    with writer.as_default(step=step):
      for name, value in values.items():
        tf.summary.scalar(name, value)
    writer.flush()

  def images(self, which, step, name, images):
    writer = self._writer(which)
    if writer is None:
      return
    with writer.as_default(step=step):
      tf.summary.image(name, np.asarray(images)[None], max_outputs=1)
    writer.flush()
