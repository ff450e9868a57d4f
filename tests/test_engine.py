import json, os, subprocess, sys
from pathlib import Path
import pytest
import torch
from kd_nbs.engine import fit, TrainConfig, CrossEntropy
from kd_nbs.checkpoints import save_atomic, load_checkpoint, load_model, CheckpointError
from kd_nbs.models import VGG
from kd_nbs.crd import CRD

CFG = dict(epochs=3, batch_size=40, seed=3)


def _crd_run(data, out, cfg, interrupt_at=None):
    torch.manual_seed(0)
    student, teacher = VGG('vgg11', width=0.125), VGG('vgg13', width=0.125).eval()
    method = CRD.between(student, teacher, len(data.train_y), feat_dim=16, n_negatives=32, labels=data.train_y)
    if interrupt_at is not None:   # kill the run in the middle of an epoch
        calls, forward = {'n': 0}, method.forward
        def dying(*a):
            calls['n'] += 1
            if calls['n'] == interrupt_at: raise KeyboardInterrupt
            return forward(*a)
        method.forward = dying
    return fit(student, method, data, cfg, out, 'crd', teacher=teacher, progress=False), student, method


def test_resumed_run_ends_where_an_uninterrupted_one_ends(tiny_data, tmp_path):
    cfg = TrainConfig(**CFG)
    full, s_full, m_full = _crd_run(tiny_data, tmp_path/'a', cfg)
    with pytest.raises(KeyboardInterrupt):
        _crd_run(tiny_data, tmp_path/'b', cfg, interrupt_at=7)   # 5 batches per epoch: dies in epoch 2
    assert load_checkpoint(tmp_path/'b'/'last_crd.pth')['epoch'] == 1
    resumed, s_res, m_res = _crd_run(tiny_data, tmp_path/'b', cfg)
    assert [r['test_acc'] for r in resumed['history']] == [r['test_acc'] for r in full['history']]
    for a, b in zip(s_full.state_dict().values(), s_res.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(m_full.memory_s, m_res.memory_s)   # the CRD banks were restored, not re-initialised
    lines = (tmp_path/'b'/'crd_metrics.jsonl').read_text().splitlines()
    assert [json.loads(l)['epoch'] for l in lines] == [1, 2, 3]


def test_other_parameters_never_overwrite(tiny_data, tmp_path):
    fit(VGG('vgg11', width=0.125), CrossEntropy(), tiny_data, TrainConfig(epochs=1, batch_size=100), tmp_path, 'r', progress=False)
    before = (tmp_path/'last_r.pth').read_bytes()
    with pytest.raises(CheckpointError, match=r'last_r.pth was written by a run with other parameters .*lr'):
        fit(VGG('vgg11', width=0.125), CrossEntropy(), tiny_data, TrainConfig(epochs=1, batch_size=100, lr=0.1), tmp_path, 'r', progress=False)
    assert (tmp_path/'last_r.pth').read_bytes() == before


def test_checkpoint_contents_load_weights_only(tiny_data, tmp_path):
    r = fit(VGG('vgg11', width=0.125), CrossEntropy(), tiny_data, TrainConfig(epochs=1, batch_size=100), tmp_path, 'r', progress=False,
            params={'note': 'x'})
    ck = torch.load(tmp_path/'best_r.pth', weights_only=True)
    assert {'model', 'optimizer', 'scheduler', 'epoch', 'metrics', 'params', 'method'} <= set(ck)
    assert ck['params']['run'] == {'note': 'x'} and ck['params']['train']['batch_size'] == 100
    model, _ = load_model(tmp_path/'best_r.pth')
    assert model.arch == 'vgg11' and r['best_acc'] == ck['best_acc']


def test_atomic_save_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path/'c.pth'
    save_atomic({'model': {'w': torch.ones(2)}}, p)
    real_save = torch.save
    def broken(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        Path(f).write_bytes(Path(f).read_bytes()[:10])   # half-written...
        raise OSError('disk full')                        # ...then the write fails
    monkeypatch.setattr(torch, 'save', broken)
    with pytest.raises(OSError, match='disk full'):
        save_atomic({'model': {'w': torch.zeros(2)}}, p)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(p)['model']['w'], torch.ones(2))
    assert [f.name for f in tmp_path.iterdir()] == ['c.pth']


def test_pickled_code_in_a_checkpoint_is_refused(tmp_path):
    p = tmp_path/'evil.pth'
    torch.save({'model': {}, 'payload': Path('x')}, p)   # any non-tensor object needs unpickling code
    with pytest.raises(CheckpointError, match='evil.pth: not a readable checkpoint'):
        load_checkpoint(p)


def test_corrupt_and_mismatched_checkpoints_name_the_file(tmp_path):
    p = tmp_path/'t.pth'
    save_atomic({'model': VGG('vgg16', width=0.125).state_dict(), 'model_config': dict(arch='vgg11', width=0.125, num_classes=100)}, p)
    with pytest.raises(CheckpointError, match="t.pth: its model weights do not fit this VGG"):
        load_model(p)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(CheckpointError, match='t.pth: not a readable checkpoint'):
        load_checkpoint(p)
    with pytest.raises(FileNotFoundError, match='no such checkpoint'):
        load_checkpoint(tmp_path/'missing.pth')


def test_two_process_ddp_on_the_cpu(tiny_data, tmp_path):
    "torchrun, 2 processes, gloo: both ranks end with identical weights, and rank 0 alone writes files."
    data_root = tiny_data.root
    worker = Path(__file__).with_name('ddp_worker.py')
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_port', '29517',
                        str(worker), str(data_root), str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    w0, w1 = torch.load(tmp_path/'rank0.pt'), torch.load(tmp_path/'rank1.pt')
    params = [k for k in w0 if 'running_' not in k and 'num_batches' not in k]   # BN statistics stay per rank
    assert len(params) > 10 and all(torch.equal(w0[k], w1[k]) for k in params)
    ck = load_checkpoint(tmp_path/'last_ddp.pth')
    assert ck['params']['world_size'] == 2 and ck['epoch'] == 2
    start = torch.load(tmp_path/'init.pt')
    assert not torch.equal(start['classifier.weight'], w0['classifier.weight'])   # it trained


def test_every_scalar_of_every_epoch_reaches_tensorboard(tiny_data, tmp_path):
    "Issue 22: each loss term, the learning rate, train and test accuracy and the epoch's seconds, one run per model."
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from kd_nbs.checkpoints import scalar_tag
    from kd_nbs.lm import LogitMatching
    cfg = TrainConfig(epochs=3, batch_size=50, max_batches=2)
    teacher = VGG('vgg16', width=0.125)
    r = fit(VGG('vgg11', width=0.125), LogitMatching(), tiny_data, cfg, tmp_path, 'student_lm', teacher=teacher, progress=False)
    events = EventAccumulator(str(tmp_path/'tensorboard'/'student_lm')); events.Reload()
    expected = {scalar_tag(k) for k in r['history'][0] if k not in ('epoch', 'epochs')}
    assert {'loss/train_ce', 'loss/train_kd', 'lr', 'accuracy/train', 'accuracy/test', 'loss/test_loss', 'time/epoch_s'} <= expected
    assert set(events.Tags()['scalars']) == expected
    for tag in expected:
        assert [e.step for e in events.Scalars(tag)] == [1, 2, 3], tag
    by_epoch = {e.step: e.value for e in events.Scalars('accuracy/test')}
    assert by_epoch == pytest.approx({h['epoch']: h['test_acc'] for h in r['history']})
