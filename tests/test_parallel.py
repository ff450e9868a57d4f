"Issue 8: the stage graph over GPU slots. Fake GPUs and fake stage notebooks, then real smoke stages killed with -9."
import json, os, signal, subprocess, sys, time
from itertools import combinations
from pathlib import Path
import nbformat
import psutil
import pytest
from kd_nbs.suite import run_suite, SuiteError
from kd_nbs.stages import STAGES
from kd_nbs.schedule import graph, Job

ROOT = Path(__file__).resolve().parents[1]
PARAMS = "preset = 'smoke'\nseed = 0\nout_dir = None\nepochs = None\ndata_dir = None\ndevice = None\narch = 'vgg16'\npart = 'all'"


def fake_notebooks(folder: Path, fail: str | None = None, sleep: float = 1.0, die: str | None = None,
                   slow: dict[str, float] | None = None, until_offered: str | None = None) -> Path:
    """A notebook for each stage of the real table that checks the models it reads exist, sleeps, writes its outputs
    and records the CUDA_VISIBLE_DEVICES and OMP_NUM_THREADS it saw, the threads offered to it while it ran, and its
    start and end times; the stage `fail` raises instead; a stage in `slow` sleeps that long, the stage
    `until_offered` only until it is offered other threads than those it started with."""
    for notebook in {s.notebook for s in STAGES}:
        body = f'''import json, os, time
from pathlib import Path
from kd_nbs.stages import STAGES
t0, out = time.time(), Path(out_dir)
stage = next(s for s in STAGES if s.notebook == {notebook!r} and all(globals()[k] == v for k, v in s.params.items()))
missing = [m for m in stage.reads if not (out/f'best_{{m}}.pth').exists()]
assert not missing, f'started before its inputs existed: {{missing}}'
if stage.name == {fail!r}: raise RuntimeError('this stage fails on purpose')
if stage.name == {die!r}: import signal; os.kill(os.getppid(), signal.SIGKILL)    # its worker dies, as if out of memory
offered, end = set(), t0 + {slow or {}!r}.get(stage.name, {sleep})
while time.time() < end:                 # asleep, but reading the threads the suite offers, as the engine does
    offer = os.environ.get('KD_NBS_THREADS_FILE')
    if offer and os.path.exists(offer): offered.add(open(offer).read().strip())
    if stage.name == {until_offered!r} and len(offered) > 1: break
    time.sleep(0.05)
for f in stage.outputs: (out/f).write_text('fake')
(out/f'{{stage.name}}.timing.json').write_text(json.dumps(dict(stage=stage.name, gpu=os.environ.get('CUDA_VISIBLE_DEVICES'),
                                                             omp=os.environ.get('OMP_NUM_THREADS'), offered=sorted(offered),
                                                             start=t0, end=time.time())))'''
        nb = nbformat.v4.new_notebook()
        nb.metadata['kernelspec'] = {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}
        nb.cells = [nbformat.v4.new_code_cell(PARAMS, metadata={'tags': ['parameters']}), nbformat.v4.new_code_cell(body)]
        folder.mkdir(parents=True, exist_ok=True); nbformat.write(nb, folder/notebook)
    return folder


def timings(run_dir: Path) -> dict[str, dict]:
    return {f'{p.parent.name}/{json.loads(p.read_text())["stage"]}': json.loads(p.read_text())
            for p in run_dir.glob('seed*/*.timing.json')}


@pytest.fixture
def fake_gpus(monkeypatch):
    "Two CUDA GPUs as the suite sees them: the fake notebooks only record the CUDA_VISIBLE_DEVICES they were given."
    import kd_nbs.suite
    monkeypatch.setattr(kd_nbs.suite, 'visible_gpus', lambda: ['0', '1'])


def test_gpus_the_machine_does_not_have_are_refused_before_anything_runs(tmp_path, fake_gpus):
    nbs = fake_notebooks(tmp_path/'nbs')
    with pytest.raises(SuiteError, match='--gpus 0,2: this machine has GPUs 0,1 only'):
        run_suite(name='x', preset='smoke', nbs=str(nbs), reports=str(tmp_path), no_site=True, gpus='0,2')
    assert not (tmp_path/'x').exists()


