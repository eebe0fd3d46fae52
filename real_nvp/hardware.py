"""The machine a run meets: its CPU, which TensorFlow kernels it gets, and
which compute dtypes it runs natively.

TensorFlow turns its oneDNN CPU kernels on by default only where the CPU has
AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX; elsewhere (e.g. AVX2-only x86) it
falls back to Eigen's kernels, which train this model about 2x slower.
`enable_fast_kernels` (called by `import real_nvp`, which the entry points do
before they import TensorFlow) sets TF_ENABLE_ONEDNN_OPTS=1 on every x86 CPU
unless the user set the variable. This module never imports TensorFlow at
import time: the variable is read when TensorFlow is imported.
"""

import dataclasses
import os
import platform
import re
import sys

from absl import logging

__all__ = ['CpuInfo', 'cpu_info', 'enable_fast_kernels', 'kernel_decision', 'kernels_in_use',
           'log_platform', 'check_precision', 'EmulatedPrecisionError']

_ONEDNN_ENV = 'TF_ENABLE_ONEDNN_OPTS'
# The CPU features for which TensorFlow enables oneDNN by itself
# (tensorflow/core/util/util.cc, IsMKLEnabled).
_TF_ONEDNN_DEFAULT_FEATURES = ('avx512_vnni', 'avx512_bf16', 'avx_vnni', 'amx_tile',
                               'amx_int8', 'amx_bf16')
_NATIVE_BF16_CPU_FEATURES = ('avx512_bf16', 'amx_bf16')
_VECTOR_FEATURES = ('sse4_2', 'avx', 'avx2', 'fma', 'avx512f', 'avx512_vnni',
                    'avx512_bf16', 'avx_vnni', 'amx_tile', 'amx_bf16', 'asimd', 'sve')
# Compute capability from which GPUs run the dtype's matmuls natively.
_NATIVE_GPU_CAPABILITY = {'bfloat16': (8, 0), 'float16': (7, 0)}

_decision = None  # How enable_fast_kernels found TF_ENABLE_ONEDNN_OPTS.


class EmulatedPrecisionError(ValueError):
  """A compute dtype the device would only emulate (slowly)."""


@dataclasses.dataclass(frozen=True)
class CpuInfo:
  """model: the CPU's name; features: its lower-case feature flags;
  cores: logical CPUs this process may use; mhz: the nominal clock, if known."""
  model: str
  machine: str
  features: frozenset
  cores: int
  mhz: float = None

  @property
  def is_x86(self):
    return self.machine.lower() in ('x86_64', 'amd64', 'i386', 'i686')

  @property
  def vector_features(self):
    return [f for f in _VECTOR_FEATURES if f in self.features]

  def fma_peak_gflops(self):
    """Theoretical float32 FMA peak: cores x SIMD lanes x FMA units x 2 x GHz,
    or None where the SIMD width or the clock is not known. Two FMA units per
    core is what every AVX2/AVX-512 x86 core since Haswell and Zen 2 has."""
    if not self.is_x86 or not self.mhz or 'fma' not in self.features:
      return None
    lanes = 16 if 'avx512f' in self.features else 8
    return self.cores * lanes * 2 * 2 * self.mhz / 1e3

  def to_json(self):
    return {'cpu_model': self.model, 'machine': self.machine, 'cores': self.cores,
            'mhz': self.mhz, 'vector_features': self.vector_features}


def cpu_info(cpuinfo_path='/proc/cpuinfo'):
  """The CPU of this machine (Linux: /proc/cpuinfo; elsewhere: `platform`)."""
  fields = {}
  try:
    with open(cpuinfo_path) as f:
      for line in f:
        if not line.strip():
          break  # The first processor's block is enough.
        key, _, value = line.partition(':')
        fields[key.strip().lower()] = value.strip()
  except OSError:
    pass
  model = (fields.get('model name') or fields.get('hardware') or
           platform.processor() or 'unknown CPU')
  features = frozenset((fields.get('flags') or fields.get('features') or '').split())
  mhz = _nominal_mhz(model, fields.get('cpu mhz'))
  cores = (len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
           else os.cpu_count() or 1)
  return CpuInfo(model, platform.machine(), features, cores, mhz)


def _nominal_mhz(model, reported):
  """The clock in the model name ("@ 2.10GHz"), else what the kernel reports."""
  match = re.search(r'@\s*([\d.]+)\s*GHz', model)
  if match:
    return float(match.group(1)) * 1e3
  try:
    return float(reported) if reported else None
  except ValueError:
    return None


