"""Data sets as uint8 image streams, and the tf.data pipelines that feed them.

`load_dataset(name, ...)` returns a `DataSource` for:
  - `digits`: the embedded 8x8, 17-level digits (real_nvp/data/digits.npz);
  - `npz:PATH`: uint8 NHWC arrays `train` and `test`, or `images` of which a
    fixed, seeded 10 % is held out; optional scalar `levels` (default 256);
  - `folder:PATH`: PNG/JPEG files under PATH, resized (shorter side) and
    centre-cropped to `image_size`; a fixed, seeded 10 % is held out;
  - the paper's TFDS sets: cifar10, mnist, imagenet32, imagenet64,
    lsun_bedroom, lsun_tower, lsun_church_outdoor, celeba (prepared offline
    with `tfds build`; nothing is downloaded here).

The training stream is a pure function of (seed, position): epoch e visits
the examples in an order drawn from (seed, e), and each example's random
flip/crop is drawn from (seed, its position in the stream). A run restarted
at step k therefore sees exactly the batches k, k+1, ... of an uninterrupted
run. Pixels stay uint8; dequantization noise is added in the train step.
"""

import dataclasses
import os
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from real_nvp.tfds_sets import TFDS_DATASETS

__all__ = ['DataError', 'DataSource', 'Split', 'load_dataset', 'train_dataset',
           'without_autotune', 'eval_dataset', 'in_memory_source', 'conform',
           'TFDS_DATASETS', 'DIGITS_PATH']

DIGITS_PATH = os.path.join(os.path.dirname(__file__), 'data', 'digits.npz')
_HELD_OUT_FRACTION = 0.1
_SPLIT_SEED = 20170101
_IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
_INFINITE = np.iinfo(np.int64).max


class DataError(ValueError):
  """A data set that cannot be found, read or used; the message says why."""


@dataclasses.dataclass
class Split:
  """One split: in memory (`images`) or streamed (`dataset_fn`).

  `dataset_fn()` returns a tf.data.Dataset of uint8 images in a fixed order;
  `transform(image, seed)` maps a stored image to the model's input, with a
  stateless `seed` for random crops in training or None for evaluation.
  `names`: what identifies each example to a user (file names of folder:
  sources), in the split's order; None where the index is all there is.
  """
  num_examples: int
  images: Optional[np.ndarray] = None
  dataset_fn: Optional[Callable[[], tf.data.Dataset]] = None
  transform: Optional[Callable] = None
  names: Optional[list] = None


@dataclasses.dataclass
class DataSource:
  name: str
  image_shape: tuple
  levels: int
  train: Split
  eval: Split
  eval_split_name: str
  flip: bool = False  # horizontal flips in training (paper §4.1)
  preset: Optional[str] = None  # the paper's architecture for this data set


# --- in-memory sources ---------------------------------------------------------

def _held_out_order(count):
  """Indices of a fixed, seeded 10 % held out, and of the rest (training)."""
  order = np.random.default_rng(_SPLIT_SEED).permutation(count)
  num_eval = max(1, int(round(_HELD_OUT_FRACTION * count)))
  return order[num_eval:], order[:num_eval]


def _held_out_split(images):
  """A fixed, seeded 10 % of the images for evaluation, the rest for training."""
  train, held_out = _held_out_order(len(images))
  return images[train], images[held_out]


def _check_images(images, where):
  if images.dtype != np.uint8 or images.ndim != 4:
    raise DataError(f'{where}: expected uint8 images [N, H, W, C]; got '
                    f'{images.dtype} {images.shape}')
  if len(images) < 2:
    raise DataError(f'{where}: needs at least 2 images; got {len(images)}')
  return images


