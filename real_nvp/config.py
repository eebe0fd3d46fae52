"""The flow's architecture and the training settings, each one validated
value; the architecture presets.

`TrainConfig`'s fields are the training flags, and `FlowConfig`'s (but the
data's image shape and levels) the architecture flags: cli_flags.py defines
one flag per field from its type, default, help and check, so a setting is
added in one place.
"""

import dataclasses
import json
import math

__all__ = ['FlowConfig', 'TrainConfig', 'PRESETS', 'preset', 'DEQUANTIZERS',
           'MEMORY_SAVING_MODES', 'STRATEGIES', 'MAX_DEQUANT_SAMPLES', 'ARCHITECTURE_FIELDS']

# The names of the dequantizers (dequantization.py), of the memory-saving
# gradients (memory_saving.py) and of the tf.distribute strategies
# (distribute.py), declared here only: the flags list them before
# TensorFlow is imported.
DEQUANTIZERS = ('uniform', 'variational')
MEMORY_SAVING_MODES = ('off', 'recompute', 'invert')
STRATEGIES = ('mirrored', 'one_device', 'multi_worker', 'tpu')

# Draws K per image in one scoring call (eval.py, the SavedModel). Inference
# memory does not grow with K but the [K, B] log-weights do, and so does the
# time; 65,536 draws of a batch of 256 are 64 MiB of log-weights.
MAX_DEQUANT_SAMPLES = 65_536


# --- settings: a field with its help, its check and its flag --------------------------


def _at_least(bound):
  def check(value):
    if value < bound:
      return f'must be >= {bound}'
  return check


def _finite(lowest, inclusive):
  def check(value):
    if not math.isfinite(value) or value < lowest or (value == lowest and not inclusive):
      return f'must be finite and {">=" if inclusive else ">"} {lowest:g}'
  return check


def _temperatures(values):
  if not values or any(not math.isfinite(v) or v < 0 for v in values):
    return 'must be one or more finite temperatures >= 0'


def _choice(*choices):
  def check(value):
    if value not in choices:
      return f'must be one of {", ".join(map(str, choices))}'
  return check


def _setting(default, help, check=None, flag=None, choices=None):
  if choices:
    check = _choice(*choices)
  return dataclasses.field(default=default, metadata={
      'help': help, 'check': check, 'flag': flag, 'choices': choices})


def _architecture(default, help, choices=None):
  """A FlowConfig field; its flag defaults to the data set's preset."""
  return dataclasses.field(default=default, metadata={
      'help': help, 'check': None, 'flag': None, 'choices': choices})


