"""The multi-scale architecture (paper §3.6), built once as a flow tree.

Scale i < last, data -> latent, on h [H, W, C]:
    3 checkerboard couplings (alternating masks), each followed by flow BN
    squeeze -> [H/2, W/2, 4C]
    3 channel couplings (alternating masks), each followed by flow BN
    factor out: channels [:2C] are scale i's latent; [2C:] go to scale i+1
    unsqueeze the concatenation back to [H, W, C]
Last scale: 4 checkerboard couplings, each followed by flow BN.

The whole flow is Chain([Steps([logit]), scale_0]), from the dequantized
pixels u to the latent z of the image's shape (flow_tree.py). This is the
only module that knows the order of the flow; RealNVP holds the layers (so
that Keras tracks them) and everything else walks the tree.
"""

from real_nvp import flow_tree, preprocess
from real_nvp.batch_norm import FlowBatchNorm
from real_nvp.coupling import Coupling
from real_nvp.squeeze import Squeeze

__all__ = ['build_flow']


def build_flow(config, st_dtype=None, memory_saving='off'):
  """(logit preprocessing, scales, tree) of a `FlowConfig`: the layers of
  each scale in data -> latent order (the factor-out aside), and the flow
  tree over them. `st_dtype` and `memory_saving` as RealNVP's."""
  logit = preprocess.LogitPreprocess(config.levels, config.alpha, name='preprocess')
  scales = [_scale_layers(config, i, st_dtype) for i in range(config.num_scales)]
  tree = flow_tree.Chain([flow_tree.Steps([logit]), _scale_tree(scales, 0, memory_saving)])
  return logit, scales, tree


def _coupling_steps(config, mask_type, count, feature_maps, prefix, st_dtype):
  steps = []
  for k in range(count):
    steps.append(Coupling(
        mask_type, parity=k % 2, num_blocks=config.num_blocks,
        feature_maps=feature_maps, bn_momentum=config.bn_momentum,
        st_dtype=st_dtype, name=f'{prefix}_{mask_type}{k}'))
    if config.flow_batch_norm:
      steps.append(FlowBatchNorm(momentum=config.bn_momentum, lag=config.bn_lag,
                                 name=f'{prefix}_{mask_type}{k}_bn'))
  return steps


def _scale_layers(config, index, st_dtype):
  """The layers of scale `index`, data -> latent, the factor-out aside."""
  prefix = f'scale{index}'
  feature_maps = config.feature_maps * 2 ** index
  if index == config.num_scales - 1:
    return _coupling_steps(config, 'checkerboard', 4, feature_maps, prefix, st_dtype)
  return (_coupling_steps(config, 'checkerboard', 3, feature_maps, prefix, st_dtype) +
          [Squeeze(name=f'{prefix}_squeeze')] +
          _coupling_steps(config, 'channel', 3, 2 * feature_maps, prefix, st_dtype))


def _scale_tree(scales, index, memory_saving):
  """Scale `index` and the coarser ones, data -> latent (module docstring)."""
  steps = flow_tree.Steps(scales[index], memory_saving)
  if index == len(scales) - 1:
    return steps
  squeeze = next(layer for layer in scales[index] if isinstance(layer, Squeeze))
  return flow_tree.Chain([steps, flow_tree.FactorOut(_scale_tree(scales, index + 1, memory_saving)),
                          flow_tree.Inverted(flow_tree.Steps([squeeze]))])
