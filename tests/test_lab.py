"JupyterLab, as `make lab` starts it: on a loopback port with a token, a notebook opened in headless Chromium."
import os, secrets, signal, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import pytest
from test_suite import _headless

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    "`make lab` on 127.0.0.1 with a random token; yields the base URL and token; stops the server and its kernels."
    port, token = _free_port(), secrets.token_hex(16)
    venv = Path(sys.prefix)
    args = f'--no-browser --ip=127.0.0.1 --port={port} --IdentityProvider.token={token} --LabApp.workspaces_dir={tmp_path/"ws"}'
    (tmp_path/'home').mkdir()
    env = {**os.environ, 'JUPYTER_RUNTIME_DIR': str(tmp_path/'runtime'), 'HOME': str(tmp_path/'home')}   # nbdev's hooks go there
    log = open(tmp_path/'lab.log', 'w')
    # -o: the test runs inside the environment already, so `make lab` must not (re)install it
    p = subprocess.Popen(['make', '-s', 'lab', f'VENV={venv}', '-o', f'{venv}/.installed', f'LAB_ARGS={args}'],
                         cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f'http://127.0.0.1:{port}'
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f'{url}/api/status?token={token}', timeout=2); break
            except OSError:
                if p.poll() is not None: pytest.fail(f'make lab exited: {(tmp_path/"lab.log").read_text()[-2000:]}')
                time.sleep(0.5)
        else: pytest.fail(f'JupyterLab did not answer on {url}: {(tmp_path/"lab.log").read_text()[-2000:]}')
        yield url, token
    finally:
        try:
            os.killpg(p.pid, signal.SIGTERM)
            try: p.wait(timeout=30)
            except subprocess.TimeoutExpired: os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError: pass                # it had exited already (the failure says why)
        log.close()


def test_jupyterlab_opens_a_notebook(lab, tmp_path):
    url, token = lab
    with pytest.raises(OSError):                   # the token is required
        urllib.request.urlopen(f'{url}/api/contents/02_si.ipynb', timeout=5)
    dom = _headless(f'{url}/lab/tree/02_si.ipynb?token={token}', tmp_path/'profile', '--virtual-time-budget=60000')
    assert 'The independent student (SI)' in dom, dom[-3000:]          # the notebook's title, rendered by JupyterLab
    assert 'Python 3 (ipykernel)' in dom                                 # with the project's kernel


def test_a_notebook_saved_in_jupyterlab_stays_clean(lab, tmp_path):
    "Issue 22: what Run All and autosave write back is the notebook's cells and tags only: no outputs, counts or metadata."
    import json
    from kd_nbs.lab import unclean
    url, token = lab
    nb = json.loads((ROOT/'nbs'/'03_lm.ipynb').read_text())
    for i, c in enumerate(nb['cells']):                        # as after Run All in JupyterLab
        if c['cell_type'] == 'code':
            c.update(execution_count=i, outputs=[{'output_type': 'execute_result', 'execution_count': i, 'metadata': {},
                                                   'data': {'text/plain': [str(i)]}}])
            c['metadata']['execution'] = {'iopub.status.busy': '2026-12-02T15:00:00Z'}
    nb['metadata']['language_info'] = {'name': 'python', 'version': '3.11.7'}
    name, saved = 'lab_save_check.ipynb', ROOT/'nbs'/'lab_save_check.ipynb'
    try:
        req = urllib.request.Request(f'{url}/api/contents/{name}?token={token}', method='PUT',
                                     data=json.dumps({'type': 'notebook', 'format': 'json', 'content': nb}).encode(),
                                     headers={'Content-Type': 'application/json'})
        urllib.request.urlopen(req, timeout=30)
        on_disk = json.loads(saved.read_text())
        assert saved not in unclean(ROOT/'nbs')                   # byte for byte what make clean-nbs would write
        assert all(c.get('outputs', []) == [] and c.get('execution_count') is None for c in on_disk['cells'])
        assert [c['metadata'] for c in on_disk['cells'] if c['metadata']] == [{'tags': ['parameters']}]   # the tags stay
        assert on_disk['cells'] == json.loads((ROOT/'nbs'/'03_lm.ipynb').read_text())['cells']        # as committed
    finally: saved.unlink(missing_ok=True)
    assert (tmp_path/'home'/'.jupyter'/'jupyter_server_config.py').read_text().count('nbdev_clean_jupyter') >= 1   # the hooks ran
