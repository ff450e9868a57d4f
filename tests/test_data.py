import pickle
import numpy as np
import pytest
import torch
from kd_nbs.data import (load_cifar100, read_split, write_synthetic_cifar100, ensure_cifar100, CIFARFormatError,
                         DatasetNotFoundError, CIFAR100_SHA256, BatchAugment, jitter_images)


def test_synthetic_roundtrip(tmp_path):
    write_synthetic_cifar100(tmp_path, per_class=(3, 1))
    d = load_cifar100(tmp_path, strict=False, verbose=False)
    assert d.train_x.shape == (300, 3, 32, 32) and d.train_x.dtype == torch.uint8
    assert d.test_y.tolist() == list(range(100)) and len(d.classes) == 100


def test_strict_balance_check_names_the_file(tmp_path):
    write_synthetic_cifar100(tmp_path)
    with pytest.raises(CIFARFormatError, match=r'cifar-100-python/train: expected 50000 images, 500 per class'):
        load_cifar100(tmp_path)


@pytest.mark.parametrize('content, message', [
    (b'', 'not a readable CIFAR-100 pickle'),
    (pickle.dumps({'data': np.zeros((4, 3072), np.uint8)})[:-20], 'not a readable CIFAR-100 pickle'),
    (pickle.dumps([1, 2]), 'expected a dict'),
    (pickle.dumps({'data': np.zeros((4, 100), np.uint8), 'fine_labels': [0] * 4}), r"should be uint8 \[N, 3072\]"),
    (pickle.dumps({'data': np.zeros((4, 3072), np.uint8), 'fine_labels': [0, 1, 2, 100]}), 'must lie in 0..99'),
    (pickle.dumps({'data': np.zeros((4, 3072), np.uint8), 'fine_labels': [0, 1]}), 'should be 4 integers'),
    (pickle.dumps({'fine_labels': [0]}), "missing \\['data'\\]"),
])
def test_bad_files_give_clear_errors(tmp_path, content, message):
    p = tmp_path/'train'; p.write_bytes(content)
    with pytest.raises(CIFARFormatError, match=message) as e:
        read_split(p)
    assert str(p) in str(e.value)


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self): return (print, ('pwned',))
    p = tmp_path/'train'; p.write_bytes(pickle.dumps({'data': Evil()}))
    with pytest.raises(CIFARFormatError, match='refusing to unpickle builtins.print'):
        read_split(p)


def test_offline_error_says_where_and_what(tmp_path, monkeypatch):
    monkeypatch.delenv('KD_NBS_DATA', raising=False)
    with pytest.raises(DatasetNotFoundError) as e:
        ensure_cifar100(tmp_path/'nowhere', url='http://127.0.0.1:9/cifar-100-python.tar.gz')
    msg = str(e.value)
    assert str(tmp_path/'nowhere') in msg and 'cifar-100-python' in msg and 'KD_NBS_DATA' in msg and 'failed' in msg


def test_env_variable_picks_the_folder(tmp_path, monkeypatch):
    write_synthetic_cifar100(tmp_path)
    monkeypatch.setenv('KD_NBS_DATA', str(tmp_path))
    assert load_cifar100(strict=False, verbose=False).root == tmp_path.resolve()


def test_real_cifar100(real_data_dir, capsys):
    d = load_cifar100(real_data_dir)
    assert 'matches the official download' in capsys.readouterr().out
    assert d.sha256 == CIFAR100_SHA256
    assert d.train_y[:10].tolist() == [19, 29, 0, 11, 1, 86, 90, 28, 23, 31]
    assert d.test_y[:5].tolist() == [49, 33, 72, 51, 71]
    assert torch.bincount(d.train_y).eq(500).all() and torch.bincount(d.test_y).eq(100).all()
    assert d.classes[0] == 'apple' and d.classes[-1] == 'worm'
    mean = (d.train_x.float() / 255).mean((0, 2, 3))
    assert torch.allclose(mean, torch.tensor([0.50707516, 0.48654887, 0.44091784]), atol=1e-5)


def test_augmentation_keeps_pixels_and_is_seeded(real_data_dir):
    x = load_cifar100(real_data_dir, verbose=False).test_x[:64]
    aug = BatchAugment()
    a = aug(x, torch.Generator().manual_seed(1)); b = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape and a.dtype == torch.uint8
    # a crop of the zero-padded image: the centre pixel of each output comes from its own input image
    assert not torch.equal(a, x)
    j1, j2 = jitter_images(x, seed=0), jitter_images(x, seed=0)
    assert torch.equal(j1, j2) and (j1.float() - x.float()).abs().mean() > 5


def _serve(folder):
    "A loopback HTTP server for `folder`, in a thread."
    import functools, http.server, threading
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def test_download_checks_md5_and_unpacks(tmp_path):
    import hashlib, tarfile
    from kd_nbs.data import download_cifar100, has_cifar100
    write_synthetic_cifar100(tmp_path/'src')
    archive = tmp_path/'srv'/'cifar-100-python.tar.gz'; archive.parent.mkdir()
    with tarfile.open(archive, 'w:gz') as t: t.add(tmp_path/'src'/'cifar-100-python', arcname='cifar-100-python')
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    httpd = _serve(archive.parent)
    url = f'http://127.0.0.1:{httpd.server_port}/cifar-100-python.tar.gz'
    try:
        with pytest.raises(DatasetNotFoundError, match='md5'):
            download_cifar100(tmp_path/'bad', url, md5='0' * 32)
        assert not has_cifar100(tmp_path/'bad') and not list((tmp_path/'bad').iterdir())   # nothing half-done left
        download_cifar100(tmp_path/'good', url, md5=md5)
        assert has_cifar100(tmp_path/'good')
        assert load_cifar100(tmp_path/'good', strict=False, verbose=False).train_x.shape == (500, 3, 32, 32)
    finally:
        httpd.shutdown()
