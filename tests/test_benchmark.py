"Issue 21: the benchmark study. Its grid derives from the pairs and the registry, wrong names are refused before anything runs, and its smoke run trains every cell of a pair and writes the summary and the website page."
import json
import subprocess
import sys
import pytest
from kd_nbs.registry import METHODS, REGISTRY
from kd_nbs.schedule import SuiteError
from kd_nbs.stages import BENCH_METHODS, BENCH_STAGES, PAIRS, bench_name, study_stages
from kd_nbs.suite import run_suite


def test_the_grid_is_the_pairs_times_the_registry():
    assert list(BENCH_METHODS) == [m.name for m in METHODS if m.needs_teacher]      # a new method joins without a new stage
    teachers = {t for t, _ in PAIRS}
    students = {s for _, s in PAIRS}
    assert len(BENCH_STAGES) == len(teachers) + len(students) + len(PAIRS) * len(BENCH_METHODS)
    for s in BENCH_STAGES:
        assert s.notebook == '19_benchmark.ipynb' and len(s.models) == 1 and s.models[0].name == s.name
        if s.reads: assert s.params['method'] in REGISTRY and s.reads == (bench_name(s.params['teacher'], role='teacher'),)
    names = [s.name for s in study_stages('benchmark', ['vgg13:vgg8'], ['dkd', 'lm'])]
    assert names == ['benchmark_teacher_vgg13', 'benchmark_vgg8', 'benchmark_vgg8_dkd_from_vgg13', 'benchmark_vgg8_lm_from_vgg13']


@pytest.mark.parametrize('fields, message', [
    (dict(pairs=['vgg13:vgg11']), "--pairs vgg13:vgg11: not a pair of the benchmark; did you mean 'vgg13:vgg8'?"),
    (dict(pairs=['resnet32x4:resnet8x4'], methods=['at', 'crdd']), "--methods crdd: not a distillation method; did you mean 'crd'?"),
    (dict(methods=['si']), '--methods si: not a distillation method'),
    (dict(set=['color.hue=0.2']), "--set color.…: the benchmark study has no stage 'color'"),
    (dict(pairs=['vgg13:vgg8'], sweep=['dkd.beta=1,2']), 'sweep its cells one by one: benchmark_vgg8_dkd_from_vgg13'),
])
def test_a_wrong_pair_or_method_is_refused_before_anything_runs(tmp_path, fields, message):
    with pytest.raises(SuiteError, match=message.replace('?', r'\?').replace('.', r'\.')):
        run_suite(study='benchmark', preset='smoke', reports=str(tmp_path), name='b', **fields)
    assert not (tmp_path/'b').exists()


def test_the_command_line_refuses_a_wrong_study_and_a_pair_without_the_benchmark(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, '-m', 'kd_nbs.cli', 'run', '--reports', str(tmp_path), *a],
                                    capture_output=True, text=True)
    r = run('--study', 'bench')
    assert r.returncode != 0 and "invalid choice: 'bench'" in r.stderr
    r = run('--pairs', 'vgg13:vgg8')
    assert r.returncode != 0 and 'add --study benchmark' in r.stderr + r.stdout
    assert not any(tmp_path.iterdir())


DKD_CELL = 'benchmark_resnet8x4_dkd_from_resnet32x4'


@pytest.fixture(scope='module')
def bench_smoke(real_data_dir, tmp_path_factory):
    """The benchmark's smoke run: one pair, its teacher, its student alone and every method's student; KD's T set for the
    method's cells, DKD's beta swept on its cell."""
    reports = tmp_path_factory.mktemp('bench')
    return run_suite(study='benchmark', preset='smoke', pairs=['resnet32x4:resnet8x4'], name='b', data_dir=str(real_data_dir),
                     reports=str(reports), progress=False, set=['lm.T=2'], sweep=[f'{DKD_CELL}.beta=1,2'])


def test_the_smoke_benchmark_trains_every_cell(bench_smoke):
    seed = bench_smoke/'seed0'
    for s in study_stages('benchmark', ['resnet32x4:resnet8x4']):
        assert (seed/f'best_{s.name}.pth').exists() and (seed/s.report).exists(), s.name
        r = json.loads((seed/f'{s.name}_result.json').read_text())
        assert r['params']['run']['arch'] == s.models[0].arch and r['params']['run'].get('teacher') == s.params.get('teacher')
        assert r['last_acc'] is not None
    dkd = json.loads((seed/'benchmark_resnet8x4_dkd_from_resnet32x4_result.json').read_text())['params']['run']
    assert dkd['warmup'] == 1                                               # the preset's ramp, filled in for None
    lm = json.loads((seed/'benchmark_resnet8x4_lm_from_resnet32x4_result.json').read_text())['params']['run']
    assert lm['alpha'] == 0.1                                               # RepDistiller's -r 0.1 -a 0.9
    assert lm['T'] == 2                                                     # --set lm.T=2 reached the method's cell


def test_a_cell_is_swept_like_a_stage_of_the_study(bench_smoke):
    seed = bench_smoke/'seed0'
    for beta in (1, 2):
        variant = seed/'sweep'/f'{DKD_CELL}@beta={beta}'
        run = json.loads((variant/f'{DKD_CELL}_result.json').read_text())['params']['run']
        assert (run['beta'], run['warmup'], run['teacher']) == (beta, 1, 'resnet32x4')   # into the cell's hparams, the rest kept
        assert not (seed/'sweep'/f'kl@{DKD_CELL}@beta={beta}').exists()              # the KL notebook is the VGG study's
    sweep = json.loads((bench_smoke/'summary.json').read_text())['tables']['sweep']
    assert sorted((r['stage'], r['variant']) for r in sweep) == [(DKD_CELL, 'beta=1'), (DKD_CELL, 'beta=2')]


def test_the_summary_holds_the_table_at_the_best_and_the_last_epoch(bench_smoke):
    tables = json.loads((bench_smoke/'summary.json').read_text())['tables']
    for key in ('benchmark', 'benchmark_last'):
        rows = {r['method']: r['resnet32x4 → resnet8x4'] for r in tables[key]}
        assert list(rows) == ['teacher', 'student', *(REGISTRY[m].label for m in BENCH_METHODS)]
        assert all(v != '—' for v in rows.values())                        # every cell ran
        assert ' · 79.42 (' in rows['teacher'] and ' · 76.32 (' in rows['DKD'] and ' · ' not in rows['DIST']


def test_the_website_shows_the_benchmark(bench_smoke):
    page = (bench_smoke/'book'/'_build'/'html'/'index.html').read_text()
    assert 'The CIFAR-100 distillation benchmark' in page and 'Ours beside the published numbers' in page
    assert 'At its last epoch' in page and 'resnet32x4 → resnet8x4' in page and 'Findings' not in page
    assert "gain over the student alone" in page and (bench_smoke/'book'/'fig_benchmark.png').stat().st_size > 5_000
