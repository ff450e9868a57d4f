"Issue 10's defects: each test failed before the fix."
import errno, json, subprocess, sys
from pathlib import Path
import nbformat
import pytest
import torch
from kd_nbs.suite import run_suite, SuiteError
from kd_nbs.executors import _stamp
from kd_nbs.executors import run_stage
from kd_nbs.stages import STAGES
from kd_nbs.checkpoints import save_atomic, CheckpointError
from kd_nbs.models import VGG

ROOT = Path(__file__).resolve().parents[1]
SI = next(s for s in STAGES if s.name == 'si')


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, '-c', 'from kd_nbs.cli import main; raise SystemExit(main())', *args],
                          capture_output=True, text=True, cwd=cwd, timeout=600)


def one_line_error(r, *needles):
    assert r.returncode == 1, r.stdout[-1000:] + r.stderr[-1000:]
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('kd-nbs: ') and 'Traceback' not in r.stderr, r.stderr[-2000:]
    for n in needles: assert n in err[0], err[0]


def test_changed_parameters_are_refused_up_front_then_archived_on_request(real_data_dir, tmp_path):
    kw = dict(data_dir=str(real_data_dir), reports=str(tmp_path), only=['si'], no_site=True, progress=False)
    run_dir = run_suite(name='a', preset='smoke', **kw)
    report = (run_dir/'seed0'/'02_si.ipynb').read_bytes()
    with pytest.raises(SuiteError, match=r"(?s)seed0/si \(02_si.ipynb\): lr: None then, 0.1 now.*--name.*--rerun-changed"):
        run_suite(name='a', preset='smoke', set=['si.lr=0.1'], **kw)
    assert (run_dir/'seed0'/'02_si.ipynb').read_bytes() == report           # nothing touched
    run_suite(name='a', preset='smoke', set=['si.lr=0.1'], rerun_changed=True, **kw)
    archived = list((run_dir/'seed0'/'archive').glob('*_si'))
    assert len(archived) == 1 and (archived[0]/'02_si.ipynb').read_bytes() == report
    assert (archived[0]/'best_student_si.pth').exists() and (archived[0]/'student_si_result.json').exists()
    assert json.loads(_stamp(run_dir/'seed0', SI).read_text())['params']['lr'] == 0.1


