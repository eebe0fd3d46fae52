"""The machine: CPU detection, the kernels chosen before TensorFlow starts,
mixed precision refused where the device only emulates it, and the prepared
device check in its reduced CPU mode."""

import json
import os
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from real_nvp import hardware

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AVX2 = hardware.CpuInfo('AMD EPYC 7B13', 'x86_64', frozenset({'avx', 'avx2', 'fma'}),
                        2, 2450.)
AVX512_BF16 = hardware.CpuInfo(
    'Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz', 'x86_64',
    frozenset({'avx2', 'fma', 'avx512f', 'avx512_vnni', 'avx512_bf16'}), 4, 2700.)
ARM = hardware.CpuInfo('Neoverse-V1', 'aarch64', frozenset({'asimd', 'sve'}), 8)


def test_cpuinfo_is_parsed(tmp_path):
  path = tmp_path / 'cpuinfo'
  path.write_text('processor\t: 0\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n'
                  'cpu MHz\t\t: 2199.998\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f\n\n'
                  'processor\t: 1\nmodel name\t: other\n')
  info = hardware.cpu_info(str(path))
  assert info.model == 'Intel(R) Xeon(R) CPU @ 2.20GHz'
  assert info.mhz == 2200.  # the nominal clock of the name, not the current one
  assert info.vector_features == ['sse4_2', 'avx', 'avx2', 'fma', 'avx512f']
  # 2 FMA units x 16 float32 lanes x 2 flops per core and cycle.
  assert info.fma_peak_gflops() == pytest.approx(info.cores * 64 * 2.2)


def test_theoretical_peak_of_avx2():
  assert AVX2.fma_peak_gflops() == pytest.approx(2 * 8 * 2 * 2 * 2.45)
  assert ARM.fma_peak_gflops() is None  # unknown SIMD width and clock


@pytest.mark.parametrize('environ,info,decision,value', [
    ({}, AVX2, 'enabled', '1'),
    ({'TF_ENABLE_ONEDNN_OPTS': '0'}, AVX2, 'user', '0'),
    ({}, AVX512_BF16, 'tf_default', None),
    ({}, ARM, 'not_x86', None),
])
def test_onednn_is_turned_on_where_tf_leaves_it_off(environ, info, decision, value):
  assert hardware.enable_fast_kernels(environ, info) == decision
  assert environ.get('TF_ENABLE_ONEDNN_OPTS') == value


def test_this_process_runs_onednn_on_x86():
  # conftest imports real_nvp before TensorFlow, as the entry points do.
  decision = hardware.kernel_decision()
  if decision in ('user', 'not_x86'):
    pytest.skip(f'the kernels are not real_nvp\'s choice here ({decision})')
  assert decision in ('enabled', 'tf_default')
  assert hardware.kernels_in_use() == 'oneDNN'


def test_emulated_precisions_are_refused_with_the_way_out():
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  with pytest.raises(hardware.EmulatedPrecisionError,
                     match='lacks avx512_bf16 and amx_bf16.*--allow_emulated_precision'):
    hardware.check_precision('bfloat16', strategy, info=AVX2)
  with pytest.raises(hardware.EmulatedPrecisionError, match='float16 natively'):
    hardware.check_precision('float16', strategy, info=AVX512_BF16)
  hardware.check_precision('bfloat16', strategy, info=AVX512_BF16)
  hardware.check_precision('bfloat16', strategy, allow_emulated=True, info=AVX2)
  hardware.check_precision(None, strategy, info=AVX2)


def test_train_refuses_emulated_precision_within_seconds(tmp_path):
  if any(f in hardware.cpu_info().features for f in ('avx512_bf16', 'amx_bf16')):
    pytest.skip('this CPU computes in bfloat16 natively')
  start = time.time()
  result = subprocess.run(
      [sys.executable, 'train.py', '--mixed_precision=bfloat16',
       f'--model_dir={tmp_path}/run'], cwd=ROOT, capture_output=True, text=True,
      timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode != 0
  assert time.time() - start < 60
  assert 'Traceback' not in result.stderr
  line = [l for l in result.stderr.splitlines() if l.startswith('Error:')]
  assert len(line) == 1 and '--allow_emulated_precision' in line[0], result.stderr[-2000:]
  assert 'avx512_bf16' in line[0]
  assert not os.path.exists(tmp_path / 'run' / 'config.json')


@pytest.mark.slow
def test_device_check_runs_in_its_cpu_mode(tmp_path):
  result = subprocess.run(
      [sys.executable, 'bench/device_check.py', '--reduced', f'--out={tmp_path}'],
      cwd=ROOT, capture_output=True, text=True, timeout=900,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report['exactness']['passed'], report['exactness']
  assert report['determinism']['identical'], report['determinism']
  rows = {(row['dtype'], row['xla']): row for row in report['throughput']}
  assert set(rows) == {('float32', False), ('float32', True), ('bfloat16', False),
                       ('float16', False)}
  for xla in (False, True):
    rates = rows['float32', xla]['train_images_per_sec_by_steps_per_loop']
    assert set(rates) == {'1', '5'} and min(rates.values()) > 0, rows['float32', xla]
  assert 'allow_emulated_precision' in rows['float16', False]['refused']
  assert report['data']['cifar10']['images_per_sec'] > 0
