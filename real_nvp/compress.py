"""Compresses images into a file of about the model's bits/dim, and back.

    python -m real_nvp.compress encode --model_dir=runs/digits --output=digits.rnvz
    python -m real_nvp.compress decode --model_dir=runs/digits --input=digits.rnvz \\
        --output=decoded.npz                      # or a folder of PNGs

`encode` codes a split of a data set (the run's own held-out split by
default; --dataset, --split, --num_images choose others) with a checkpoint
of the run (--checkpoint: best, a path, or the newest), --batch_size images
per network call, and prints, as its last line, one JSON object:
num_images, num_dims, batch_size, file_bits, header_bits, start_images
(coded by the codec that starts the chain), initial_bits (what that start
costs above the model's bound on those images), bits_per_dim_file,
bits_per_dim_net (without the initial bits), model_bits_per_dim (the
model's bound on the same images, one draw of its dequantizer, inference
mode) and the coding speed. `decode` writes the images back in the encoded
order (OUT.npz with uint8 `images`, or PNGs in a folder) and refuses a file
of another model. Both print a progress line every 5 s on long runs. The
method: compression.py.
"""

import json
import os
import sys
import time

from absl import app, flags, logging

# real_nvp before TensorFlow: it chooses TF's CPU kernels (hardware.py).
from real_nvp import cli_flags
from real_nvp.compressed_file import CompressedFileError, Precisions

COMMANDS = ('encode', 'decode')


def _define_flags():
  cli_flags.define_flags()
  flags.DEFINE_string('checkpoint', None, 'Checkpoint path, or "best"; default: '
                      'the newest readable one.')
  flags.DEFINE_enum('split', 'eval', ['eval', 'train'], 'encode: which split.')
  flags.DEFINE_integer('num_images', 0, 'encode: the first N images of the split; '
                       '0: all.', lower_bound=0)
  flags.DEFINE_string('output', None, 'encode: the compressed file; decode: OUT.npz '
                      'or a folder for PNGs.')
  flags.DEFINE_string('input', None, 'decode: the compressed file.')
  flags.DEFINE_integer('dequantization_precision', Precisions.dequantization,
                       'Bits below the pixel unit at which the dequantization '
                       'noise is taken back; 0: chosen from the model (4 for uniform '
                       'noise, 6 for variational).')
  flags.DEFINE_integer('latent_precision', Precisions.latent,
                       'The latent grid is 2^-N; 0: chosen from the levels.')
  flags.DEFINE_integer('prior_bins_precision', Precisions.prior_bins,
                       'The prior\'s bins are 2^-N wide.')
  flags.DEFINE_bool('allow_platform_mismatch', False,
                    'decode: try a file written with another TensorFlow build, '
                    'CPU kernels or device (it fails loudly if the bits differ).')


if __name__ == '__main__':
  _define_flags()
  cli_flags.parse_before_tensorflow(sys.argv)

# pylint: disable=g-import-not-at-top,wrong-import-position
from real_nvp import best_checkpoint, checkpoints, data, hardware, storage  # noqa: E402
import numpy as np  # noqa: E402  pylint: disable=g-bad-import-order
from real_nvp.compression import Compressor  # noqa: E402
from real_nvp.progress import progress_printer  # noqa: E402
from real_nvp.evaluation import Evaluator  # noqa: E402


def _split_images(source, num_images):
  batches = [b.numpy() for b in data.eval_dataset(source, 256, num_images or None)]
  if not batches:
    raise data.DataError(f'{source.name} {source.eval_split_name} holds no images.')
  return np.concatenate(batches)


def _precisions(flags_):
  return Precisions(flags_.dequantization_precision, flags_.latent_precision,
                    flags_.prior_bins_precision)


