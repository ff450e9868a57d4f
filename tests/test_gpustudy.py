"Issue 20: the suite on a GPU machine that has only torch (a bundle of wheels), make gpu-study, its archive and the website rebuilt from it."
import importlib.metadata as md
import json, os, subprocess, sys, tarfile, venv
from pathlib import Path
import pytest
from kd_nbs.gpustudy import BUNDLE_ROOTS, PACK_LIMIT, build_bundle, canonical, closure, image_packages

ROOT = Path(__file__).resolve().parents[1]
IMAGE_CORE = ('torch', 'torchvision', 'numpy', 'pandas', 'matplotlib', 'tqdm', 'pillow')   # what issue 20 names


def bare_env(folder: Path, python_version: str) -> Path:
    """A venv that holds only what the GPU image holds of what the suite needs: the core packages, the image's packages the
    bundle relies on, and what they require, each linked from this environment (no download, no Jupyter)."""
    _, used = closure(BUNDLE_ROOTS, image_packages(), python_version)
    keep, _ = closure([*IMAGE_CORE, *used], set(), python_version)
    venv.create(folder, with_pip=True)
    site = next(folder.glob('lib/python*/site-packages'))
    for name in keep:
        try: dist = md.distribution(name)
        except md.PackageNotFoundError: continue            # needed only on another Python (aiohttp on 3.12)
        for top in {f.parts[0] for f in dist.files or [] if f.parts and f.parts[0] != '..'}:
            src = Path(dist.locate_file(top))
            if src.exists() and not (site/top).exists(): (site/top).symlink_to(src)
    return folder/'bin'/'python'


@pytest.fixture(scope='module')
def study(tmp_path_factory):
    "make gpu-study at the smoke preset with the bare environment's python, on synthetic data: (the run, the archive, its output)."
    tmp = tmp_path_factory.mktemp('gpustudy')
    pyv = f'{sys.version_info.major}.{sys.version_info.minor}'
    bundle = build_bundle(pyv, tmp/'bundle')                 # what `make device-bundle` builds, for this Python
    python = bare_env(tmp/'bare', pyv)
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'VIRTUAL_ENV', 'KD_NBS_DATA')}
    env.update(KD_NBS_REPORTS=str(tmp/'reports'), TMPDIR=str(tmp), PYTHONUNBUFFERED='1')
    no_jupyter = subprocess.run([str(python), '-c', 'import papermill'], capture_output=True, env=env)
    assert no_jupyter.returncode != 0, 'the bare environment must not have papermill of its own'
    r = subprocess.run(['make', '-s', 'gpu-study', f'PYTHON={python}', f'GPU_OUT={tmp/"out"}', 'KD_NBS_DATA=',
                        f'GPU_STUDY_ARGS=--preset smoke --name gs --bundle {bundle}'],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return tmp/'reports'/'gs', tmp/'out'/'gpu-study-gs.tar.gz', r.stdout


def test_the_bundle_holds_one_version_of_each_and_nothing_the_image_has(study):
    manifest = json.loads((study[0].parents[1]/'bundle'/'MANIFEST.json').read_text())
    names = [canonical(w.split('-')[0]) for w in manifest['wheels']]
    assert len(names) == len(set(names)) and not set(names) & image_packages()
    assert {'papermill', 'ipykernel', 'pyzmq', 'fastcore', 'grad-cam'} <= set(names)


def test_gpu_study_runs_the_suite_where_jupyter_was_never_installed(study):
    run, archive, out = study
    assert 'installing the bundle' in out and 'SYNTHETIC CIFAR-shaped random images' in out
    summary = json.loads((run/'summary.json').read_text())
    assert summary['missing'] == {} and len(summary['per_seed']['accuracy']) == 11   # every model trained
    assert all(d.startswith('synthetic') for d in summary['data']) and summary['data']
    assert 'gpu-study took' in out and 'min inside the 10-minute limit' in out


def test_the_archive_is_small_and_has_no_checkpoint(study):
    run, archive, _ = study
    assert archive.stat().st_size <= PACK_LIMIT
    with tarfile.open(archive) as tar: names = tar.getnames()
    assert not [n for n in names if n.endswith('.pth')] and 'gs/summary.json' in names and 'gs/progress.log' in names
    assert any(n.endswith('11_gradcam.ipynb') for n in names) and any(n.endswith('student_si_metrics.jsonl') for n in names)


def test_the_website_rebuilds_from_the_unpacked_archive_alone(study, tmp_path):
    _, archive, _ = study
    with tarfile.open(archive) as tar: tar.extractall(tmp_path, filter='data')
    assert not list((tmp_path/'gs').rglob('*.pth'))
    r = subprocess.run([sys.executable, '-m', 'kd_nbs.cli', 'site', str(tmp_path/'gs')], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    html = tmp_path/'gs'/'book'/'_build'/'html'
    home = (html/'index.html').read_text()
    assert 'Synthetic data.' in home and 'Findings' in home and 'width 0.125, 1 epoch, seed 0' in home
    for fig in ('fig_accuracy.png', 'fig_curves.png', 'distillation_grad_cam_comparison.png'):
        assert fig in home and list(html.rglob(fig)), fig
    from kd_nbs.stages import STAGES
    pages = {p.name for p in (html/'notebooks').glob('*.html')}
    assert pages == {s.report.replace('.ipynb', '.html') for s in STAGES}, pages
