"The whole study on the smoke preset, with the real reader: every notebook through papermill, then the website."
import json, re, shutil, subprocess, sys
from pathlib import Path
from urllib.parse import unquote, urlparse
import pandas as pd
import pytest
from kd_nbs.suite import run_suite, SuiteError
from kd_nbs.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]
# derived from the stage table, as the suite and the site derive theirs
SEED_FILES = [f for s in STAGES for f in s.outputs]
MODELS = [m for s in STAGES for m in s.models]                     # the VGG study's (stages.MODELS holds the benchmark's too)
STUDENTS = [m.label for m in MODELS if m.name.startswith('student_')]
TEACHERS = [m.label for m in MODELS if m.name.startswith('teacher_')]


@pytest.fixture(scope='module')
def smoke_run(real_data_dir, tmp_path_factory):
    reports = tmp_path_factory.mktemp('reports')
    run_dir = run_suite(name='smoke', preset='smoke', seeds=(0, 1), data_dir=str(real_data_dir), reports=str(reports), progress=False)
    return run_dir


def test_every_expected_file(smoke_run):
    for seed in (0, 1):
        d = smoke_run/f'seed{seed}'
        assert [f for f in SEED_FILES if not (d/f).exists()] == []
        executed = sorted(p.name for p in d.glob('*.ipynb'))
        assert len(executed) == len(STAGES), executed   # one executed notebook per stage
        for log in (d/'logs').glob('*.log'):             # stages in local workers (2 slots on a CPU): their kernels' output
            assert 'without encryption' not in log.read_text(), log   # kernels on IPC, not plaintext TCP
    assert (smoke_run/'summary.json').exists() and (smoke_run/'summary.md').exists()


def test_every_table_has_its_rows(smoke_run):
    s = json.loads((smoke_run/'summary.json').read_text())
    t = {k: pd.DataFrame(v) for k, v in s['tables'].items()}
    assert set(t) == {'accuracy', 'kl', 'color', 'capacity', 'cam_similarity'}
    assert sorted(t['accuracy'].label) == sorted(STUDENTS + TEACHERS)                          # 3 teachers, 8 students
    assert set(t['kl'].label) == set(STUDENTS) and len(t['color']) == len(MODELS)
    assert list(t['capacity'].teacher) == ['vgg16', 'vgg19']
    assert set(t['cam_similarity'].label) == {'SI', 'LM', 'Hints', 'CRD'}
    assert all('±' in v for v in t['accuracy'].accuracy)                                     # two seeds: mean ± std
    per_seed = pd.DataFrame(s['per_seed']['kl'])
    assert sorted(per_seed.seed.unique()) == [0, 1] and per_seed.kl_T1.ge(0).all()
    acc = pd.DataFrame(s['per_seed']['accuracy'])                    # the best epoch and the last, each model and seed
    assert acc.last_accuracy.le(acc.accuracy).all() and acc.best_epoch.between(1, acc.epochs.max()).all()
    assert {'accuracy', 'last_accuracy', 'best_epoch'} <= set(t['accuracy'].columns)


def test_a_second_run_skips_everything(smoke_run, real_data_dir, capsys):
    run_suite(name='smoke', preset='smoke', seeds=(0,), data_dir=str(real_data_dir), reports=str(smoke_run.parent), no_site=True, progress=False)
    out = capsys.readouterr().out
    assert out.count('done already, skipped') == len(STAGES) and 'running' not in out


