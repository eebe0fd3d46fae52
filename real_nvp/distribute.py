"""The one place where a `--strategy` name becomes a tf.distribute strategy."""

import tensorflow as tf

__all__ = ['STRATEGIES', 'get_strategy', 'is_chief', 'has_several_workers']

STRATEGIES = ('mirrored', 'one_device', 'multi_worker', 'tpu')


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
