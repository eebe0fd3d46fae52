"""Run as a subprocess by test_train.py: distributed training checks that need
a fresh TensorFlow (logical devices, TF_CONFIG).

  python distributed_helper.py replicas OUT.json DEQUANTIZATION
                                                   2 replicas vs one device (one
                                                   configuration per process: the
                                                   collectives of two would clash)
  python distributed_helper.py worker OUT.npz DIR  one worker of TF_CONFIG's cluster
                                                   (--memory_saving=invert)
  python distributed_helper.py eval OUT.json DIR   eval.py's restore and evaluation,
                                                   2 replicas vs one device
  python distributed_helper.py memory_saving OUT.npz MODE
                                                   2 replicas under a
                                                   --memory_saving mode
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import real_nvp  # noqa: E402,F401  before TensorFlow: it chooses the CPU kernels
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from real_nvp import checkpoints, data, distribute, preset  # noqa: E402
from real_nvp.evaluation import Evaluator  # noqa: E402
from real_nvp.config import TrainConfig  # noqa: E402
from real_nvp.train_lib import Trainer  # noqa: E402

CONFIG = preset('digits', num_blocks=1, feature_maps=8, dequant_feature_maps=4)


def _weights(trainer):
  return [v.numpy() for v in trainer.model.variables]


def _train(strategy, model_dir, steps, batch_size=16, config=CONFIG, **train):
  source = data.load_dataset('digits')
  train_config = TrainConfig(train_steps=steps, batch_size=batch_size, eval_every=0,
                             eval_examples=64, checkpoint_every=steps, num_samples=4,
                             seed=3, log_every_secs=1000., **train)
  return Trainer(strategy, source, config, train_config, model_dir), source


def _two_cpus():
  cpu = tf.config.list_physical_devices('CPU')[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


def evaluate(out, model_dir):
  _two_cpus()
  source = data.load_dataset('digits')
  results = {}
  for name in ('mirrored', 'one_device'):
    strategy = distribute.get_strategy(name)
    model, _, _ = checkpoints.restore_model(model_dir, strategy=strategy)
    evaluation = Evaluator(model, strategy, batch_size=16, dequant_samples=2,
                           seed=1)(source, 70)
    results[name] = [strategy.num_replicas_in_sync, evaluation.indices.tolist(),
                     evaluation.bits_per_dim.tolist(), evaluation.bits_per_dim_iw.tolist()]
  with open(out, 'w') as f:
    json.dump(results, f)


def replicas(out, dequantization):
  _two_cpus()
  folder = os.path.dirname(out)
  results = {}
  runs = {}
  for name in ('mirrored', 'one_device'):
    strategy = distribute.get_strategy(name)
    trainer, source = _train(strategy, os.path.join(folder, dequantization, name), 3,
                             config=CONFIG.replace(dequantization=dequantization))
    dataset = iter(strategy.distribute_datasets_from_function(
        lambda ctx: data.train_dataset(source, 16, 3, 0, ctx)))
    losses = [float(trainer.steps.train_step(next(dataset))[0]) for _ in range(3)]
    runs[name] = (losses, _weights(trainer), strategy.num_replicas_in_sync)
    if name == 'mirrored':  # Every replica's copy of every variable updated alike.
      state = [v.value for v in trainer.model.variables] + list(trainer.steps.optimizer.variables)
      results['replica_copy_difference'] = max(
          float(np.max(np.abs(copy.numpy() - copies[0].numpy())))
          for copies in map(strategy.experimental_local_results, state) for copy in copies)
  (loss_a, weights_a, n_a), (loss_b, weights_b, n_b) = runs['mirrored'], runs['one_device']
  results['replicas'] = [n_a, n_b]
  results['losses'] = [loss_a, loss_b]
  results['max_weight_difference'] = max(
      float(np.max(np.abs(a - b))) for a, b in zip(weights_a, weights_b))
  results['max_weight_change'] = max(
      float(np.max(np.abs(a))) for a in weights_a)
  try:
    _train(distribute.get_strategy('mirrored'), os.path.join(folder, 'odd'), 1,
           batch_size=15)
    results['odd_batch_error'] = None
  except ValueError as error:
    results['odd_batch_error'] = str(error)
  with open(out, 'w') as f:
    json.dump(results, f)


def memory_saving(out, mode):
  """3 steps of mirrored training under `mode`: losses, weights."""
  _two_cpus()
  strategy = distribute.get_strategy('mirrored')
  trainer, source = _train(strategy, os.path.join(os.path.dirname(out), mode), 3,
                           memory_saving=mode)
  dataset = iter(strategy.distribute_datasets_from_function(
      lambda ctx: data.train_dataset(source, 16, 3, 0, ctx)))
  losses = [float(trainer.steps.train_step(next(dataset))[0]) for _ in range(3)]
  np.savez(out, losses, strategy.num_replicas_in_sync, *_weights(trainer))


def worker(out, model_dir):
  # Under --memory_saving=invert: its backward pass all-reduces the batch
  # norms' moments again, which must stay in step across workers.
  strategy = distribute.get_strategy('multi_worker')
  trainer, _ = _train(strategy, model_dir, 4, memory_saving='invert')
  trainer.train()
  np.savez(out, *_weights(trainer))


if __name__ == '__main__':
  {'replicas': replicas, 'worker': worker, 'eval': evaluate,
   'memory_saving': memory_saving}[sys.argv[1]](*sys.argv[2:])
