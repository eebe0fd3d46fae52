"""eval.py, the figures and the SavedModel (loaded without this project)."""

import io
import json
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from absl import logging as absl_logging
from PIL import Image

from real_nvp import checkpoints, data, distribute, export, figures, flow_tree, preset
from real_nvp.evaluation import Evaluator
from real_nvp.checkpoints import restore_model
from real_nvp.model_dir_layout import CheckpointMismatch
from real_nvp.config import TrainConfig
from real_nvp.train_lib import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(tmp_path_factory, dequantization):
  """A tiny model trained on the digits: (model_dir, restored, trained model)."""
  model_dir = str(tmp_path_factory.mktemp(dequantization))
  source = data.load_dataset('digits')
  config = TrainConfig(train_steps=30, batch_size=32, eval_every=0,
                       checkpoint_every=30, eval_examples=64, num_samples=4,
                       log_every_secs=100.)
  trainer = Trainer(distribute.get_strategy('one_device'), source,
                    preset('digits', num_blocks=1, feature_maps=8,
                           dequantization=dequantization, dequant_feature_maps=8),
                    config, model_dir)
  trainer.train()
  model, step, _ = restore_model(model_dir)
  assert step == 30
  return model_dir, model, trainer.model


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  return _train(tmp_path_factory, 'uniform')


@pytest.fixture(scope='module')
def trained_variational(tmp_path_factory):
  return _train(tmp_path_factory, 'variational')


BOTH_DEQUANTIZERS = pytest.mark.parametrize('run', ['trained', 'trained_variational'])


@BOTH_DEQUANTIZERS
def test_restored_model_equals_the_trained_one(run, request):
  _, model, original_model = request.getfixturevalue(run)
  for restored, original in zip(model.variables, original_model.variables):
    np.testing.assert_array_equal(restored.numpy(), original.numpy(), err_msg=restored.path)
  assert any(np.any(v.numpy() != 0) for v in model.non_trainable_variables
             if 'moving_mean' in v.path)
  images = data.load_dataset('digits').eval.images[:8]
  np.testing.assert_array_equal(model.bits_per_dim(images, seed=5, num_samples=3),
                                original_model.bits_per_dim(images, seed=5, num_samples=3))


def test_restoring_another_architecture_is_refused(trained, tmp_path):
  model_dir, model, _ = trained
  other = preset('digits', num_blocks=2, feature_maps=8)
  (tmp_path / 'config.json').write_text(other.to_json())
  checkpoint = tf.train.latest_checkpoint(model_dir)
  with pytest.raises(CheckpointMismatch, match='num_blocks: checkpoint 1 vs requested 2'):
    restore_model(str(tmp_path), checkpoint)


def test_more_dequantization_draws_average_the_noise_away(trained):
  _, model, _ = trained
  source = data.load_dataset('digits')
  one, four, sixteen = (Evaluator(model, dequant_samples=k)(source, 64) for k in (1, 4, 16))
  # Per image, the mean over K draws moves towards its limit as K grows.
  assert (np.abs(four.bits_per_dim - sixteen.bits_per_dim).mean() <
          np.abs(one.bits_per_dim - sixteen.bits_per_dim).mean())
  one, four = one.summary(), four.summary()
  assert one['num_examples'] == 64 and four['dequant_samples'] == 4
  assert abs(four['bits_per_dim'] - one['bits_per_dim']) < 3 * one['std_error']
  assert one['bits_per_dim_iw'] == one['bits_per_dim']
  assert four['bits_per_dim_iw'] < four['bits_per_dim']
  everything = Evaluator(model)(source).summary()
  assert everything['num_examples'] == 180
  assert everything['std_error'] < one['std_error']


