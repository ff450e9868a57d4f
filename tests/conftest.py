import os
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get('KD_NBS_DATA') or ROOT.parent/'shared'/'data')

@pytest.fixture(scope='session')
def real_data_dir():
    "The real CIFAR-100 (../shared/data here and in CI); tests that need it are skipped elsewhere."
    if not (REAL/'cifar-100-python'/'train').exists(): pytest.skip(f'the real CIFAR-100 is not in {REAL}')
    return REAL

@pytest.fixture
def tiny_data(tmp_path):
    from kd_nbs.data import write_synthetic_cifar100, load_cifar100
    return load_cifar100(write_synthetic_cifar100(tmp_path/'data', per_class=(2, 1)), strict=False, verbose=False)
