"""Run as a subprocess by the tests (conftest.py's `mirrored_runs`,
test_distributed.py, test_eval_export.py): distributed checks that need a
fresh TensorFlow (logical devices, TF_CONFIG).

  python distributed_helper.py mirrored OUT.npz     3 steps on 2 replicas vs one device
                                                   (both dequantizers), and on 2
                                                   replicas under every
                                                   --memory_saving mode
  python distributed_helper.py worker OUT.npz DIR  one worker of TF_CONFIG's cluster
                                                   (--memory_saving=invert)
  python distributed_helper.py eval OUT.json DIR   eval.py's restore and evaluation,
                                                   2 replicas vs one device
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

# One scale: what several replicas or workers must agree on (the gradients'
# and the batch norms' all-reduces, the moments all-reduced again by the
# inverting backward pass) is in every scale alike; the multi-scale flow's own
# gradients under each mode are tested on one device (test_memory_saving.py).
CONFIG = preset('digits', num_scales=1, num_blocks=1, feature_maps=8,
                dequant_feature_maps=4, dequant_couplings=1)


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


def _three_steps(strategy, model_dir, **train):
  """(losses, weights, trainer) of 3 steps of a fresh model under `strategy`."""
  trainer, source = _train(strategy, model_dir, 3, **train)
  dataset = iter(strategy.distribute_datasets_from_function(
      lambda ctx: data.train_dataset(source, 16, 3, 0, ctx)))
  losses = [float(trainer.steps.train_step(next(dataset))[0]) for _ in range(3)]
  return losses, _weights(trainer), trainer


def mirrored(out):
  """Every two-replica run of the suite in one process (one strategy each
  for the mirrored and the one-device runs, so their collectives never
  clash): `{name}/losses`, `{name}/weights/i` of the runs 'mirrored' and
  'one_device' with each dequantizer (the mirrored uniform one under
  --memory_saving=off) and 'mirrored_recompute', 'mirrored_invert';
  `replicas`, `{dequantization}/replica_copy_difference` (every replica's
  copy of every variable updated alike) and `odd_batch_error`."""
  _two_cpus()
  folder = os.path.dirname(out)
  strategies = {name: distribute.get_strategy(name) for name in ('mirrored', 'one_device')}
  results = {'replicas': [strategies[name].num_replicas_in_sync for name in strategies]}
  runs = {}
  for dequantization in ('uniform', 'variational'):
    for name, strategy in strategies.items():
      losses, weights, trainer = _three_steps(
          strategy, os.path.join(folder, dequantization, name),
          config=CONFIG.replace(dequantization=dequantization))
      runs[f'{dequantization}/{name}'] = (losses, weights)
      if name == 'mirrored':
        state = ([v.value for v in trainer.model.variables] +
                 list(trainer.steps.optimizer.variables))
        results[f'{dequantization}/replica_copy_difference'] = max(
            float(np.max(np.abs(copy.numpy() - copies[0].numpy())))
            for copies in map(strategy.experimental_local_results, state)
            for copy in copies)
  for mode in ('recompute', 'invert'):
    losses, weights, _ = _three_steps(strategies['mirrored'], os.path.join(folder, mode),
                                      memory_saving=mode)
    runs[f'uniform/mirrored_{mode}'] = (losses, weights)
  try:
    _train(strategies['mirrored'], os.path.join(folder, 'odd'), 1, batch_size=15)
    results['odd_batch_error'] = ''
  except ValueError as error:
    results['odd_batch_error'] = str(error)
  arrays = {name: np.asarray(value) for name, value in results.items()}
  for name, (losses, weights) in runs.items():
    arrays[f'{name}/losses'] = np.asarray(losses)
    arrays.update({f'{name}/weights/{i}': w for i, w in enumerate(weights)})
  np.savez(out, **arrays)


def worker(out, model_dir):
  # Under --memory_saving=invert: its backward pass all-reduces the batch
  # norms' moments again, which must stay in step across workers.
  strategy = distribute.get_strategy('multi_worker')
  trainer, _ = _train(strategy, model_dir, 4, memory_saving='invert')
  trainer.train()
  np.savez(out, *_weights(trainer))


if __name__ == '__main__':
  {'mirrored': mirrored, 'worker': worker, 'eval': evaluate}[sys.argv[1]](*sys.argv[2:])
