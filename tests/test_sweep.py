"""scripts/sweep.sh: the grid it plans (dry run), skipping finished runs, and a real tiny sweep (slow)."""
import csv
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'scripts' / 'sweep.sh'


def sweep(tmp_path, **env):
    full = {**os.environ, 'PROJECT': str(tmp_path / 'sweep'), **{k: str(v) for k, v in env.items()}}
    return subprocess.run(['bash', str(SCRIPT)], cwd=tmp_path, env=full, capture_output=True, text=True)


def commands(stdout):
    """run name -> its command line, from the '== name' / '   cmd' pairs the script prints."""
    lines = stdout.splitlines()
    return {lines[i][3:].split(':')[0]: lines[i + 1].strip()
            for i in range(len(lines) - 1) if lines[i].startswith('== ') and lines[i + 1].startswith('   ')}


@pytest.fixture
def teacher(tmp_path):
    t = tmp_path / 'teach' / 'weights' / 'best.pt'
    t.parent.mkdir(parents=True)
    t.write_bytes(b'')
    return t


def test_dry_run_plans_the_grid(tmp_path, teacher):
    r = sweep(tmp_path, DRY_RUN=1, TEACHERS=teacher, STUDENTS='yolov5n.yaml', METHODS='output kl feature-cwd-std',
              DWEIGHTS='1 10', SEEDS='0 1', EPOCHS=3, IMGSZ=64, BATCH=4, DEVICE='cpu', EXTRA='--workers 0')
    assert r.returncode == 0, r.stderr
    cmds = commands(r.stdout)
    kd = [n for n in cmds if n.startswith('yolov5n_') and 'baseline' not in n]
    assert sorted(kd) == sorted(f'yolov5n_{m}_dw{w}_teach' for m in ('output', 'kl', 'feature-cwd-std')
                                for w in (1, 10))
    for seed in (0, 1):
        base = cmds[f'yolov5n_baseline_seed{seed}']
        assert '/train.py ' in base and f'--seed {seed}' in base and '--t_weights' not in base
    kl = cmds['yolov5n_kl_dw10_teach'].split()
    assert 'train_distillation.py' in kl[1] and '--no-d_output' in kl and '--d_kl' in kl
    assert kl[kl.index('--d_alpha') + 1] == '10' and '--d_weight' not in kl
    feat = cmds['yolov5n_feature-cwd-std_dw1_teach'].split()
    assert feat[feat.index('--d_feature') + 1] == 'cwd' and '--d_standardize' in feat and '--no-d_output' not in feat
    assert feat[feat.index('--d_weight') + 1] == '1'
    # every run has exactly its named terms: KL, on by default in train_distillation.py, is off unless named
    assert '--no-d_kl' in feat and '--no-d_kl' in cmds['yolov5n_output_dw1_teach'].split()
    for c in cmds.values():
        if 'compare.py' in c:
            continue
        s = c.split()
        assert s[s.index('--epochs') + 1] == '3' and s[s.index('--imgsz') + 1] == '64'
        assert s[s.index('--batch-size') + 1] == '4' and '--workers' in s and s[s.index('--device') + 1] == 'cpu'
        assert s[s.index('--project') + 1] == str(tmp_path / 'sweep') and '--exist-ok' in s
    compare = cmds['compare']
    assert '--plot' in compare and str(tmp_path / 'sweep') in compare and str(teacher.parents[1]) not in compare


def test_finished_runs_are_skipped(tmp_path, teacher):
    done = tmp_path / 'sweep' / 'yolov5n_output_dw1_teach'
    partial = tmp_path / 'sweep' / 'yolov5n_baseline_seed0'
    for d, rows in ((done, 2), (partial, 1)):
        d.mkdir(parents=True)
        (d / 'results.csv').write_text('epoch,x\n' + ''.join(f'{i},0\n' for i in range(rows)))
    r = sweep(tmp_path, DRY_RUN=1, TEACHERS=teacher, METHODS='output', DWEIGHTS='1', EPOCHS=2)
    assert r.returncode == 0, r.stderr
    assert '== yolov5n_output_dw1_teach: done (2 epochs), skipping' in r.stdout
    assert '== yolov5n_baseline_seed0\n' in r.stdout  # 1 of 2 epochs and no last.pt: trained again
    (partial / 'weights').mkdir()
    (partial / 'weights' / 'last.pt').write_bytes(b'')
    r = sweep(tmp_path, DRY_RUN=1, TEACHERS=teacher, METHODS='output', DWEIGHTS='1', EPOCHS=2)
    assert '--resume sweep/yolov5n_baseline_seed0/weights/last.pt' in r.stdout.replace(str(tmp_path) + '/', '')


@pytest.mark.parametrize('env, match', [
    (dict(METHODS='outptu'), "unknown method 'outptu'"),
    (dict(EPOCHS='two'), 'EPOCHS must be a positive integer'),
    (dict(TEACHERS='missing.pt'), "teacher 'missing.pt' not found"),
])
def test_bad_settings(tmp_path, teacher, env, match):
    r = sweep(tmp_path, **{'TEACHERS': teacher, **env})
    assert r.returncode == 2 and match in r.stderr
    assert not (tmp_path / 'sweep').exists()  # nothing trained


@pytest.mark.slow
def test_tiny_sweep_end_to_end(tmp_path):
    """2 methods x 2 weights + 1 baseline, 1 epoch at 64 px on a 16-image synthetic set."""
    from models.checkpoint import model_checkpoint_fields, save_checkpoint
    from models.yolo import Model
    from utils.synthetic import CLASS_NAMES

    data = tmp_path / 'tiny.yaml'
    data.write_text(f'path: {tmp_path / "ds"}\ntrain: images/train\nval: images/val\n'
                    f'names: {dict(enumerate(CLASS_NAMES))}\n'
                    'synthetic: {n_train: 16, n_val: 8, imgsz: 64, seed: 0, max_objects: 4}\n')
    teacher = Model('yolov5n.yaml', nc=len(CLASS_NAMES))
    teacher.names = list(CLASS_NAMES)
    t = save_checkpoint(tmp_path / 'teacher_n.pt', model_checkpoint_fields(teacher))
    env = dict(TEACHERS=t, STUDENTS='yolov5n.yaml', METHODS='output kl', DWEIGHTS='1 10', DATA=data,
               EPOCHS=1, IMGSZ=64, BATCH=8, DEVICE='cpu', EXTRA='--workers 0 --noplots')
    r = sweep(tmp_path, **env)
    assert r.returncode == 0, r.stdout + r.stderr
    project = tmp_path / 'sweep'
    names = {'yolov5n_baseline_seed0'} | {f'yolov5n_{m}_dw{w}_teacher_n' for m in ('output', 'kl') for w in (1, 10)}
    for n in names:
        assert len((project / n / 'results.csv').read_text().strip().splitlines()) == 2, n
    with open(project / 'compare.csv') as f:
        rows = {row['run']: row for row in csv.DictReader(f)}
    assert set(rows) == names
    assert rows['yolov5n_kl_dw10_teacher_n']['method'] == 'kl' and rows['yolov5n_baseline_seed0']['teacher'] == '-'
    assert all(rows[n]['vs baseline'] != 'no baseline' for n in names)
    assert (project / 'compare.png').stat().st_size > 10_000 and (project / 'compare.md').is_file()
    again = sweep(tmp_path, **env)  # everything finished: only the comparison runs again
    assert again.returncode == 0 and again.stdout.count('skipping') == len(names)
