"""Real NVP (Dinh, Sohl-Dickstein & Bengio, ICLR 2017) in TensorFlow 2 / Keras 3."""

from real_nvp.config import PRESETS, FlowConfig, preset
from real_nvp.model import RealNVP

__all__ = ['FlowConfig', 'PRESETS', 'RealNVP', 'preset']