def test_failed_stage_names_notebook_and_cell_and_resume_keeps_work(real_data_dir, tmp_path, capfd):
    seed0 = tmp_path/'f'/'seed0'; seed0.mkdir(parents=True)
    junk = seed0/'best_teacher_vgg16_cifar100.pth'; junk.write_bytes(b'not a checkpoint')   # lm's teacher, as far as names go
    with pytest.raises(SuiteError, match=r'stage lm failed in 03_lm.ipynb, cell \d+ .*ValueError: T=-1'):
        run_suite(name='f', preset='smoke', data_dir=str(real_data_dir), reports=str(tmp_path), only=['si', 'lm'], per_gpu=1,
                  set=['lm.T=-1'], no_site=True, progress=False)   # in this process: its kernels' output here
    assert (seed0/'best_student_si.pth').exists() and (seed0/'failed'/'03_lm.ipynb').exists()
    assert not (seed0/'03_lm.ipynb').exists()                          # a failed execution is no report
    assert not (seed0/'best_student_lm.pth').exists()
    out, err = capfd.readouterr()                                        # the kernels' own output included
    assert 'si (02_si.ipynb): running' in out and 'without encryption' not in err   # kernels on IPC, not plaintext TCP
    with pytest.raises(SuiteError, match=r'best_teacher_vgg16_cifar100.pth: not a readable checkpoint'):
        run_suite(name='f', preset='smoke', data_dir=str(real_data_dir), reports=str(tmp_path), only=['si', 'lm'], no_site=True, progress=False)
    assert 'si (02_si.ipynb): done already, skipped' in capfd.readouterr().out
    junk.unlink()                                                        # no teacher at all, and none in this run: refused up front
    with pytest.raises(SuiteError, match=r'(?s)seed0/lm \(03_lm.ipynb\) needs Teacher VGG-16 .*Nothing was run. Add teacher_vgg16 to --only'):
        run_suite(name='f', preset='smoke', data_dir=str(real_data_dir), reports=str(tmp_path), only=['si', 'lm'], no_site=True, progress=False)
    assert 'running' not in capfd.readouterr().out


def test_bad_parameter_fails_before_training(real_data_dir, tmp_path):
    import papermill as pm
    with pytest.raises(pm.PapermillExecutionError, match=r'epochs=0: must be a positive integer'):
        pm.execute_notebook(ROOT/'nbs'/'02_si.ipynb', tmp_path/'si.ipynb', progress_bar=False,
                            parameters=dict(preset='smoke', epochs=0, out_dir=str(tmp_path), data_dir=str(real_data_dir)))
    assert not list(tmp_path.glob('*.pth'))


def test_unknown_parameter_fails_before_training(real_data_dir, tmp_path):
    "papermill only logs a name the notebook does not declare; the notebook refuses it, before any training."
    import papermill as pm
    with pytest.raises(pm.PapermillExecutionError, match=r"-p epochz: not a parameter of this notebook \(did you mean 'epochs'\?\)"):
        pm.execute_notebook(ROOT/'nbs'/'02_si.ipynb', tmp_path/'si.ipynb', progress_bar=False,
                            parameters=dict(preset='smoke', epochz=3, out_dir=str(tmp_path), data_dir=str(real_data_dir)))
    assert not list(tmp_path.glob('*.pth'))