def _notebook(path: Path, *cells: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
    nb.cells = [nbformat.v4.new_code_cell("preset = 'smoke'\nout_dir = None", metadata={'tags': ['parameters']})]
    nb.cells += [nbformat.v4.new_code_cell(c) for c in cells]
    path.parent.mkdir(parents=True, exist_ok=True); nbformat.write(nb, path)
    return path.parent


@pytest.mark.parametrize('cell, why', [("raise RuntimeError('boom')", r'cell 2 .*RuntimeError: boom'),
                                       ('import os, signal; os.kill(os.getpid(), signal.SIGKILL)', 'its kernel died')])
def test_a_failed_stage_never_replaces_the_report_and_is_never_done(tmp_path, cell, why):
    nbs = _notebook(tmp_path/'nbs'/SI.notebook, cell)
    out = tmp_path/'seed0'; out.mkdir()
    (out/'02_si.ipynb').write_text('the finished report')
    _stamp(out, SI).parent.mkdir(); _stamp(out, SI).write_text('{}')
    with pytest.raises(SuiteError, match=f'stage si failed in 02_si.ipynb, {why}'):
        run_stage(SI, {'preset': 'smoke', 'out_dir': str(out)}, out, nbs, progress=False)
    assert (out/'02_si.ipynb').read_text() == 'the finished report'
    assert (out/'failed'/'02_si.ipynb').exists() and not _stamp(out, SI).exists()
    assert not list(out.glob('.*.running.ipynb'))


def test_a_full_disk_is_one_sentence(tmp_path, monkeypatch):
    import papermill as pm
    def full(*a, **k): raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(pm, 'execute_notebook', full)
    with pytest.raises(SuiteError, match=f'the disk holding {tmp_path} is full'):
        run_stage(SI, {}, tmp_path, ROOT/'nbs', progress=False)


def test_misspelled_parameters_are_refused_before_anything_runs(tmp_path):
    one_line_error(cli('run', '--preset', 'smoke', '--name', 'x', '--reports', str(tmp_path), '--set', 'lm.alpah=0.9'),
                   "stage lm (03_lm.ipynb) has no parameter 'alpah'; did you mean 'alpha'?")
    one_line_error(cli('run', '--preset', 'smoke', '--name', 'x', '--reports', str(tmp_path), '--set', 'epocs=2'),
                   "did you mean 'epochs'?")
    assert not (tmp_path/'x').exists()


@pytest.mark.parametrize('args, needle', [(['--set', 'epochs=abc'], "epochs='abc': must be a positive integer"),
                                          (['--set', 'lr=.inf'], 'lr=inf: must be a positive, finite number'),
                                          (['--seeds', '-1'], 'seeds must be non-negative integers'),
                                          (['--seeds', '0', '1', '0'], '--seeds 0 1 0: a seed is listed twice'),
                                          # issue 22: three inputs that used to run
                                          (['--sweep', 'dkd.beta=abc'], "--sweep dkd.beta='abc': 07_dkd.ipynb expects a finite number"),
                                          (['--gpus', '0,9'], '--gpus 0,9: this machine has'),      # no GPU here, or fewer than 10
                                          (['--name', '../../etc'], "--name '../../etc': must be a single folder name")])
def test_bad_values_are_refused_before_a_kernel_starts(tmp_path, args, needle):
    one_line_error(cli('run', '--preset', 'smoke', '--name', 'x', '--reports', str(tmp_path), *args), needle)
    assert not (tmp_path/'x').exists()


def test_unwritable_reports_folder_and_truncated_summary_are_one_line(tmp_path):
    (tmp_path/'file').write_text('not a folder')
    one_line_error(cli('run', '--preset', 'smoke', '--only', 'si', '--reports', str(tmp_path/'file')), 'cannot write the run folder')
    run = tmp_path/'run'; run.mkdir(); (run/'summary.json').write_text('{"config": {"na')
    one_line_error(cli('site', str(run)), 'summary.json is not valid JSON')


def test_outside_the_project_the_suggested_option_exists(tmp_path):
    r = cli('run', '--preset', 'smoke', cwd=tmp_path)
    one_line_error(r, 'pass --nbs FOLDER')
    assert '--nbs' in cli('run', '--help').stdout


def test_bench_refuses_negative_steps_no_rounds_and_a_missing_gpu():
    one_line_error(cli('bench', '--steps', '-1'), 'steps=-1: must be a positive number')
    one_line_error(cli('bench', '--rounds', '0'), 'rounds=0: must be a positive number')
    if not torch.cuda.is_available(): one_line_error(cli('bench', '--device', 'cuda'), 'no CUDA GPU is available here')


def test_a_teacher_checkpoint_is_checked_against_what_the_caller_expects(tmp_path):
    from kd_nbs.runs import setup_run, load_teacher
    run = setup_run('student', 'smoke', device='cpu', out_dir=str(tmp_path), amp=False)
    ck = dict(model=VGG('vgg19', width=0.125).state_dict(), model_config=dict(arch='vgg19', width=0.125, num_classes=100))
    save_atomic(ck, tmp_path/'best_teacher_vgg16_cifar100.pth')
    with pytest.raises(CheckpointError, match='best_teacher_vgg16_cifar100.pth holds a vgg19, not the vgg16 expected here'):
        load_teacher(run, 'vgg16')
    save_atomic({**ck, 'model_config': dict(arch='vgg16', width=0.125, num_classes=100),
                 'model': VGG('vgg16', width=0.125).state_dict()}, tmp_path/'best_teacher_vgg16_cifar100.pth')
    assert load_teacher(run, 'vgg16', verbose=True).arch == 'vgg16'          # no best_acc, no params: still loads


def test_a_diverging_run_is_refused_and_never_saved(real_data_dir, tmp_path):
    import papermill as pm
    with pytest.raises(pm.PapermillExecutionError, match='lr=inf: must be a positive, finite number'):
        pm.execute_notebook(ROOT/'nbs'/'02_si.ipynb', tmp_path/'si.ipynb', progress_bar=False,
                            parameters=dict(preset='smoke', lr=float('inf'), out_dir=str(tmp_path), data_dir=str(real_data_dir)))
    assert not list(tmp_path.glob('*.pth'))
