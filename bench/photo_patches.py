"""32x32 patches of the photographs scikit-image ships, as npz:PATH data sets
(uint8 `train` and `test`), held out by photograph, for the compression
benchmark's gray and colour models.

    pip install scikit-image==0.26.0
    python bench/photo_patches.py --out_dir=runs/data

Colour: trains on astronaut, coffee, hubble_deep_field, immunohistochemistry,
retina and colorwheel; tests on chelsea, rocket and the two views of
stereo_motorcycle (1,076 patches). Gray: trains on camera, coins, moon, page,
text, brick, grass, gravel and the gray of the colour training photographs;
tests on clock and the gray of the colour test photographs (1,184 patches).
Training patches every 16 pixels (they overlap by half); held-out patches
side by side (no overlap, so that a codec of their mosaic finds no repeated
pixels that the model, coding each patch alone, cannot see).
"""

import os
import sys

import numpy as np
from absl import app, flags

# scikit-image's readers try `import compression` (a standard module from
# Python 3.14); bench/compression.py must not answer it.
sys.path = [p for p in sys.path if os.path.abspath(p or '.') != os.path.dirname(
    os.path.abspath(__file__))]

flags.DEFINE_string('out_dir', 'runs/data', 'Where the two npz files go.')
flags.DEFINE_integer('size', 32, 'Side of a patch.')
flags.DEFINE_integer('stride', 16, 'Pixels between training patches.')
FLAGS = flags.FLAGS

COLOUR_TRAIN = ('astronaut', 'coffee', 'hubble_deep_field', 'immunohistochemistry',
                'retina', 'colorwheel')
COLOUR_TEST = ('chelsea', 'rocket', 'stereo_motorcycle')
GRAY_TRAIN = ('camera', 'coins', 'moon', 'page', 'text', 'brick', 'grass', 'gravel')
GRAY_TEST = ('clock',)


def _photos(name, gray):
  """The photographs of one of scikit-image's samples (stereo_motorcycle has two
  views and a disparity map; the views are taken)."""
  from skimage import color, data  # pylint: disable=g-import-not-at-top
  images = getattr(data, name)()
  images = images[:2] if isinstance(images, tuple) else (images,)
  for image in images:
    if image.ndim == 3 and gray:
      image = (color.rgb2gray(image[..., :3]) * 255. + 0.5).astype(np.uint8)
    yield image[..., None] if image.ndim == 2 else image[..., :3]


def _patches(image, stride):
  size = FLAGS.size
  return [image[r:r + size, c:c + size]
          for r in range(0, image.shape[0] - size + 1, stride)
          for c in range(0, image.shape[1] - size + 1, stride)]


def _split(names, gray, stride):
  return np.stack([patch for name in names for photo in _photos(name, gray)
                   for patch in _patches(photo, stride)])


def main(argv):
  del argv
  os.makedirs(FLAGS.out_dir, exist_ok=True)
  sets = {'photos_rgb32': (COLOUR_TRAIN, COLOUR_TEST, False),
          'photos_gray32': (GRAY_TRAIN + COLOUR_TRAIN, GRAY_TEST + COLOUR_TEST, True)}
  for name, (train, test, gray) in sets.items():
    path = os.path.join(FLAGS.out_dir, f'{name}.npz')
    arrays = {'train': _split(train, gray, FLAGS.stride),
              'test': _split(test, gray, FLAGS.size)}
    np.savez(path, **arrays)
    print(path, {k: v.shape for k, v in arrays.items()})


if __name__ == '__main__':
  app.run(main)
