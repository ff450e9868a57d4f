"Issue 21: the CIFAR model zoo (parameter counts and block shapes as RepDistiller's networks) and the seven benchmark methods through the engine's step."
import importlib
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import pytest
import torch
from kd_nbs.zoo import ARCHS, build_model
from kd_nbs.models import count_parameters, feature_shapes, fold_bn
from kd_nbs.registry import METHODS, STUDY_METHODS
from kd_nbs.engine import Trainable, TrainConfig, make_optimizer, prepare_teacher, train_step
from kd_nbs.checkpoints import load_model, save_atomic

ROOT = Path(__file__).resolve().parents[1]

# Exact counts at full width, 100 classes, worked out layer by layer from RepDistiller's models/ (conv biases in the VGGs
# only, BatchNorm's two affine vectors, the classifier's bias); published to two decimals in CRD and mdistiller.
PARAMS = {'vgg8': 3_965_028, 'vgg11': 9_277_284, 'vgg13': 9_462_180, 'vgg16': 14_774_436, 'vgg19': 20_086_692,
          'resnet8': 83_892, 'resnet14': 181_108, 'resnet20': 278_324, 'resnet32': 472_756, 'resnet44': 667_188,
          'resnet56': 861_620, 'resnet110': 1_736_564, 'resnet8x4': 1_233_540, 'resnet32x4': 7_433_860,
          'wrn_16_1': 180_916, 'wrn_16_2': 703_284, 'wrn_40_1': 569_780, 'wrn_40_2': 2_255_156}
PUBLISHED_M = {'wrn_40_2': 2.26, 'wrn_16_2': 0.70, 'wrn_40_1': 0.57, 'resnet56': 0.86, 'resnet110': 1.74, 'resnet20': 0.28,
               'resnet32': 0.47, 'resnet8x4': 1.23, 'resnet32x4': 7.43, 'vgg13': 9.46, 'vgg8': 3.96}
# (C, H, W) of each entry of `blocks` (stem first), then the embedding's width
SHAPES = {'resnet8x4': [(32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (256,)],
          'resnet56': [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8), (64,)],
          'wrn_40_2': [(16, 32, 32), (32, 32, 32), (64, 16, 16), (128, 8, 8), (128,)],
          'vgg8': [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 4, 4), (512,)]}


def test_the_zoo_holds_every_network_of_the_benchmark():
    assert set(ARCHS) == set(PARAMS)


@pytest.mark.parametrize('arch', sorted(PARAMS))
def test_parameter_count_at_full_width(arch):
    n = count_parameters(build_model(arch))
    assert n == PARAMS[arch]
    if arch in PUBLISHED_M: assert abs(n / 1e6 - PUBLISHED_M[arch]) < 0.01


@pytest.mark.parametrize('arch', sorted(SHAPES))
def test_block_shapes(arch):
    assert feature_shapes(build_model(arch)) == [tuple(s) for s in SHAPES[arch]]


def test_width_scales_every_stage_and_checkpoints_rebuild_any_arch(tmp_path):
    m = build_model('resnet32x4', width=0.25)
    assert feature_shapes(m)[-1] == (64,) and m.width == 0.25
    p = tmp_path/'m.pth'
    save_atomic(dict(model=m.state_dict(), model_config=dict(arch=m.arch, width=m.width, num_classes=100)), p)
    back, _ = load_model(p, arch='resnet32x4')
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(back(x), m.eval()(x))


@pytest.mark.parametrize('arch', ['resnet20', 'wrn_16_2', 'vgg8'])
def test_folding_batchnorm_keeps_the_function(arch):
    torch.manual_seed(0)
    m = build_model(arch, width=0.5)
    for bn in (b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-.5, .5); bn.running_var.uniform_(.5, 2)
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(fold_bn(m)(x), m.eval()(x), atol=1e-4, rtol=1e-4)


