"""OOD metrics against hand-computed values, and the Fig. 1 toy flow."""

import math

import numpy as np
import pytest
import tensorflow as tf

from conftest import per_example_log_det
from real_nvp import ood, toy


def test_metrics_match_a_hand_computed_case():
  inside, outside = [1., 2., 3.], [2., 4.]
  # Pairs (ood, in) with ood > in: (2,1), (4,1), (4,2), (4,3); tie (2,2): 4.5 / 6.
  assert ood.auroc(inside, outside) == pytest.approx(0.75)
  # Thresholds 4, 3, 2, 1: recall .5, .5, 1, 1; precision 1, .5, .5, .4.
  assert ood.aupr(inside, outside) == pytest.approx(0.5 * 1 + 0.5 * 0.5)
  # TPR >= .95 first at threshold 2, where 2 of the 3 in-distribution pass.
  assert ood.fpr_at_tpr(inside, outside) == pytest.approx(2 / 3)


def test_metrics_of_separated_and_identical_sets():
  assert ood.auroc([0., 1.], [2., 3.]) == 1. and ood.aupr([0., 1.], [2., 3.]) == 1.
  assert ood.fpr_at_tpr([0., 1.], [2., 3.]) == 0.
  assert ood.auroc([5., 5.], [5.]) == 0.5
  everything = ood.ood_metrics([1., 1.2, 0.8], [3., 3.5], train_mean_bits_per_dim=1.)
  assert everything['auroc'] == 1. and everything['typicality_auroc'] == 1.
  # Typicality flags sets too good to be typical as well.
  assert ood.ood_metrics([1., 1.1], [0.1, 0.2], 1.)['typicality_auroc'] == 1.
  with pytest.raises(ValueError, match='finite'):
    ood.auroc([1., np.nan], [2.])


@pytest.fixture(scope='module')
def moons():
  points, colour = toy.two_moons(2000, seed=0)
  return points, colour, toy.train_toy(points, steps=150, seed=0)


def test_toy_flow_beats_the_prior_and_round_trips(moons):
  points, _, flow = moons
  nll = -float(tf.reduce_mean(flow.log_prob(tf.constant(points))))
  prior = -np.mean(np.sum(-0.5 * points ** 2 - 0.5 * math.log(2 * math.pi), axis=1))
  assert nll < prior - 0.3, (nll, prior)
  z = flow(tf.constant(points[:50]))[0]
  np.testing.assert_allclose(flow.decode(z), points[:50], atol=1e-4)
  # The log-det is exact (autodiff Jacobian of the 2-D map).
  x = tf.constant(points[:4].astype(np.float64))
  expected = per_example_log_det(lambda v: tf.cast(flow(tf.cast(v, tf.float32))[0],
                                                   tf.float64), x)
  np.testing.assert_allclose(flow(tf.constant(points[:4]))[1], expected, rtol=1e-3,
                             atol=1e-3)


def test_figure_one_has_four_panels(moons, tmp_path):
  points, colour, flow = moons
  from PIL import Image
  path = toy.figure_one(flow, points, colour, str(tmp_path / 'fig1.png'))
  assert Image.open(path).size == (800, 800)