def in_memory_source(name, train, held_out, levels, eval_split_name,
                     preset=None):
  """A DataSource over uint8 arrays [N, H, W, C] (train and held-out)."""
  if train.shape[1:] != held_out.shape[1:]:
    raise DataError(f'{name}: train and held-out images differ in shape: '
                    f'{train.shape[1:]} vs {held_out.shape[1:]}')
  top = max(int(train.max()), int(held_out.max()))
  if top >= levels:
    raise DataError(f'{name}: pixel value {top} is not below levels={levels}')
  return DataSource(name, tuple(train.shape[1:]), levels,
                    Split(len(train), images=train),
                    Split(len(held_out), images=held_out), eval_split_name,
                    preset=preset)


def _load_npz(path, name, preset=None):
  if not os.path.isfile(path):
    raise DataError(f'{name}: no such file: {path}')
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {key: data[key] for key in data.files}
  except (OSError, ValueError) as error:
    raise DataError(f'{name}: cannot read {path} as .npz: {error}') from None
  levels = _levels(arrays.get('levels', np.array(256)), f'{path}[levels]')
  if 'train' in arrays and 'test' in arrays:
    train = _check_images(arrays['train'], f'{path}[train]')
    held_out = _check_images(arrays['test'], f'{path}[test]')
    split_name = 'test'
  elif 'images' in arrays:
    train, held_out = _held_out_split(_check_images(arrays['images'], path))
    split_name = 'held-out 10%'
  else:
    raise DataError(f'{name}: {path} must hold arrays `train` and `test`, or '
                    f'`images`; it holds {sorted(arrays)}')
  return in_memory_source(name, train, held_out, levels, split_name, preset)


def _levels(value, where):
  """The scalar integer number of pixel levels stored at `where`."""
  value = np.asarray(value)
  if value.shape != () or value.dtype.kind not in 'iu':
    raise DataError(f'{where} must be a scalar integer (the number of pixel '
                    f'levels, 2 to 256); it is {value.dtype.name} of shape '
                    f'{list(value.shape)}: {str(value)[:40]}')
  if not 2 <= int(value) <= 256:
    raise DataError(f'{where} must be between 2 and 256 (uint8 pixels); it is {int(value)}')
  return int(value)


def _load_folder(path, name, image_size, channels):
  from PIL import Image  # Only this loader needs Pillow.
  if not os.path.isdir(path):
    raise DataError(f'{name}: no such folder: {path}')
  files = sorted(
      os.path.join(root, f) for root, _, names in os.walk(path) for f in names
      if f.lower().endswith(_IMAGE_EXTENSIONS))
  if not files:
    raise DataError(f'{name}: no PNG or JPEG files under {path}')
  mode = {1: 'L', 3: 'RGB'}[channels]
  images = []
  for file in files:
    try:
      with Image.open(file) as image:
        image = image.convert(mode)
        scale = image_size / min(image.size)
        width, height = (max(image_size, round(s * scale)) for s in image.size)
        image = image.resize((width, height), Image.BICUBIC)
        left, top = (width - image_size) // 2, (height - image_size) // 2
        image = image.crop((left, top, left + image_size, top + image_size))
        images.append(np.asarray(image, np.uint8).reshape(
            image_size, image_size, channels))
    except OSError as error:
      raise DataError(f'{name}: cannot read image {file}: {error}') from None
  images = _check_images(np.stack(images), path)
  train, held_out = _held_out_order(len(images))
  source = in_memory_source(name, images[train], images[held_out], 256, 'held-out 10%')
  source.train.names = [os.path.relpath(files[i], path) for i in train]
  source.eval.names = [os.path.relpath(files[i], path) for i in held_out]
  return source


# --- TFDS sources (paper §4.1; their table: tfds_sets.py) ---------------------