def _encode(flags_, model_dir, model, step, path):
  storage.check_writable(flags_.output)
  source = cli_flags.run_data_source(model_dir, flags_.split)
  if source.levels != model.config.levels:
    raise ValueError(f'{source.name} has {source.levels} levels, this model '
                     f'{model.config.levels}: its bits would not be these images\' bits. '
                     'Code a data set of the model\'s levels.')
  images = _split_images(source, flags_.num_images)
  if flags_.num_images > len(images):
    print(f'Note: --num_images={flags_.num_images}, but {source.name} '
          f'{source.eval_split_name} holds {len(images)}; coding all {len(images)}.',
          file=sys.stderr)
  compressor = Compressor(model, _precisions(flags_), batch_size=flags_.batch_size)
  start = time.time()
  blob, info = compressor.encode(images, progress_printer('encode', sys.stderr))
  seconds = time.time() - start
  storage.write_bytes_atomically(flags_.output, blob)
  evaluation = Evaluator(model, batch_size=flags_.batch_size, seed=flags_.seed)(
      source, len(images))
  dims = info['num_images'] * info['num_dims']
  # The start's images at the model's bound: the evaluation's own draws of them.
  info['initial_bits'] = info['start_bits'] - info['num_dims'] * float(
      np.sum(evaluation.bits_per_dim[:info['start_images']]))
  report = {
      **info, 'bits_per_dim_file': info['file_bits'] / dims,
      'bits_per_dim_net': (info['file_bits'] - info['initial_bits']) / dims,
      'model_bits_per_dim': evaluation.summary()['bits_per_dim'],
      'encode_images_per_sec': info['num_images'] / seconds,
      'dataset': source.name, 'split': source.eval_split_name, 'checkpoint': path,
      'checkpoint_step': step, 'dequantization': model.config.dequantization,
      'output': os.path.abspath(flags_.output)}
  print(json.dumps(report))


def _decode(flags_, model):
  if not flags_.input or not os.path.isfile(flags_.input):
    raise FileNotFoundError(f'--input={flags_.input}: no such file.')
  as_npz = flags_.output.endswith('.npz')
  if not as_npz:
    _check_png_folder(flags_.output)
  storage.check_writable(flags_.output, is_directory=not as_npz)
  with open(flags_.input, 'rb') as f:
    blob = f.read()
  start = time.time()
  images = Compressor(model).decode(blob, flags_.allow_platform_mismatch,
                                    progress_printer('decode', sys.stderr))
  seconds = time.time() - start
  if as_npz:
    storage.write_bytes_atomically(flags_.output, _npz_bytes(images))
  else:
    _write_pngs(images, flags_.output)
  print(json.dumps({'num_images': len(images), 'output': os.path.abspath(flags_.output),
                    'decode_images_per_sec': len(images) / seconds}))


def _check_png_folder(folder):
  """A --output that does not end in .npz is a folder of PNGs: it must be new
  or empty, so that no earlier image is taken for a decoded one."""
  if os.path.isfile(folder):
    raise FileExistsError(f'--output={folder} does not end in .npz, so it is taken as a '
                          'folder for PNGs, and a file of that name exists. Use '
                          '--output=NAME.npz, or a new folder.')
  if os.path.isdir(folder) and os.listdir(folder):
    raise FileExistsError(f'--output={folder} already holds files; decode into a new or '
                          'empty folder (nothing was written).')


def _npz_bytes(images):
  import io  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  np.savez(buffer, images=images)
  return buffer.getvalue()


def _write_pngs(images, folder):
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  os.makedirs(folder, exist_ok=True)
  width = max(5, len(str(len(images) - 1)))
  for index, image in enumerate(images):
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, 'PNG')
    storage.write_bytes_atomically(os.path.join(folder, f'{index:0{width}d}.png'),
                                   buffer.getvalue())


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError('Usage: python -m real_nvp.compress encode|decode --model_dir=DIR '
                         '--output=... [--input=...]')
  flags_ = flags.FLAGS
  if not flags_.output:
    raise app.UsageError('--output is required.')
  model_dir = cli_flags.model_dir()
  hardware.log_platform()
  try:
    _precisions(flags_)  # before the model loads
    model, step, path = checkpoints.restore_model(
        model_dir, best_checkpoint.resolve_checkpoint(model_dir, flags_.checkpoint))
    logging.info('%s with %s (step %d)', argv[1], path, step)
    if argv[1] == 'encode':
      _encode(flags_, model_dir, model, step, path)
    else:
      _decode(flags_, model)
  except (CompressedFileError, data.DataError, FileNotFoundError, FileExistsError,
          ValueError) as error:
    logging.error('%s', error)
    sys.exit(f'Error: {error}')
  except storage.STORAGE_ERRORS as error:
    sys.exit(f'Error: writing {flags_.output} failed ({checkpoints.error_summary(error)}).')


if __name__ == '__main__':
  app.run(main)