def test_stages_share_fake_gpus_in_dependency_order(tmp_path, capsys, fake_gpus):
    nbs = fake_notebooks(tmp_path/'nbs')
    run = run_suite(name='p', preset='smoke', seeds=(0, 1), nbs=str(nbs), reports=str(tmp_path), no_site=True, gpus='0,1', per_gpu=2)
    t = timings(run)
    assert len(t) == 2 * len(STAGES) and {r['gpu'] for r in t.values()} == {'0', '1'}
    for gpu in ('0', '1'):                     # no slot holds more than 2 stages at any instant
        spans = [(r['start'], r['end']) for r in t.values() if r['gpu'] == gpu]
        assert max(sum(s <= t0 < e for s, e in spans) for t0, _ in spans) <= 2
    deps = graph([Job(seed, s, {}) for seed in (0, 1) for s in STAGES])
    for k, ds in deps.items():                 # never before the stages it depends on have finished
        assert all(t[k]['start'] >= t[d]['end'] for d in ds), k
    independent = [(a, b) for a, b in combinations(t, 2) if a not in deps[b] and b not in deps[a]]
    assert any(t[a]['start'] < t[b]['end'] and t[b]['start'] < t[a]['end'] for a, b in independent)   # they overlap
    out = capsys.readouterr().out
    assert 'teacher_vgg16 (01_teacher.ipynb): running on gpu ' in out and 'finished in' in out
    assert (run/'progress.log').read_text().count('running on gpu') == 2 * len(STAGES)


def test_without_per_gpu_as_many_stages_share_a_gpu_as_its_memory_holds(tmp_path, monkeypatch, fake_gpus):
    import kd_nbs.suite
    monkeypatch.setattr(kd_nbs.suite, 'gpu_memory_gb', lambda: 139.8)     # an H200: 4 stages of 4 GB, the most allowed
    nbs = fake_notebooks(tmp_path/'nbs', sleep=3.0)
    t = timings(run_suite(name='g', preset='smoke', seeds=(0,), nbs=str(nbs), reports=str(tmp_path), no_site=True, gpus='0'))
    spans = [(r['start'], r['end']) for r in t.values()]
    assert len(t) == len(STAGES) and {r['gpu'] for r in t.values()} == {'0'}
    assert max(sum(s <= t0 < e for s, e in spans) for t0, _ in spans) in (3, 4)   # more than 1 or 2, never over 4


def test_a_failed_stage_stops_only_its_dependents_and_the_next_run_resumes(tmp_path, capsys):
    nbs = fake_notebooks(tmp_path/'nbs', fail='lm', sleep=0.2)
    kw = dict(seeds=(0,), nbs=str(nbs), reports=str(tmp_path), no_site=True, per_gpu=2)
    with pytest.raises(SuiteError) as e:
        run_suite(name='f', preset='smoke', **kw)
    msg = str(e.value)
    assert 'stage lm failed in 03_lm.ipynb, cell 2' in msg and 'this stage fails on purpose' in msg
    assert 'Not run, because a stage they need failed: seed0/capacity_study, seed0/color_study, seed0/kl, seed0/gradcam.' in msg
    missing = json.loads((tmp_path/'f'/'summary.json').read_text())['missing']
    assert set(missing) == {'seed0/lm', 'seed0/capacity_study', 'seed0/color_study', 'seed0/kl', 'seed0/gradcam'}
    ran = set(timings(tmp_path/'f'))
    assert ran == {f'seed0/{s.name}' for s in STAGES} - set(missing)       # all the others finished
    capsys.readouterr()
    fake_notebooks(nbs, sleep=0.2)                                           # fixed: the same command resumes
    run_suite(name='f', preset='smoke', **kw)
    out = capsys.readouterr().out
    assert out.count('done already, skipped') == len(STAGES) - len(missing)
    assert set(timings(tmp_path/'f')) == {f'seed0/{s.name}' for s in STAGES}


def _cli(*args):
    return [sys.executable, '-c', 'from kd_nbs.cli import main; raise SystemExit(main())', *args]