@dataclasses.dataclass(frozen=True)
class FlowConfig:
  """Architecture and likelihood settings of a Real NVP model.

  Attributes:
    image_shape: (H, W, C) of the data.
    levels: quantization levels L of the pixels (256 for 8-bit images).
    num_scales: scales of the multi-scale architecture (paper §3.6), the last
      (4 checkerboard couplings, no squeeze) included: CIFAR-10's "downscale
      only once" is 2. H and W must be divisible by 2**(num_scales - 1).
    num_blocks: residual blocks per s/t network.
    feature_maps: feature maps of the s/t networks of the first scale's
      checkerboard couplings; the channel couplings of a scale use twice as
      many, and every scale doubles them (as the channels double).
    flow_batch_norm: batch normalization after every coupling (paper §3.7).
    bn_momentum: momentum of all batch-norm moving averages.
    bn_lag: Appendix E's running-average statistics in training mode.
    alpha: boundary margin of the logit preprocessing (paper §4.1).
    dequantization: 'uniform' (the paper: u = x + U[0, 1)) or 'variational'
      (Flow++: a learned conditional flow; see dequantization.py).
    dequant_couplings, dequant_feature_maps, dequant_blocks: size of the
      variational dequantizer: couplings per mask type, feature maps and
      residual blocks of its s/t and context networks.
  """
  image_shape: tuple = (8, 8, 1)  # of the data, not a flag
  levels: int = 256  # of the data, not a flag
  num_scales: int = _architecture(2, 'Scales, the final one included.')
  num_blocks: int = _architecture(2, 'Residual blocks per s/t network.')
  feature_maps: int = _architecture(32, 'Feature maps of the first scale.')
  flow_batch_norm: bool = _architecture(True, 'Batch norm after each coupling.')
  bn_momentum: float = _architecture(0.95, 'Batch-norm moving-average momentum.')
  bn_lag: bool = _architecture(False, 'Appendix E running-average statistics.')
  alpha: float = _architecture(0.05, 'Logit preprocessing margin.')
  dequantization: str = _architecture(
      'uniform', 'uniform: u = x + U[0, 1) (the paper, the default); variational: a '
      'learned conditional flow (Flow++).', choices=DEQUANTIZERS)
  dequant_couplings: int = _architecture(
      2, 'Variational dequantizer: couplings per mask type.')
  dequant_feature_maps: int = _architecture(
      32, 'Variational dequantizer: feature maps of its networks.')
  dequant_blocks: int = _architecture(
      1, 'Variational dequantizer: residual blocks of its networks.')

  def __post_init__(self):
    object.__setattr__(self, 'image_shape', tuple(int(d) for d in self.image_shape))
    if len(self.image_shape) != 3 or min(self.image_shape) < 1:
      raise ValueError('`image_shape` must be (height, width, channels) with '
                       f'positive sizes. Received: image_shape={self.image_shape}')
    if self.num_scales < 1:
      raise ValueError(
          f'`num_scales` must be >= 1. Received: num_scales={self.num_scales}')
    factor = 2 ** (self.num_scales - 1)
    height, width, _ = self.image_shape
    if height % factor or width % factor:
      raise ValueError(
          f'num_scales={self.num_scales} squeezes the image '
          f'{self.num_scales - 1} times, so height and width must be divisible '
          f'by {factor}. Received: image_shape={self.image_shape}')
    if not 2 <= self.levels <= 256:
      raise ValueError('`levels` must be in [2, 256] (pixels are uint8). '
                       f'Received: levels={self.levels}')
    if self.num_blocks < 0 or self.feature_maps < 1:
      raise ValueError(
          '`num_blocks` must be >= 0 and `feature_maps` >= 1. Received: '
          f'num_blocks={self.num_blocks}, feature_maps={self.feature_maps}')
    if not 0. < self.alpha < 1.:
      raise ValueError(f'`alpha` must be in (0, 1). Received: alpha={self.alpha}')
    if not 0. <= self.bn_momentum < 1.:
      raise ValueError('`bn_momentum` must be in [0, 1). Received: '
                       f'bn_momentum={self.bn_momentum}')

    if self.dequantization not in DEQUANTIZERS:
      raise ValueError(f"`dequantization` must be one of {DEQUANTIZERS}. "
                       f'Received: dequantization={self.dequantization!r}')
    if (self.dequant_couplings < 1 or self.dequant_feature_maps < 1 or
        self.dequant_blocks < 0):
      raise ValueError(
          '`dequant_couplings` and `dequant_feature_maps` must be >= 1 and '
          '`dequant_blocks` >= 0. Received: '
          f'dequant_couplings={self.dequant_couplings}, '
          f'dequant_feature_maps={self.dequant_feature_maps}, '
          f'dequant_blocks={self.dequant_blocks}')

  @property
  def num_dims(self):
    height, width, channels = self.image_shape
    return height * width * channels

  def to_json(self):
    return json.dumps(dataclasses.asdict(self), sort_keys=True)

  @classmethod
  def from_json(cls, text):
    return cls(**json.loads(text))

  def replace(self, **changes):
    return dataclasses.replace(self, **changes)


# The FlowConfig fields that are flags (unset: the data set's preset).
ARCHITECTURE_FIELDS = tuple(f for f in dataclasses.fields(FlowConfig) if f.metadata)

PRESETS = {
    # Paper §4.1: 8 residual blocks, 64 feature maps, downscale only once.
    'cifar10': FlowConfig((32, 32, 3), num_scales=2, num_blocks=8,
                          feature_maps=64),
    # 32x32 sets: 4 residual blocks, 32 feature maps, recursion down to 4x4.
    'imagenet32': FlowConfig((32, 32, 3), num_scales=4, num_blocks=4,
                             feature_maps=32),
    # 64x64 sets: 2 residual blocks, recursion down to 4x4.
    'imagenet64': FlowConfig((64, 64, 3), num_scales=5, num_blocks=2,
                             feature_maps=32),
    'lsun': FlowConfig((64, 64, 3), num_scales=5, num_blocks=2,
                       feature_maps=32),
    'celeba': FlowConfig((64, 64, 3), num_scales=5, num_blocks=2,
                         feature_maps=32),
    # Small presets (ours): 28x28 -> 14x14 -> 7x7; 8x8 -> 4x4.
    'mnist': FlowConfig((28, 28, 1), num_scales=3, num_blocks=4,
                        feature_maps=32),
    # 16 feature maps: 1,617 training digits overfit a wider net (measured).
    'digits': FlowConfig((8, 8, 1), levels=17, num_scales=2, num_blocks=2,
                         feature_maps=16, dequant_feature_maps=16),
}


def preset(name, **overrides):
  """The named preset with `overrides` applied (e.g. num_blocks=4)."""
  if name not in PRESETS:
    raise ValueError(f'Unknown preset {name!r}; known: {sorted(PRESETS)}')
  return PRESETS[name].replace(**overrides)


