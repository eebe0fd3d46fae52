"""The one place where a `--strategy` name becomes a tf.distribute strategy."""

import tensorflow as tf
from tensorflow.python.data.ops import multi_device_iterator_ops

from real_nvp import data
from real_nvp.config import STRATEGIES

__all__ = ['STRATEGIES', 'get_strategy', 'is_chief', 'has_several_workers']


def _without_autotune(create):
  """`create` (a function returning a tf.data dataset) whose datasets run
  without tf.data's autotune thread."""
  def create_without_autotune(*args, **kwargs):
    return data.without_autotune(create(*args, **kwargs))

  create_without_autotune.without_autotune = True
  return create_without_autotune


def _device_datasets_without_autotune():
  """tf.distribute's iterators feed each device from a dataset of their own
  (`multi_device_iterator_ops._create_device_dataset`: a generator and a
  prefetch of fixed size) built with default options, so its root iterator
  runs tf.data's autotune thread, which nothing here tunes; deleting the
  iterator then waits out that thread's optimization period (TF 2.21: 30-38
  s after 20 steps of the CIFAR-10 preset, in four runs of five). The source
  pipelines already turn autotune off (data.without_autotune); this does it
  for the per-device datasets too. No element changes, only that thread."""
  create = getattr(multi_device_iterator_ops, '_create_device_dataset', None)
  if create is not None and not getattr(create, 'without_autotune', False):
    multi_device_iterator_ops._create_device_dataset = _without_autotune(create)  # pylint: disable=protected-access


def get_strategy(name):
  """Builds the strategy named by `--strategy`.

  - mirrored: all local GPUs; without GPUs, all logical CPU devices (one CPU
    unless it was split with tf.config.set_logical_device_configuration).
  - one_device: the first GPU, else the CPU.
  - multi_worker: MultiWorkerMirroredStrategy, cluster from TF_CONFIG.
  - tpu: TPUStrategy on the TPU named by TPU_NAME (or the local one).
  """
  if name not in STRATEGIES:
    raise ValueError(f'--strategy must be one of {STRATEGIES}; got {name!r}')
  _device_datasets_without_autotune()
  if name == 'multi_worker':
    # Must come before anything initializes the eager context (listing
    # devices does).
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name in ('mirrored', 'one_device'):
    gpus = tf.config.list_logical_devices('GPU')
    if name == 'one_device':
      return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else '/cpu:0')
    devices = gpus or tf.config.list_logical_devices('CPU')
    return tf.distribute.MirroredStrategy([d.name for d in devices])
  resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
  tf.config.experimental_connect_to_cluster(resolver)
  tf.tpu.experimental.initialize_tpu_system(resolver)
  return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy):
  """True on the worker that writes summaries, samples and exports."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not resolver.cluster_spec().as_dict():
    return True
  return (resolver.task_type in (None, 'chief') or
          (resolver.task_type == 'worker' and resolver.task_id == 0 and
           'chief' not in resolver.cluster_spec().as_dict()))


def has_several_workers(strategy):
  """True when the strategy spans more than one worker (its collectives need
  every worker)."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
  return sum(len(tasks) for name, tasks in cluster.items() if name != 'ps') > 1
