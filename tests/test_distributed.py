"""Training on several replicas and workers: two replicas against one device
(both dequantizers, every memory-saving mode) and two workers against each
other. The two-replica runs are made once, in one process (conftest.py's
`mirrored_runs`)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def _largest_difference(a, b):
  return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


@pytest.mark.parametrize('dequantization', ['uniform', 'variational'])
def test_two_replicas_match_one_device(mirrored_runs, dequantization):
  assert list(mirrored_runs['replicas']) == [2, 1]
  mirrored, one_device = f'{dequantization}/mirrored', f'{dequantization}/one_device'
  np.testing.assert_allclose(mirrored_runs.losses(mirrored),
                             mirrored_runs.losses(one_device), rtol=1e-5)
  # Adam's first steps move each weight by about the learning rate (1e-3);
  # the replicas must agree to a small fraction of that.
  assert _largest_difference(mirrored_runs.weights(mirrored),
                             mirrored_runs.weights(one_device)) < 3e-4
  assert mirrored_runs[f'{dequantization}/replica_copy_difference'] == 0.
  assert 'not divisible by the 2 replicas' in str(mirrored_runs['odd_batch_error'])


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_multi_worker_training_agrees(tmp_path):
  ports = [_free_port(), _free_port()]
  cluster = {'worker': [f'127.0.0.1:{p}' for p in ports]}
  processes = []
  for index in range(2):
    env = dict(subprocess_env(), TF_CONFIG=json.dumps(
        {'cluster': cluster, 'task': {'type': 'worker', 'index': index}}))
    processes.append(subprocess.Popen(
        [sys.executable, 'tests/distributed_helper.py', 'worker',
         str(tmp_path / f'w{index}.npz'), str(tmp_path / 'run')],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  for p in processes:
    output, _ = p.communicate(timeout=600)
    assert p.returncode == 0, output[-3000:]
  a, b = np.load(tmp_path / 'w0.npz'), np.load(tmp_path / 'w1.npz')
  for key in a.files:
    np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7)
  assert tf.train.latest_checkpoint(str(tmp_path / 'run')).endswith('ckpt-4')


def test_two_replicas_train_alike_under_every_mode(mirrored_runs):
  assert list(mirrored_runs['replicas'])[0] == 2
  off = 'uniform/mirrored'
  recompute, invert = f'{off}_recompute', f'{off}_invert'
  np.testing.assert_array_equal(mirrored_runs.losses(recompute), mirrored_runs.losses(off))
  assert _largest_difference(mirrored_runs.weights(recompute),
                             mirrored_runs.weights(off)) == 0.
  np.testing.assert_allclose(mirrored_runs.losses(invert), mirrored_runs.losses(off),
                             rtol=1e-5)
  # Adam moves a weight by about the learning rate (1e-3) per step whatever
  # its gradient's size, so the rounding in gradients that are 0 in exact
  # arithmetic shows as up to that; a small fraction of it, as between two
  # replicas and one device (above).
  assert _largest_difference(mirrored_runs.weights(invert),
                             mirrored_runs.weights(off)) < 3e-4