def test_a_second_suite_on_the_same_folder_is_refused(tmp_path):
    from kd_nbs.suite import run_lock
    with run_lock(tmp_path/'busy'):
        r = subprocess.run([sys.executable, '-c', 'from kd_nbs.cli import main; raise SystemExit(main())', 'run', '--preset', 'smoke', '--name', 'busy',
                            '--reports', str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and 'is in use by another suite' in r.stderr


def _chromium():
    for name in ('chromium', 'chromium-browser', 'google-chrome'):
        if shutil.which(name): return shutil.which(name)
    pytest.fail('headless Chromium is needed for the website test: apt-get install chromium')


def _headless(url: str, profile: Path, *flags: str) -> str:
    "The DOM of `url` after headless Chromium has loaded it (and run its scripts)."
    r = subprocess.run([_chromium(), '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
                        '--disable-background-networking', '--disable-component-update', '--disable-sync',
                        f'--user-data-dir={profile}', *flags, '--dump-dom', url], capture_output=True, text=True, timeout=180)
    assert r.stdout, r.stderr[-2000:]
    return r.stdout


def _loaded_images(page: Path, tmp_path: Path) -> list:
    "[src, naturalWidth] of every image of `page`, once loaded in Chromium (0: the browser could not show it)."
    probe = tmp_path/'probe.html'
    probe.write_text(f'''<iframe id="f" src="{page.as_uri()}" width="1200" height="900"></iframe><pre id="out">pending</pre>
<script>document.getElementById('f').onload = function () {{
  const imgs = Array.from(this.contentDocument.images);
  Promise.all(imgs.map(i => i.complete ? null : new Promise(r => {{ i.onload = i.onerror = r; }}))).then(() => {{
    document.getElementById('out').textContent = JSON.stringify(imgs.map(i => [i.getAttribute('src'), i.naturalWidth]));
  }});
}};</script>''')
    dom = _headless(probe.as_uri(), tmp_path/'profile2', '--allow-file-access-from-files', '--virtual-time-budget=30000')
    return json.loads(re.search(r'<pre id="out">(.*?)</pre>', dom, re.S).group(1))


def test_website_home_page_in_headless_chromium(smoke_run, tmp_path):
    index = smoke_run/'book'/'_build'/'html'/'index.html'
    dom = _headless(index.as_uri(), tmp_path/'profile')
    assert '<table' in dom and 'Accuracy of every model' in dom
    assert all(f'>{s}<' in dom for s in ('SI', 'CRD', 'DKD', 'Hints')), 'results table rows missing'
    # the figures: every one the home page promises, each loaded by the browser (a broken image has naturalWidth 0)
    images = dict(_loaded_images(index, tmp_path))
    for name in ('fig_accuracy', 'fig_kl', 'fig_color', 'fig_curves', 'distillation_grad_cam_comparison'):
        src = [s for s in images if name in s]
        assert src and images[src[0]] > 100, (name, images)
    # the findings: one entry per finding of the seed document, each with a verdict decided from the numbers
    findings = re.search(r'<section id="findings">(.*?)</section>', dom, re.S)
    assert findings, 'no findings section'
    entries = re.findall(r'<li>(.*?)</li>', findings.group(1), re.S)
    assert len(entries) == 5 and all(re.search(r'<em>(not supported|supported|not resolved)\.</em>', e) for e in entries), entries
    assert 'Published numbers, side by side' in dom and '70.78' in dom and '+4.32' in dom
    links = {urlparse(h).path for h in re.findall(r'href="([^"#]+)', dom) if not urlparse(h).scheme} - {''}
    assert any('11_gradcam' in h for h in links) and any('05_crd' in h for h in links)
    toc = (smoke_run/'book'/'_toc.yml').read_text()                   # the colour study's two pages, training first
    assert toc.index('09_color_train') < toc.index('09_color_study') < toc.index('10_capacity_train') < toc.index('10_capacity_study')
    broken = [h for h in links if not (index.parent/unquote(h)).exists()]
    assert broken == []
    pages = {p.name: p.read_text() for p in (index.parent/'notebooks').glob('*.html')}
    assert len(pages) == len(STAGES)
    shown = {n: re.sub(r'<[^>]+>', '', t) for n, t in {**pages, 'index.html': index.read_text()}.items()}   # text a reader sees
    assert [n for n, t in shown.items() if '#|' in t or re.search(r'\w+Warning: ', t) or 'fastcore.test' in t] == []
    assert [n for n, t in pages.items() if 'widget-view+json' in t] == []        # no stateless progress-bar widgets
    train_page, study_page = shown['09_color_train.html'], shown['09_color_study.html']   # each part's own cells only
    assert 'CRD.between' in train_page and 'jitter_images(data' not in train_page
    assert 'jitter_images(data' in study_page and 'CRD.between' not in study_page
    titles = {n: re.search(r'<title>(.*?)</title>', t).group(1) for n, t in pages.items()}
    assert 'Teacher VGG-19' in titles['01_teacher_vgg19.html'] and 'Teacher VGG-16' in titles['01_teacher_vgg16.html']
    assert len({t for t in titles.values()}) == len(titles)                                         # all distinct
