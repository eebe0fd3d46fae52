"""Out-of-distribution detection with a density model's bits/dim.

Scores: higher means "more likely out of distribution".
- `bits_per_dim`: the image's bits/dim (Nalisnick et al., ICLR 2019, used
  Glow and Real NVP likelihoods so);
- typicality: |bits/dim - mean training bits/dim| (Nalisnick et al. 2019,
  "Detecting out-of-distribution inputs to deep generative models using
  typicality").

Metrics, with the out-of-distribution set as the positive class, computed
exactly (ties count one half):
- AUROC: P(score_ood > score_in) + P(equal) / 2 (the Mann-Whitney statistic);
- AUPR: average precision, Σ_k (R_k - R_{k-1}) P_k over the distinct
  thresholds taken from the highest score down;
- FPR at 95 % TPR: the smallest false-positive rate among thresholds whose
  true-positive rate is at least 0.95.
"""

import dataclasses

import numpy as np

from real_nvp import data

__all__ = ['auroc', 'aupr', 'fpr_at_tpr', 'ood_metrics', 'ood_report']

_TYPICALITY_IMAGES = 1000  # training images at least behind the mean bits/dim


def _labels_and_scores(in_scores, ood_scores):
  in_scores, ood_scores = np.asarray(in_scores, np.float64), np.asarray(ood_scores, np.float64)
  if not len(in_scores) or not len(ood_scores):
    raise ValueError('Both sets need at least one score.')
  if not (np.all(np.isfinite(in_scores)) and np.all(np.isfinite(ood_scores))):
    raise ValueError('Scores must be finite.')
  scores = np.concatenate([in_scores, ood_scores])
  labels = np.concatenate([np.zeros(len(in_scores)), np.ones(len(ood_scores))])
  return labels, scores


def auroc(in_scores, ood_scores):
  """Area under the ROC curve (OOD positive), ties counted one half."""
  in_scores, ood_scores = np.asarray(in_scores, np.float64), np.asarray(ood_scores, np.float64)
  _labels_and_scores(in_scores, ood_scores)
  order = np.sort(in_scores)
  below = np.searchsorted(order, ood_scores, side='left')
  equal = np.searchsorted(order, ood_scores, side='right') - below
  return float((below + 0.5 * equal).sum() / (len(in_scores) * len(ood_scores)))


def _curve(in_scores, ood_scores):
  """(TPR, FPR, precision) at each distinct threshold, highest score first."""
  labels, scores = _labels_and_scores(in_scores, ood_scores)
  order = np.argsort(-scores, kind='stable')
  scores, labels = scores[order], labels[order]
  last_of_each = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
  true_positives = np.cumsum(labels)[last_of_each]
  false_positives = (last_of_each + 1) - true_positives
  return (true_positives / labels.sum(), false_positives / (len(labels) - labels.sum()),
          true_positives / (last_of_each + 1))


def aupr(in_scores, ood_scores):
  """Average precision with the OOD set as the positive class."""
  recall, _, precision = _curve(in_scores, ood_scores)
  return float(np.sum(np.diff(np.r_[0., recall]) * precision))


def fpr_at_tpr(in_scores, ood_scores, tpr=0.95):
  """Smallest false-positive rate at a threshold with TPR >= `tpr`."""
  true_rate, false_rate, _ = _curve(in_scores, ood_scores)
  return float(false_rate[true_rate >= tpr - 1e-12].min())


def ood_metrics(in_bits_per_dim, ood_bits_per_dim, train_mean_bits_per_dim):
  """The three metrics for bits/dim and for typicality, as plain numbers."""
  results = {}
  typical = lambda values: np.abs(np.asarray(values, np.float64) -  # noqa: E731
                                  train_mean_bits_per_dim)
  for prefix, (inside, outside) in (
      ('', (in_bits_per_dim, ood_bits_per_dim)),
      ('typicality_', (typical(in_bits_per_dim), typical(ood_bits_per_dim)))):
    results[f'{prefix}auroc'] = auroc(inside, outside)
    results[f'{prefix}aupr'] = aupr(inside, outside)
    results[f'{prefix}fpr_at_95_tpr'] = fpr_at_tpr(inside, outside)
  return results


def ood_report(evaluator, in_evaluation, source, ood_source):
  """Scores `ood_source` (brought to the model's shape and levels, see
  `data.conform`) with `evaluator` and compares it with `in_evaluation`.

  The typicality reference is the mean bits/dim of the first
  max(1000, n) training images of `source` (n: in-distribution images).
  Returns (report dict, the OOD set's Evaluation).
  """
  model_config = evaluator.model.config
  ood_source = data.conform(ood_source, model_config.image_shape, model_config.levels)
  ood_evaluation = evaluator(ood_source, len(in_evaluation.indices))
  train_split = dataclasses.replace(source, eval=source.train)
  reference = evaluator(train_split, min(source.train.num_examples,
                                         max(_TYPICALITY_IMAGES, len(in_evaluation.indices))))
  train_mean = float(np.mean(reference.bits_per_dim.astype(np.float64)))
  report = {'dataset': ood_source.name, 'num_examples': len(ood_evaluation.indices),
            'bits_per_dim': float(np.mean(ood_evaluation.bits_per_dim)),
            'in_distribution_bits_per_dim': float(np.mean(in_evaluation.bits_per_dim)),
            'train_mean_bits_per_dim': train_mean,
            **ood_metrics(in_evaluation.bits_per_dim, ood_evaluation.bits_per_dim,
                          train_mean)}
  return report, ood_evaluation
