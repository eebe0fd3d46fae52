"""Real NVP (Dinh, Sohl-Dickstein & Bengio, ICLR 2017) in TensorFlow 2 / Keras 3.

Importing the package before TensorFlow turns on TF's fast oneDNN CPU kernels
where TF would leave them off (hardware.py); the entry points do so.
"""

from real_nvp import hardware as _hardware

_hardware.enable_fast_kernels()

# pylint: disable=wrong-import-position

from real_nvp.config import PRESETS, FlowConfig, preset

__all__ = ['FlowConfig', 'PRESETS', 'RealNVP', 'preset']


def __getattr__(name):
  # The model, and with it TensorFlow (~6 s), only when asked for: the entry
  # points parse their flags first, so a bad flag or --help answers at once.
  if name == 'RealNVP':
    from real_nvp.model import RealNVP  # pylint: disable=g-import-not-at-top
    return RealNVP
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
