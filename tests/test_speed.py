"Issue 7 on the CPU: folded teachers, compiled steps equal eager ones, CUDA-only options refused, the GPU check's JSON."
import json, os, subprocess, sys, tempfile
from pathlib import Path
import pytest
import torch
import torch.nn as nn
from kd_nbs.models import VGG
from kd_nbs.engine import TrainConfig
from kd_nbs.models import fold_bn
from kd_nbs.gpucheck import ROWS, check_data, compiled_vs_eager
from kd_nbs.stages import STAGES, depends_on, stage

ROOT = Path(__file__).resolve().parents[1]


def _trained_bn(model):
    "Non-trivial BatchNorm statistics and affine parameters, as after training."
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


@pytest.mark.parametrize('arch', ['vgg16', 'vgg19'])
def test_folded_teacher_equals_the_unfolded_one(arch):
    torch.manual_seed(0)
    t = _trained_bn(VGG(arch, width=0.5))
    x = torch.randn(16, 3, 32, 32)
    a, b = t(x, features=True), fold_bn(t)(x, features=True)
    assert torch.allclose(a.logits, b.logits, atol=1e-5, rtol=1e-5)
    for fa, fb in zip(a.blocks + [a.embedding], b.blocks + [b.embedding]):
        assert torch.allclose(fa, fb, atol=1e-5, rtol=1e-5)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fold_bn(t).modules())


@pytest.mark.parametrize('row', ['lm', 'crd'])   # CRD: banks, a sampled draw of negatives, Z set on the first step
def test_compiled_step_gives_the_eager_losses(row):
    # the GPU check's own comparison (two steps: the second starts from the first step's update), on the CPU
    r = compiled_vs_eager(row, 'default', check_data('cpu', 256, 64), 'cpu', width=0.125)
    assert r['compiled'], 'torch.compile fell back to eager on this machine'
    # weights after two steps: within 1e-4 on an AMX host; 1.2e-4 on a 2-core AMD EPYC for CRD (its first two convs, from
    # a summation order of fp32; its losses agree to 1e-7 and LM's weights to 6e-7 there), so 5e-4; a wrong update is far off
    assert r['max_rel_diff'] <= 1e-4 and r['max_weight_diff'] <= 5e-4, r


def test_cuda_only_options_are_refused_on_the_cpu():
    if torch.cuda.is_available(): pytest.skip('this machine has a GPU')
    with pytest.raises(ValueError, match='needs a CUDA device'): TrainConfig(compile='reduce-overhead')
    r = subprocess.run([sys.executable, '-c', 'from kd_nbs.cli import main; raise SystemExit(main())', 'bench', '--device', 'cuda'],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and 'no CUDA GPU is available here' in r.stderr and 'Traceback' not in r.stderr


def test_gpu_check_at_tiny_width_writes_every_row(tmp_path):
    out = tmp_path/'gc'
    args = ('--device cpu --width 0.0625 --steps 2 --warmup 1 --n-train 512 --n-test 256 --share 1 2 '
            '--share-seconds 1 --anchor-workers 0 --equal crd')
    env = {k: v for k, v in os.environ.items() if k != 'KD_NBS_DATA'}
    work_dirs = lambda: set(Path(tempfile.gettempdir()).glob('kd_nbs_gpucheck_*'))   # its lock, barriers, checkpoints
    before = work_dirs()
    r = subprocess.run(['make', '-s', 'gpu-check', f'PYTHON={sys.executable}', f'GPU_OUT={out}', f'GPU_CHECK_ARGS={args}'],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert work_dirs() - before == set(), 'the check left its work folder behind'
    report = json.loads((out/'gpu_check.json').read_text())
    assert sorted(x['row'] for x in report['rows']) == sorted(ROWS)
    assert all(x['epoch_s'] > 0 and 'error' not in x for x in report['rows'])
    assert all(x['eval_first_s'] > 0 and x['eval_s'] > 0 for x in report['rows'])   # the first evaluation and the next
    assert {a['row'] for a in report['anchors']} == {'si', 'lm'} and all(a['img_s'] > 0 for a in report['anchors'])
    assert set(report['share']) == {'1', '2'} and all(v['img_s'] > 0 for v in report['share'].values())
    (eq,) = report['compiled_vs_eager']                     # CRD trained compiled gives the eager losses
    assert eq['row'] == 'crd' and eq['compiled'] and eq['equal'], eq
    pr = report['profile']                                  # where an LM step's time goes
    assert pr['row'] == 'lm' and pr['wall_ms'] > 0 and len(pr['host_top']) == 12, pr
    s = report['sanity']
    assert s['finite'] and s['cpu_load'] and s['same_predictions'], s
    assert set(report['projection']) == {'paper', 'gpu-short'}
    for study in report['projection'].values():
        p = study['1 seed, one stage at a time']
        assert p['missing'] == [] and p['minutes'] > 0
        shared = [v for k, v in study.items() if k.startswith('1 seed, 2 stages')]   # scheduled over the graph
        assert len(shared) == 1 and 0 < shared[0]['minutes']
        path = study['critical path, one stage alone at a time']['stages']   # VGG-16's chain or VGG-19's: whichever measured longer here
        assert path[0] in ('teacher_vgg16', 'teacher_vgg19') and depends_on(stage(path[0])) == ()
        assert all(a in depends_on(stage(b)) for a, b in zip(path, path[1:])), path    # a chain of the stage graph
        assert path[-1] in {s.name for s in STAGES if not s.models}, path            # ending in a study that trains nothing
    alone = {k: v['1 seed, one stage at a time']['minutes'] for k, v in report['projection'].items()}
    assert alone['gpu-short'] < alone['paper']                                        # 20 epochs, not 200
    assert 'projected paper study' in r.stdout and 'projected gpu-short study' in r.stdout
    assert report['env']['gpu_gb'] is None and not any('default here' in k for v in report['projection'].values() for k in v)   # no GPU: 1 at a time