def test_kill_9_in_the_middle_then_the_same_command_finishes_with_the_same_results(real_data_dir, tmp_path):
    args = ['run', '--preset', 'smoke', '--reports', str(tmp_path), '--only', 'teacher_vgg16', 'si', 'lm', 'hints',
            '--data-dir', str(real_data_dir), '--no-site', '--per-gpu', '2']   # (2 slots: each stage gets half the threads)
    subprocess.run(_cli(*args, '--name', 'straight'), check=True, cwd=ROOT, capture_output=True, timeout=900)
    cmd = _cli(*args, '--name', 'killed')
    seed0 = tmp_path/'killed'/'seed0'
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600           # kill once the teacher is done and the students are running
    while not ((seed0/'.stages'/'teacher_vgg16.json').exists() and list(seed0.glob('.*.running.ipynb'))):
        assert p.poll() is None and time.time() < deadline, 'the run ended before it could be killed'
        time.sleep(0.2)
    time.sleep(2)
    below = psutil.Process(p.pid).children(recursive=True)
    os.kill(p.pid, signal.SIGKILL); p.wait()
    gone, alive = psutil.wait_procs(below, timeout=30)
    assert not alive, f'left running after kill -9: {[q.cmdline()[:3] for q in alive]}'   # workers and kernels die too
    assert not (seed0/'.stages'/'lm.json').exists() or not (seed0/'.stages'/'hints.json').exists()   # it was cut short
    assert [f.name for f in seed0.iterdir() if f.is_socket()] == []      # the killed kernels' IPC sockets lie elsewhere
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'teacher_vgg16 (01_teacher.ipynb): done already, skipped' in r.stdout
    acc = lambda run: {m: json.loads((tmp_path/run/'seed0'/f'{m}_result.json').read_text())['best_acc']
                       for m in ('teacher_vgg16_cifar100', 'student_si', 'student_lm', 'student_hints')}
    assert acc('killed') == acc('straight')


@pytest.fixture
def local_ray():
    "A local Ray head with 2 logical GPUs on this CPU machine, started and stopped by the test."
    import socket
    ray_bin = Path(sys.executable).parent/'ray'
    assert ray_bin.exists(), "Ray is not installed: pip install -e '.[ray]' (make test installs it)"
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    subprocess.run([str(ray_bin), 'start', '--head', f'--port={port}', '--num-gpus=2', '--num-cpus=4',
                    '--include-dashboard=false', '--disable-usage-stats'], check=True, capture_output=True, timeout=180)
    try: yield f'127.0.0.1:{port}'
    finally: subprocess.run([str(ray_bin), 'stop', '--force'], capture_output=True, timeout=180)


def test_ray_tasks_land_on_their_logical_gpus_in_dependency_order(local_ray, tmp_path, capsys):
    nbs = fake_notebooks(tmp_path/'nbs', sleep=0.5)
    run = run_suite(name='r', preset='smoke', seeds=(0,), nbs=str(nbs), reports=str(tmp_path), no_site=True, executor='ray',
                    address=local_ray, per_gpu=2)
    t = timings(run)
    assert len(t) == len(STAGES) and {r['gpu'] for r in t.values()} <= {'0', '1'}     # the GPU share Ray granted
    for gpu in ('0', '1'):
        spans = [(r['start'], r['end']) for r in t.values() if r['gpu'] == gpu]
        assert not spans or max(sum(s <= t0 < e for s, e in spans) for t0, _ in spans) <= 2
    deps = graph([Job(0, s, {}) for s in STAGES])
    assert all(t[k]['start'] >= t[d]['end'] for k, ds in deps.items() for d in ds)
    assert 'running on Ray' in capsys.readouterr().out