@dataclasses.dataclass
class TrainConfig:
  """Training settings; each field is the flag of the same name (or `flag`)."""
  train_steps: int = _setting(1000, 'Total optimizer steps.', _at_least(1))
  batch_size: int = _setting(64, 'Global batch size (divisible by the replicas).',
                             _at_least(1))
  learning_rate: float = _setting(1e-3, 'Adam learning rate.', _finite(0., False))
  warmup_steps: int = _setting(0, 'Linear learning-rate warm-up steps.', _at_least(0))
  clip_grad_norm: float = _setting(100., 'Clip gradients to this global norm.',
                                   _finite(0., False))
  weight_decay: float = _setting(
      5e-5, 'L2 coefficient on the weight-normalization gains (paper: 5e-5).',
      _finite(0., True))
  max_nonfinite: int = _setting(
      20, 'Stop after this many consecutive non-finite steps.', _at_least(1))
  eval_every: int = _setting(
      500, 'Evaluate held-out bits/dim every N steps; 0: only at the end.',
      _at_least(0))
  eval_examples: int = _setting(
      0, 'Held-out examples per evaluation; 0: the whole split.', _at_least(0))
  checkpoint_every: int = _setting(500, 'Checkpoint every N steps.', _at_least(1))
  keep_checkpoints: int = _setting(5, 'Checkpoints to keep.', _at_least(1))
  summary_every: int = _setting(50, 'Write training scalars every N steps.',
                                _at_least(1))
  log_every_secs: float = _setting(5., 'Seconds between progress lines.',
                                   _finite(0., True))
  sample_temperatures: tuple = _setting(
      (1.0, 0.7), 'Temperatures of the sample grids (train.py) and figures (eval.py).',
      _temperatures)
  num_samples: int = _setting(64, 'Images per sample grid.', _at_least(1))
  seed: int = _setting(0, 'Seed of the data order, noise and samples.')
  jit_compile: bool = _setting(False, 'jit_compile the per-replica forward/backward '
                               'pass.', flag='xla')
  mixed_precision: str = _setting(
      None, 'Compute dtype of the s/t networks: bfloat16 (GPUs of compute capability '
      '8.0, TPUs, CPUs with avx512_bf16 or amx_bf16) or float16 (GPUs of 7.0); the '
      'flow, log-dets and likelihood stay float32.',
      choices=(None, 'bfloat16', 'float16'))
  allow_emulated_precision: bool = _setting(
      False, 'Run --mixed_precision even where the device only emulates the dtype '
      '(a CPU without avx512_bf16/amx_bf16, float16 on a CPU, an older GPU).')
  memory_saving: str = _setting(
      'off', 'What the backward pass keeps of the forward pass: off (every '
      'activation), recompute (each coupling\'s input; its s/t network runs '
      'again), invert (each scale\'s output; the layers\' inverses reconstruct '
      'their inputs). Less memory for more time; the same model and gradients.',
      choices=MEMORY_SAVING_MODES)
  steps_per_loop: int = _setting(
      0, 'Training steps per device-loop call (one tf.function, read back once); '
      'any value gives the same results. 0: as many as take about a second '
      '(measured), at most 100.', _at_least(0))
  train_dequant_samples: int = _setting(
      1, 'Dequantization draws K per image in training; K > 1 trains on the '
      'K-draw importance-weighted bound.', _at_least(1))
  export_checkpoint: str = _setting(
      'best', 'Which checkpoint train.py exports as its SavedModel: the best '
      'held-out one, the last, or none (runs of a sweep; `eval.py --export_dir` '
      'exports any checkpoint later).', choices=('best', 'last', 'none'))
  early_stopping_evals: int = _setting(
      0, 'Stop after this many held-out evaluations without improvement; 0: off. '
      'A run that stopped so is not continued by running it again, unless '
      '--train_past_early_stop.', _at_least(0))
  train_past_early_stop: bool = _setting(
      False, 'Continue a run that early stopping ended (raise '
      '--early_stopping_evals, or set it to 0, or it stops again at the next '
      'evaluation).')
  restart_if_unreadable: bool = _setting(
      False, 'When no checkpoint in --model_dir can be read, move them (and the '
      'best checkpoint) aside and train from step 0, instead of stopping.')

  def __post_init__(self):
    self.sample_temperatures = tuple(float(t) for t in self.sample_temperatures)
    for field in dataclasses.fields(self):
      problem = field.metadata['check'] and field.metadata['check'](
          getattr(self, field.name))
      if problem:
        raise ValueError(f'--{flag_name(field)}={getattr(self, field.name)!r}: '
                         f'{problem}.')

  def replace(self, **changes):
    return dataclasses.replace(self, **changes)


def flag_name(field):
  """The command-line flag of a TrainConfig field."""
  return field.metadata['flag'] or field.name