def enable_fast_kernels(environ=None, info=None):
  """Turns on TF's oneDNN kernels on x86 CPUs where TF would not, unless the
  user set TF_ENABLE_ONEDNN_OPTS. Must run before TensorFlow is imported;
  returns what it did ('user', 'tf_default', 'enabled', 'not_x86' or
  'too_late')."""
  global _decision
  environ = os.environ if environ is None else environ
  info = info or cpu_info()
  if _ONEDNN_ENV in environ:
    decision = 'user'
  elif not info.is_x86:
    decision = 'not_x86'
  elif any(f in info.features for f in _TF_ONEDNN_DEFAULT_FEATURES):
    decision = 'tf_default'
  elif environ is os.environ and 'tensorflow' in sys.modules:
    decision = 'too_late'
  else:
    environ[_ONEDNN_ENV] = '1'
    decision = 'enabled'
  if environ is os.environ:
    _decision = decision
  return decision


def kernel_decision():
  """What enable_fast_kernels did in this process (None: it did not run)."""
  return _decision


def kernels_in_use():
  """'oneDNN' or 'Eigen': the CPU kernels of this process's TensorFlow."""
  from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-import-not-at-top
  return 'oneDNN' if _pywrap_util_port.IsMklEnabled() else 'Eigen'


_WHY = {
    'user': 'as TF_ENABLE_ONEDNN_OPTS={value} (set by the user) asks',
    'tf_default': 'TensorFlow\'s default on this CPU',
    'enabled': 'enabled by real_nvp: TensorFlow turns oneDNN on only with '
               'AVX512_VNNI/BF16 or AMX; set TF_ENABLE_ONEDNN_OPTS=0 for Eigen',
    'not_x86': 'TensorFlow\'s default on this architecture',
    'too_late': 'TensorFlow was imported before real_nvp, so its default stands; '
                'import real_nvp first for oneDNN',
    None: 'TensorFlow\'s default (real_nvp was not imported first)',
}


def log_platform():
  """Logs the CPU, its vector features, the kernels in use and the accelerators."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  info = cpu_info()
  why = _WHY[kernel_decision()].format(value=os.environ.get(_ONEDNN_ENV))
  logging.info('CPU: %s (%s, %d cores, %s); CPU kernels: %s (%s)', info.model,
               info.machine, info.cores, ' '.join(info.vector_features) or
               'no vector features listed', kernels_in_use(), why)
  for gpu in tf.config.list_physical_devices('GPU'):
    details = tf.config.experimental.get_device_details(gpu)
    logging.info('GPU: %s (%s, compute capability %s)', gpu.name,
                 details.get('device_name', 'unknown'),
                 '.'.join(map(str, details.get('compute_capability', ('?',)))))


def check_precision(dtype, strategy, allow_emulated=False, info=None):
  """Refuses a compute dtype that the strategy's devices only emulate.

  bfloat16 needs a CPU with avx512_bf16 or amx_bf16, or a GPU of compute
  capability 8.0; float16 needs a GPU of 7.0 (no CPU runs it natively);
  TPUs run bfloat16. Raises EmulatedPrecisionError with one line naming the
  device, the missing feature and the flag that forces it anyway.
  """
  if not dtype or allow_emulated:
    return
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  devices = strategy.extended.worker_devices
  force = ('; --allow_emulated_precision runs it anyway (emulated, often many '
           'times slower than float32)')
  if any('TPU' in d for d in devices):
    if dtype == 'float16':
      raise EmulatedPrecisionError(f'--mixed_precision=float16: TPUs compute in '
                                   f'bfloat16, not float16{force}.')
    return
  gpus = tf.config.list_physical_devices('GPU')
  if any('GPU' in d for d in devices) and gpus:
    need = _NATIVE_GPU_CAPABILITY[dtype]
    for gpu in gpus:
      details = tf.config.experimental.get_device_details(gpu)
      capability = tuple(details.get('compute_capability', (0, 0)))
      if capability < need:
        raise EmulatedPrecisionError(
            f'--mixed_precision={dtype}: GPU {details.get("device_name", gpu.name)} '
            f'has compute capability {".".join(map(str, capability))}; native '
            f'{dtype} needs {".".join(map(str, need))}{force}.')
    return
  info = info or cpu_info()
  if dtype == 'float16':
    raise EmulatedPrecisionError(
        f'--mixed_precision=float16 on the CPU ({info.model}): no CPU kernel '
        f'computes in float16 natively{force}.')
  if not any(f in info.features for f in _NATIVE_BF16_CPU_FEATURES):
    raise EmulatedPrecisionError(
        f'--mixed_precision=bfloat16 on the CPU ({info.model}): it lacks '
        f'avx512_bf16 and amx_bf16{force}.')