def _tfds_split(builder, split, tfds_name, data_dir):
  import tensorflow_datasets as tfds
  try:
    builder.as_dataset(split=split)  # Fails at once if not prepared.
  except (AssertionError, FileNotFoundError, ValueError) as error:
    raise DataError(
        f'TFDS data set {tfds_name!r} (split {split!r}) is not prepared in '
        f'{data_dir or tfds.core.constants.DATA_DIR}: {error}\n'
        f'Prepare it on a machine with internet access with '
        f'`tfds build {tfds_name.split("/")[0]}'
        f'{" --config " + tfds_name.split("/")[1] if "/" in tfds_name else ""} '
        f'--data_dir=DIR` (LSUN, ImageNet and CelebA may need manual '
        f'downloads, see the TFDS catalog), then pass --data_dir=DIR. '
        f'Nothing is downloaded during training.') from None

  def dataset_fn():
    ds = builder.as_dataset(split=split, shuffle_files=False)
    return ds.map(lambda example: example['image'],
                  num_parallel_calls=tf.data.AUTOTUNE)

  info = builder.info.splits[split] if builder.info.splits else None
  if info is not None:
    num_examples = info.num_examples
  else:  # Unknown (mock data): count once.
    num_examples = int(dataset_fn().reduce(0, lambda n, _: n + 1))
  return Split(num_examples, dataset_fn=dataset_fn)


def _load_tfds(name, data_dir):
  import tensorflow_datasets as tfds
  tfds_name, train_split, eval_split, shape, flip, transform, preset = (
      TFDS_DATASETS[name])
  builder = tfds.builder(tfds_name, data_dir=data_dir)
  train = _tfds_split(builder, train_split, tfds_name, data_dir)
  held_out = _tfds_split(builder, eval_split, tfds_name, data_dir)
  train.transform = held_out.transform = transform
  return DataSource(name, shape, 256, train, held_out, eval_split, flip,
                    preset=preset)


def load_dataset(name, data_dir=None, image_size=32, image_channels=3):
  """The `DataSource` named by `--dataset` (see the module docstring)."""
  if name == 'digits':
    return _load_npz(DIGITS_PATH, name, preset='digits')
  if name.startswith('npz:'):
    return _load_npz(os.path.expanduser(name[4:]), name)
  if name.startswith('folder:'):
    if image_channels not in (1, 3):
      raise DataError(f'image_channels must be 1 or 3; got {image_channels}')
    return _load_folder(os.path.expanduser(name[7:]), name, image_size,
                        image_channels)
  if name in TFDS_DATASETS:
    return _load_tfds(name, data_dir)
  raise DataError(
      f'Unknown data set {name!r}. Known: digits, npz:PATH, folder:PATH, '
      f'{", ".join(sorted(TFDS_DATASETS))}')


def conform(source, image_shape, levels):
  """`source` as images of `image_shape` with `levels` levels, for a model
  trained on other data (out-of-distribution scoring).

  The shape must match (folder: sources are resized when loaded with the
  model's --image_size / --image_channels); other levels are requantized,
  x' = floor((x + 1/2) L' / L), the bin that holds the centre of x's bin.
  """
  if tuple(source.image_shape) != tuple(image_shape):
    raise DataError(
        f'{source.name} has images of shape {tuple(source.image_shape)}; the model '
        f'takes {tuple(image_shape)}. Use a data set of that shape (a folder: '
        'source is resized to --image_size and --image_channels).')
  if source.levels == levels:
    return source

  def requantize(images):
    scaled = (tf.cast(images, tf.float32) + 0.5) * (levels / source.levels)
    return tf.cast(tf.clip_by_value(tf.floor(scaled), 0., levels - 1.), tf.uint8)

  def split(part):
    if part.images is not None:
      return dataclasses.replace(part, images=requantize(part.images).numpy())
    previous = part.transform or (lambda image, seed: image)
    return dataclasses.replace(
        part, transform=lambda image, seed: requantize(previous(image, seed)))

  return dataclasses.replace(source, levels=levels, train=split(source.train),
                             eval=split(source.eval),
                             name=f'{source.name} (requantized to {levels} levels)')


# --- pipelines ------------------------------------------------------------------