def test_a_sweep_of_two_values_runs_each_variant_apart_then_tables_and_plots_them(real_data_dir, tmp_path, capsys):
    kw = dict(seeds=(0,), data_dir=str(real_data_dir), reports=str(tmp_path), only=['teacher_vgg16', 'dkd'],
              sweep=['dkd.beta=1,8'], per_gpu=2)
    run = run_suite(name='s', preset='smoke', **kw)
    seed0 = run/'seed0'
    for beta in (1, 8):
        d = seed0/'sweep'/f'dkd@beta={beta}'
        assert (d/'best_student_dkd.pth').is_file() and (d/'07_dkd.ipynb').exists() and (d/'kl.csv').exists()
        assert json.loads((d/'.stages'/f'dkd@beta={beta}.json').read_text())['params']['beta'] == beta
        assert (d/'best_teacher_vgg16_cifar100.pth').is_symlink()             # read from the seed folder, not copied
    # no two variants (nor the plain stage) wrote the same file
    ckpts = [seed0/'best_student_dkd.pth', *(seed0/'sweep').glob('dkd@*/best_student_dkd.pth')]
    assert len({p.resolve() for p in ckpts}) == 3
    s = json.loads((run/'summary.json').read_text())
    rows = s['per_seed']['sweep']
    assert sorted(r['beta'] for r in rows) == [1, 8] and all(r['kl_T1'] > 0 and r['accuracy'] > 0 for r in rows)
    assert [r['variant'] for r in s['tables']['sweep']] == ['beta=1', 'beta=8']
    home = (run/'book'/'index.md').read_text()
    assert '## Sweeps' in home and '(fig_sweep.png)' in home and (run/'book'/'_build'/'html'/'_images'/'fig_sweep.png').exists()
    capsys.readouterr()
    run_suite(name='s', preset='smoke', **{**kw, 'no_site': True})                         # everything done: all skipped
    assert capsys.readouterr().out.count('done already, skipped') == 2 + 4


def test_gpus_with_ray_is_refused_before_anything_runs(tmp_path):
    r = subprocess.run(_cli('run', '--preset', 'smoke', '--name', 'x', '--reports', str(tmp_path), '--executor', 'ray', '--gpus', '0'),
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 1 and '--gpus is for the local executor' in r.stderr and not (tmp_path/'x').exists()


def test_a_misspelled_sweep_is_refused_before_anything_runs(tmp_path):
    r = subprocess.run(_cli('run', '--preset', 'smoke', '--name', 'x', '--reports', str(tmp_path), '--sweep', 'dkd.betta=1,2'),
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 1 and "--sweep dkd.betta: stage dkd (07_dkd.ipynb) has no parameter 'betta'; did you mean 'beta'?" in r.stderr
    assert not (tmp_path/'x').exists()


def test_a_worker_that_dies_is_reported_with_its_log(tmp_path):
    nbs = fake_notebooks(tmp_path/'nbs', die='si', sleep=0.2)
    with pytest.raises(SuiteError, match=r'(?s)stage seed0/si ended with exit code -9 .*logs/si.log'):
        run_suite(name='d', preset='smoke', seeds=(0,), nbs=str(nbs), reports=str(tmp_path), no_site=True, per_gpu=2, only=['si', 'ls'])
    assert (tmp_path/'d'/'seed0'/'ls.timing.json').exists()              # the other stage finished


def test_stages_share_the_cores_and_one_left_alone_is_offered_all(tmp_path, monkeypatch):
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    nbs = fake_notebooks(tmp_path/'nbs', sleep=0.5, slow={'ls': 60.0 if os.cpu_count() > 1 else 2.0}, until_offered='ls')   # ls outlives si, then waits
    run_suite(name='c', preset='smoke', seeds=(0,), nbs=str(nbs), reports=str(tmp_path), no_site=True, per_gpu=2, only=['si', 'ls'])
    t, cores = timings(tmp_path/'c'), os.cpu_count()
    assert t['seed0/si']['omp'] == t['seed0/ls']['omp'] == str(max(1, cores // 2))    # two at once: half the cores each
    assert t['seed0/si']['end'] < t['seed0/ls']['end']
    if cores > 1: assert str(cores) in t['seed0/ls']['offered']                     # ls, left alone: every core
    assert str(cores) not in t['seed0/si']['offered'] or cores == 1
    monkeypatch.setenv('OMP_NUM_THREADS', '1')                                      # the user's setting wins
    fake_notebooks(nbs, sleep=0.5, slow={'ls': 2.0})
    run_suite(name='u', preset='smoke', seeds=(0,), nbs=str(nbs), reports=str(tmp_path), no_site=True, per_gpu=2, only=['si', 'ls'])
    u = timings(tmp_path/'u')
    assert {r['omp'] for r in u.values()} == {'1'} and all(r['offered'] == [] for r in u.values())
