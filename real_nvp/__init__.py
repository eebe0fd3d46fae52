"""Real NVP (Dinh, Sohl-Dickstein & Bengio, ICLR 2017) in TensorFlow 2 / Keras 3.

Importing the package before TensorFlow turns on TF's fast oneDNN CPU kernels
where TF would leave them off (hardware.py); the entry points do so.
"""

from real_nvp import hardware as _hardware

_hardware.enable_fast_kernels()

# pylint: disable=wrong-import-position

from real_nvp.config import PRESETS, FlowConfig, preset
from real_nvp.model import RealNVP

__all__ = ['FlowConfig', 'PRESETS', 'RealNVP', 'preset']
