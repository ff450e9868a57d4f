"Issue 21: the published numbers file parses, every cell names its source, and its networks and methods are ours or named as not ours."
import csv
from pathlib import Path
from kd_nbs.registry import REGISTRY
from kd_nbs.zoo import ARCHS

FILE = Path(__file__).resolve().parents[1]/'benchmarks'/'published'/'cifar100.csv'
NOT_OURS = {'cc', 'ab', 'ft', 'fsp'}          # methods of RepDistiller's table kd-nbs does not carry
SOURCES = ('RepDistiller README', 'mdistiller README')


def rows():
    with open(FILE, newline='') as f: return list(csv.DictReader(f))


def test_every_cell_parses_and_names_its_source():
    rs = rows()
    assert len(rs) == 15 * 7 - 1 + 2 * 6          # RepDistiller's 15 rows of 7 pairs (one cell not run), mdistiller's 2 of 6
    for r in rs:
        assert 50 < float(r['top1']) < 100, r
        assert r['source'].startswith(SOURCES), r
        assert r['teacher'] in ARCHS and r['student'] in ARCHS, r
        assert r['method'] in REGISTRY or r['method'] in NOT_OURS | {'teacher', 'student'}, r


def test_one_cell_a_method_pair_and_source_and_one_teacher_accuracy_a_pair():
    rs = rows()
    keys = [(r['method'], r['teacher'], r['student'], r['source']) for r in rs]
    assert len(keys) == len(set(keys))
    teachers = {}
    for r in rs:
        if r['method'] == 'teacher': teachers.setdefault(r['teacher'], set()).add(r['top1'])
    assert all(len(v) == 1 for v in teachers.values()), teachers
    # the KD row both READMEs print agrees cell by cell
    kd = {}
    for r in rs:
        if r['method'] == 'lm': kd.setdefault((r['teacher'], r['student']), set()).add(r['top1'])
    assert all(len(v) == 1 for v in kd.values()), kd