def test_evaluation_does_not_depend_on_the_batch_size(trained):
  _, model, _ = trained
  source = data.load_dataset('digits')
  small = Evaluator(model, batch_size=7, dequant_samples=2, seed=4)(source, 30)
  large = Evaluator(model, batch_size=64, dequant_samples=2, seed=4)(source, 30)
  np.testing.assert_array_equal(small.indices, np.arange(30))
  np.testing.assert_allclose(small.bits_per_dim, large.bits_per_dim, rtol=1e-5)
  np.testing.assert_allclose(small.bits_per_dim_iw, large.bits_per_dim_iw, rtol=1e-5)
  # Each image's noise is its own: the same image scores alike in any batch.
  np.testing.assert_allclose(
      small.bits_per_dim[:5],
      Evaluator(model, dequant_samples=2, seed=4)(source, 5).bits_per_dim, rtol=1e-5)


def test_manifold_at_zero_angles_is_the_first_example(trained):
  _, model, _ = trained
  images = data.load_dataset('digits').eval.images[:4]
  z = model.merge_latents(model.encode(images))
  grid = figures.manifold_latents(z, [0., 0.3], [0., 0.5, 1.0])
  assert grid.shape == (6,) + z.shape[1:]
  np.testing.assert_allclose(grid[0], z[0], atol=1e-6)
  reconstruction = model.decode(model.encode(images[:1]))
  np.testing.assert_array_equal(model.decode(grid[:1]), reconstruction)
  np.testing.assert_array_equal(reconstruction, images[:1])


def test_figures_have_the_expected_layout(trained):
  _, model, _ = trained
  images = data.load_dataset('digits').eval.images[:4]
  rows = figures.scale_resampling(model, images[0], num_columns=3)
  # One row per scale (2), 3 columns of 8x8 images with 1-pixel padding.
  assert rows.shape == (2 * 9 + 1, 3 * 9 + 1, 1)
  both = figures.reconstructions(model, images)
  assert both.shape == (2 * 9 + 1, 4 * 9 + 1, 1)
  np.testing.assert_array_equal(both[1:9], both[10:18])  # originals == reconstructions