def _epoch_stream(split, seed, shuffle_buffer):
  """epoch index -> dataset of that epoch's images in its seeded order."""
  if split.images is not None:
    images = tf.constant(split.images)

    def epoch(e):
      order = tf.random.experimental.stateless_shuffle(
          tf.range(split.num_examples, dtype=tf.int64), seed=tf.stack([seed, e]))
      return tf.data.Dataset.from_tensor_slices(order).map(
          lambda i: tf.gather(images, i))
    return epoch

  stored = split.dataset_fn()

  def epoch(e):
    # The order must be a function of (seed, e) alone. TF pairs an op's seed
    # with the global one (tf.random.set_seed, which the trainer calls for
    # the initial weights) and, when that is 0, compares the pair with (0, 0)
    # in Python, which a tensor seed cannot answer; so the graph's global
    # seed is left out here.
    graph = tf.compat.v1.get_default_graph()
    global_seed, graph.seed = graph.seed, None
    try:
      return stored.shuffle(shuffle_buffer, seed=seed * 1_000_003 + e,
                            reshuffle_each_iteration=False)
    finally:
      graph.seed = global_seed
  return epoch


def _training_transform(source, seed):
  def transform(position, image):
    key = tf.stack([tf.cast(seed, tf.int64), position])
    if source.train.transform is not None:
      image = source.train.transform(image, tf.random.experimental.stateless_split(
          key, 1)[0])
    if source.flip:
      flip = tf.random.stateless_uniform([], seed=key) < 0.5
      image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
    return tf.ensure_shape(image, source.image_shape)
  return transform


def train_dataset(source, global_batch_size, seed, start_step=0,
                  input_context=None, shuffle_buffer=10_000):
  """Infinite stream of per-replica uint8 batches from step `start_step` on.

  Global batch k holds stream positions [k G, (k + 1) G); with several input
  pipelines each takes every n-th position.
  """
  n = source.train.num_examples
  start = int(start_step) * int(global_batch_size)
  first_epoch = start // n
  seed = tf.constant(seed, tf.int64)
  images = tf.data.Dataset.range(first_epoch, _INFINITE).flat_map(
      _epoch_stream(source.train, seed, shuffle_buffer)).skip(start - first_epoch * n)
  ds = tf.data.Dataset.zip(tf.data.Dataset.range(start, _INFINITE), images)
  batch = global_batch_size
  if input_context is not None:
    ds = ds.shard(input_context.num_input_pipelines,
                  input_context.input_pipeline_id)
    batch = input_context.get_per_replica_batch_size(global_batch_size)
  ds = ds.map(_training_transform(source, seed),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return without_autotune(ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE))


def without_autotune(dataset):
  """`dataset` run without tf.data's autotuning model thread: deleting an
  iterator waited for its period (up to a minute) to end, 30-37 s after
  1,000 variational digits steps; the same data and the same speed without
  it (measured)."""
  options = tf.data.Options()
  options.autotune.enabled = False
  return dataset.with_options(options)


def eval_dataset(source, global_batch_size, num_examples=None,
                 input_context=None, with_indices=False):
  """The held-out split in its stored order (first `num_examples`), uint8.

  `with_indices`: elements are (index in the split [b] int64, images).
  """
  split = source.eval
  ds = (tf.data.Dataset.from_tensor_slices(split.images)
        if split.images is not None else split.dataset_fn())
  if split.transform is not None:
    ds = ds.map(lambda image: split.transform(image, None),
                num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.map(lambda image: tf.ensure_shape(image, source.image_shape))
  if with_indices:
    ds = ds.enumerate()
  if num_examples:
    ds = ds.take(num_examples)
  batch = global_batch_size
  if input_context is not None:
    ds = ds.shard(input_context.num_input_pipelines,
                  input_context.input_pipeline_id)
    batch = input_context.get_per_replica_batch_size(global_batch_size)
  return ds.batch(batch).prefetch(tf.data.AUTOTUNE)