def test_a_wrong_arch_is_refused_with_the_closest_name():
    with pytest.raises(ValueError, match="did you mean 'wrn_40_2'"): build_model('wrn_40_3')


NEW = [m for m in METHODS if not m.in_study]
PAIRS = [('resnet32x4', 'resnet8x4'), ('vgg13', 'vgg8'), ('wrn_40_2', 'wrn_16_2')]


def test_the_registry_has_the_seven_and_the_study_keeps_its_six():
    assert [m.name for m in NEW] == ['at', 'sp', 'vid', 'rkd', 'pkt', 'nst', 'dist']
    assert [m.name for m in STUDY_METHODS] == ['si', 'lm', 'hints', 'crd', 'ls', 'dkd']


@pytest.mark.parametrize('info', NEW, ids=lambda m: m.name)
@pytest.mark.parametrize('pair', PAIRS, ids=lambda p: f'{p[0]}-{p[1]}')
def test_each_new_method_trains_a_benchmark_pair(info, pair):
    "Two steps of the engine's train_step on a benchmark pair at width 1/4: every loss finite, the student (and the method's own parameters) move."
    module, _, name = info.cls.partition(':')
    cls = getattr(importlib.import_module(module), name)
    torch.manual_seed(0)
    teacher, student = build_model(pair[0], width=0.25), build_model(pair[1], width=0.25)
    method = cls.build(student, teacher, 64, torch.zeros(64, dtype=torch.long))
    cfg = TrainConfig(epochs=1, lr=0.01)
    model = Trainable(student, method)
    opt = make_optimizer(model.parameters(), cfg)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 100, (16,))
    for _ in range(2): _, losses, loss = train_step(model, prepare_teacher(teacher, cfg), opt, x, y, torch.arange(16))
    assert set(losses) > {'ce'} and all(torch.isfinite(v) for v in losses.values()), losses
    assert all(float(v.detach()) > 0 for k, v in losses.items() if k != 'ce'), losses      # the distillation term is not idle
    moved = [not torch.equal(a, b) for a, b in zip(before, model.parameters())]
    assert all(moved[:len(list(student.parameters()))]) and all(moved)


@pytest.fixture(scope='module')
def method_runs(real_data_dir, tmp_path_factory):
    """The VGG-16 teacher at the smoke preset, trained once by its notebook, then the seven method notebooks on it, two at
    a time (a papermill process each, on one thread): the folder and {method: its finished process}."""
    out = tmp_path_factory.mktemp('bench_methods')
    run = lambda nb, **env: subprocess.run([sys.executable, '-m', 'papermill', str(ROOT/'nbs'/nb), str(out/nb), '--no-progress-bar',
                                            '-p', 'preset', 'smoke', '-p', 'out_dir', str(out), '-p', 'data_dir', str(real_data_dir)],
                                           capture_output=True, text=True, env={**os.environ, **env})
    teacher = run('01_teacher.ipynb')
    assert teacher.returncode == 0, teacher.stderr[-3000:]
    with ThreadPoolExecutor(2) as pool:
        return out, dict(zip([m.name for m in NEW], pool.map(lambda m: run(m.notebook, OMP_NUM_THREADS='1'), NEW)))


@pytest.mark.parametrize('info', NEW, ids=lambda m: m.name)
def test_each_new_method_notebook_runs_end_to_end(info, method_runs):
    "`papermill nbs/12_at.ipynb` (and each of the seven) at the smoke preset: the student's checkpoint and result, its method's class and loss terms recorded."
    import json
    out, runs = method_runs
    assert runs[info.name].returncode == 0, runs[info.name].stderr[-3000:]
    assert (out/f'best_student_{info.name}.pth').exists()
    r = json.loads((out/f'student_{info.name}_result.json').read_text())
    assert r['params']['run']['method'] == info.cls.split(':')[1]
    assert any(k.startswith('train_') and k not in ('train_ce', 'train_acc') for k in r['history'][0]), r['history'][0]