@BOTH_DEQUANTIZERS
def test_eval_py_writes_results_figures_and_export(run, request, tmp_path):
  model_dir, model, _ = request.getfixturevalue(run)
  export_dir = tmp_path / 'exported'
  result = subprocess.run(
      [sys.executable, 'eval.py', f'--model_dir={model_dir}', '--dequant_samples=2',
       '--eval_examples=100', f'--export_dir={export_dir}', '--sample_temperatures=1.0,0.5',
       '--watch', '--watch_timeout=1'],  # evaluates the existing checkpoint, then exits
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == 0, result.stderr[-3000:]
  assert '100 images × 2' in result.stdout and 'importance-weighted' in result.stdout
  with open(os.path.join(model_dir, 'eval_results.json')) as f:
    results = json.load(f)
  for key in ('bits_per_dim', 'std_error', 'bits_per_dim_iw', 'std_error_iw',
              'num_examples', 'dequant_samples', 'checkpoint_step', 'dataset',
              'split', 'dequantization'):
    assert key in results
  assert np.isfinite(results['bits_per_dim']) and np.isfinite(results['std_error'])
  assert results['bits_per_dim_iw'] < results['bits_per_dim']
  assert results['dequantization'] == model.config.dequantization
  assert (results['num_examples'], results['dequant_samples'],
          results['checkpoint_step']) == (100, 2, 30)
  names = set(os.listdir(os.path.join(model_dir, 'figures')))
  assert {'samples_t1.png', 'samples_t0.5.png', 'manifold.png', 'reconstructions.png',
          'resample_fine_scales.png', 'resample_coarse_scales.png'} <= names
  for name in names:
    with open(os.path.join(model_dir, 'figures', name), 'rb') as f:
      Image.open(io.BytesIO(f.read())).load()
  assert os.path.exists(export_dir / 'saved_model.pb')


def test_evaluation_on_two_replicas_equals_one_device(trained_variational, tmp_path):
  model_dir, _, _ = trained_variational
  out = tmp_path / 'out.json'
  subprocess.run([sys.executable, 'tests/distributed_helper.py', 'eval', str(out), model_dir],
                 cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'), check=True,
                 timeout=600)
  results = json.loads(out.read_text())
  mirrored, single = results['mirrored'], results['one_device']
  assert (mirrored[0], single[0]) == (2, 1)
  assert mirrored[1] == single[1] == list(range(70))
  np.testing.assert_allclose(mirrored[2], single[2], rtol=1e-5)
  np.testing.assert_allclose(mirrored[3], single[3], rtol=1e-5)


def test_eval_py_checkpoint_faults_are_explained(trained, tmp_path):
  model_dir, _, _ = trained
  result = subprocess.run(
      [sys.executable, 'eval.py', f'--model_dir={model_dir}', '--nofigures',
       f'--checkpoint={tmp_path}/ckpt-99'], cwd=ROOT, capture_output=True, text=True,
      timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode != 0
  assert 'ckpt-99 does not exist' in result.stderr and 'Traceback' not in result.stderr


def test_watch_skips_a_checkpoint_that_vanished(trained, monkeypatch, caplog):
  model_dir, _, _ = trained
  real = os.path.join(model_dir, 'ckpt-30')
  vanished = os.path.join(model_dir, 'ckpt-20')  # rotated away before it was read
  monkeypatch.setattr(tf.train, 'checkpoints_iterator',
                      lambda directory, timeout: iter([vanished, real]))
  steps = []
  with caplog.at_level(logging.WARNING):
    checkpoints.watch_checkpoints(model_dir, 1, lambda path: steps.append(
        checkpoints.restore_model(model_dir, path)[1]))
  assert steps == [30]
  assert 'Skipping' in caplog.text and 'ckpt-20 does not exist' in caplog.text


def test_eval_py_without_a_model_fails_clearly(tmp_path):
  result = subprocess.run([sys.executable, 'eval.py', f'--model_dir={tmp_path}'],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert 'No trained model' in result.stderr and 'Traceback' not in result.stderr


_LOADER = textwrap.dedent('''
    import json, sys
    import numpy as np
    import tensorflow as tf
    export_dir, expected_path = sys.argv[1], sys.argv[2]
    expected = json.load(open(expected_path))
    model = tf.saved_model.load(export_dir)
    out = {}
    a = model.sample(num_samples=5, temperature=0.8, seed=7)['images']
    b = model.sample(num_samples=5, temperature=0.8, seed=7)['images']
    out['sample'] = [list(a.shape), a.dtype.name, int(tf.reduce_max(a)), bool(tf.reduce_all(a == b))]
    images = tf.constant(np.array(expected['images'], np.uint8))
    pixels = tf.constant(np.array(expected['pixels'], np.float32))
    out['log_prob'] = model.log_prob(pixels=pixels)['log_prob'].numpy().tolist()
    out['bits_per_dim'] = model.bits_per_dim(images=images, seed=3)['bits_per_dim'].numpy().tolist()
    iw = model.bits_per_dim_iw(images=images, seed=3, num_samples=4)
    out['iw'] = [iw['bits_per_dim'].numpy().tolist(), iw['bits_per_dim_iw'].numpy().tolist()]
    encoded = model.encode(images=images)
    out['round_trip'] = bool(tf.reduce_all(model.decode(z=encoded['z'])['images'] == images))
    out['scales'] = sorted(k for k in encoded if k.startswith('scale_'))
    errors = {}
    bad = {'rank': lambda: model.bits_per_dim(images=tf.zeros((8, 8, 1), tf.uint8), seed=0),
           'shape': lambda: model.bits_per_dim(images=tf.zeros((2, 4, 4, 1), tf.uint8), seed=0),
           'dtype': lambda: model.bits_per_dim(images=tf.zeros((2, 8, 8, 1), tf.float32), seed=0),
           'range': lambda: model.bits_per_dim(images=tf.fill((2, 8, 8, 1), tf.constant(200, tf.uint8)), seed=0),
           'pixels': lambda: model.log_prob(pixels=tf.fill((1, 8, 8, 1), 17.0)),
           'encode_range': lambda: model.encode(images=tf.fill((2, 8, 8, 1), tf.constant(200, tf.uint8))),
           'decode_nan': lambda: model.decode(z=tf.fill((2, 8, 8, 1), float('nan'))),
           'sample_zero': lambda: model.sample(num_samples=0, temperature=1.0, seed=0),
           'sample_many': lambda: model.sample(num_samples=10 ** 6, temperature=1.0, seed=0),
           'temperature_inf': lambda: model.sample(num_samples=2, temperature=float('inf'), seed=0),
           'temperature_negative': lambda: model.sample(num_samples=2, temperature=-1.0, seed=0),
           'iw_zero': lambda: model.bits_per_dim_iw(images=images, seed=0, num_samples=0),
           'iw_many': lambda: model.bits_per_dim_iw(images=images, seed=0, num_samples=10 ** 6)}
    for name, call in bad.items():
      try:
        call()
        errors[name] = None
      except Exception as error:
        errors[name] = str(error)[:2000]
    out['errors'] = errors
    empty = tf.zeros((0, 8, 8, 1), tf.uint8)
    out['empty'] = [model.bits_per_dim(images=empty, seed=0)['bits_per_dim'].shape.as_list(),
                    model.encode(images=empty)['z'].shape.as_list(),
                    model.log_prob(pixels=tf.zeros((0, 8, 8, 1)))['log_prob'].shape.as_list()]
    many = model.sample(num_samples=600, temperature=0.8, seed=7)['images']
    out['batched'] = [many.shape.as_list(), bool(tf.reduce_all(many[:5] == a))]
    out['attributes'] = [int(model.levels), model.image_shape.numpy().tolist(),
                         json.loads(model.config_json.numpy())['levels']]
    out['modules'] = sorted(m for m in sys.modules if m.startswith(('real_nvp', 'tensorflow_probability')))
    print(json.dumps(out))
    ''')


@BOTH_DEQUANTIZERS
def test_saved_model_loads_and_scores_without_the_project(run, request, tmp_path, caplog,
                                                          monkeypatch):
  _, model, _ = request.getfixturevalue(run)
  export_dir = str(tmp_path / 'saved_model')
  walks = []
  run_tree = flow_tree.run
  monkeypatch.setattr(flow_tree, 'run', lambda tree, x, inverse=False, **kwargs: (
      walks.append(inverse) if tree is model.flow else None,
      run_tree(tree, x, inverse=inverse, **kwargs))[1])
  with caplog.at_level(logging.INFO, logger='tensorflow'), \
       caplog.at_level(logging.INFO, logger='absl'):
    before = tf.get_logger().level, absl_logging.get_verbosity()
    export.export_saved_model(model, export_dir)
    assert (tf.get_logger().level, absl_logging.get_verbosity()) == before
  # The six signatures share one trace of the flow per direction.
  assert sorted(walks) == [False, True]
  # TensorFlow's INFO lines while saving (kilobytes of renamed inputs) are kept out.
  assert not [(r.name, r.getMessage()[:80]) for r in caplog.records
              if f'{os.sep}tensorflow{os.sep}' in r.pathname and r.levelno < logging.WARNING]
  images = data.load_dataset('digits').eval.images[:6]
  pixels = images.astype(np.float32) + 0.25
  expected = {'images': images.tolist(), 'pixels': pixels.tolist()}
  (tmp_path / 'expected.json').write_text(json.dumps(expected))
  (tmp_path / 'load.py').write_text(_LOADER)
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  result = subprocess.run([sys.executable, 'load.py', export_dir, 'expected.json'],
                          cwd=tmp_path, env=dict(env, TF_CPP_MIN_LOG_LEVEL='2'),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out['modules'] == []
  assert out['sample'] == [[5, 8, 8, 1], 'uint8', out['sample'][2], True]
  assert out['sample'][2] <= 16
  np.testing.assert_allclose(out['log_prob'], model.log_prob(pixels), rtol=1e-4)
  np.testing.assert_allclose(out['bits_per_dim'], model.bits_per_dim(images, seed=3),
                             rtol=1e-4)
  estimates = model.bits_per_dim_estimates(images, seed=3, num_samples=4)
  np.testing.assert_allclose(out['iw'][0], estimates['bits_per_dim'], rtol=1e-4)
  np.testing.assert_allclose(out['iw'][1], estimates['bits_per_dim_iw'], rtol=1e-4)
  assert out['round_trip'] and out['scales'] == ['scale_1', 'scale_2']
  expected_errors = {
      'rank': 'TensorSpec(shape=(None, 8, 8, 1), dtype=tf.uint8',
      'shape': 'TensorSpec(shape=(None, 8, 8, 1)', 'dtype': 'dtype=tf.uint8',
      'range': 'images must be < levels=17', 'pixels': 'pixels must be < levels=17',
      'encode_range': 'images must be < levels=17', 'decode_nan': 'latents must be finite',
      'sample_zero': 'num_samples must be >= 1', 'sample_many': 'num_samples must be <= 16384',
      'temperature_inf': 'temperature must be finite',
      'temperature_negative': 'temperature must be >= 0', 'iw_zero': 'num_samples must be >= 1',
      'iw_many': 'num_samples must be <= 65536 per call'}
  for name, message in expected_errors.items():
    assert message in (out['errors'][name] or ''), (name, out['errors'][name])
  assert out['empty'] == [[0], [0, 8, 8, 1], [0]]
  assert out['batched'] == [[600, 8, 8, 1], True]
  assert out['attributes'] == [17, [8, 8, 1], 17]


def test_scores_file_and_out_of_distribution_report(trained, tmp_path):
  model_dir, model, _ = trained
  rng = np.random.default_rng(0)
  noise = tmp_path / 'noise.npz'  # 256 levels, requantized to the model's 17
  np.savez(noise, train=rng.integers(0, 256, (40, 8, 8, 1), dtype=np.uint8),
           test=rng.integers(0, 256, (100, 8, 8, 1), dtype=np.uint8))
  scores = tmp_path / 'scores.csv'
  result = subprocess.run(
      [sys.executable, 'eval.py', f'--model_dir={model_dir}', '--nofigures',
       '--eval_examples=100', '--dequant_samples=2', f'--scores_file={scores}',
       f'--ood_dataset=npz:{noise}'], cwd=ROOT, capture_output=True, text=True,
      timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == 0, result.stderr[-3000:]
  rows = scores.read_text().splitlines()
  assert rows[0] == 'index,bits_per_dim,bits_per_dim_iw' and len(rows) == 101
  values = np.array([[float(v) for v in row.split(',')] for row in rows[1:]])
  np.testing.assert_array_equal(values[:, 0], np.arange(100))
  with open(os.path.join(model_dir, 'eval_results.json')) as f:
    results = json.load(f)
  assert values[:, 1].mean() == pytest.approx(results['bits_per_dim'], abs=1e-5)
  assert values[:, 2].mean() == pytest.approx(results['bits_per_dim_iw'], abs=1e-5)
  report = results['ood']
  assert report['num_examples'] == 100 and 'requantized to 17 levels' in report['dataset']
  assert report['auroc'] > 0.95 and report['typicality_auroc'] > 0.95
  for key in ('aupr', 'fpr_at_95_tpr', 'typicality_aupr', 'typicality_fpr_at_95_tpr'):
    assert 0. <= report[key] <= 1.
  assert 'AUROC' in result.stdout
  assert os.path.exists(os.path.join(model_dir, 'figures', 'ood_histogram.png'))


def test_scores_of_a_folder_name_its_files(tmp_path):
  from real_nvp import evaluation
  folder = tmp_path / 'images'
  folder.mkdir()
  for i in range(20):
    Image.fromarray(np.full((8, 8), 10 * i, np.uint8)).save(folder / f'img{i:02d}.png')
  source = data.load_dataset(f'folder:{folder}', image_size=8, image_channels=1)
  assert len(source.eval.names) == source.eval.num_examples == 2
  fake = evaluation.Evaluation(np.arange(2), np.array([1., 2.]), np.array([1., 2.]), 1)
  path = evaluation.write_scores(fake, str(tmp_path / 's.csv'), source.eval.names)
  rows = open(path).read().splitlines()
  assert rows[0] == 'index,name,bits_per_dim'
  assert rows[1].split(',')[1] == source.eval.names[0]
  assert all(name.startswith('img') and name.endswith('.png') for name in source.eval.names)


def _eval_py(model_dir, *args, prelude=None):
  """eval.py in a subprocess; `prelude`: Python run first (to inject a fault)."""
  command = ([sys.executable, '-c', prelude + '\nimport runpy, sys\n'
              "sys.argv = ['eval.py'] + sys.argv[1:]\n"
              "runpy.run_path('eval.py', run_name='__main__')"] if prelude else
             [sys.executable, 'eval.py'])
  return subprocess.run(command + [f'--model_dir={model_dir}', '--nofigures', *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))


def _one_line_error(result, *fragments):
  assert result.returncode != 0
  errors = [line for line in result.stderr.splitlines() if line.startswith('Error: ')]
  assert len(errors) == 1 and 'Traceback' not in result.stderr, result.stderr[-3000:]
  for fragment in fragments:
    assert fragment in errors[0], errors[0]


@pytest.mark.parametrize('case', ['scores_is_a_folder', 'other_dequantization',
                                  'ood_of_another_shape', 'too_many_draws'])
def test_eval_py_refuses_what_it_cannot_do_before_evaluating(trained, tmp_path, case):
  model_dir, _, _ = trained
  if case == 'ood_of_another_shape':
    np.savez(tmp_path / 'small.npz', images=np.zeros([20, 4, 4, 1], np.uint8),
             levels=np.array(17))
  flag, fragments = {
      'scores_is_a_folder': (f'--scores_file={tmp_path}',
                             [f'Cannot write {tmp_path}', 'it is a directory']),
      'other_dequantization': ('--dequantization=variational',
                               ["--dequantization=variational", "dequantization='uniform'"]),
      'ood_of_another_shape': (f'--ood_dataset=npz:{tmp_path}/small.npz',
                               ['shape (4, 4, 1)', '(8, 8, 1)']),
      'too_many_draws': ('--dequant_samples=100000', ['65536']),
  }[case]
  result = _eval_py(model_dir, flag)
  if case == 'too_many_draws':  # absl's flag check: a usage line, not a traceback
    assert result.returncode != 0 and 'Traceback' not in result.stderr
    assert all(f in result.stderr for f in fragments)
  else:
    _one_line_error(result, *fragments)
  assert 'bits/dim' not in result.stdout  # refused before evaluating


def test_eval_py_prints_its_result_before_a_storage_fault(trained, tmp_path):
  model_dir, _, _ = trained
  scores = tmp_path / 'scores.csv'
  prelude = textwrap.dedent(f'''
      import errno
      import real_nvp.evaluation
      def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, 'Read-only file system', {str(scores)!r})
      real_nvp.evaluation.write_scores = read_only''')
  result = _eval_py(model_dir, f'--scores_file={scores}', prelude=prelude)
  assert 'bound' in result.stdout and 'bits/dim' in result.stdout
  _one_line_error(result, f'Writing {scores} failed', 'Read-only file system',
                  'results printed above are complete')


def test_a_results_file_elsewhere_leaves_the_model_directory_untouched(trained, tmp_path):
  """--results_file: a read-only model directory can be evaluated (nothing is
  written there), and the evaluation prints its progress."""
  model_dir, _, _ = trained

  def contents():
    return {os.path.join(folder, name): os.path.getmtime(os.path.join(folder, name))
            for folder, _, names in os.walk(model_dir) for name in names}

  before = contents()
  result = _eval_py(model_dir, '--eval_examples=20', f'--results_file={tmp_path}/r.json')
  assert result.returncode == 0, result.stderr[-3000:]
  assert contents() == before
  with open(tmp_path / 'r.json') as f:
    assert json.load(f)['num_examples'] == 20
  assert 'eval: 20/20 images' in result.stderr
