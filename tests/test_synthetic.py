"""The embedded synthetic dataset: deterministic, valid, generated on first use."""
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils.dataset_yaml import check_dataset
from utils.datasets import create_dataloader
from utils.label_cache import DatasetError, read_labels
from utils.synthetic import CLASS_NAMES, ensure_synthetic, generate

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(n_train=6, n_val=3, imgsz=96, seed=7)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv('YOLOV5_DISTILL_CACHE_DIR', str(tmp_path / 'user-cache'))


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    generate(tmp_path / 'a', **SMALL)
    generate(tmp_path / 'b', **SMALL)
    a, b = _files(tmp_path / 'a'), _files(tmp_path / 'b')
    assert len(a) == 2 * (6 + 3) + 2 and a == b
    generate(tmp_path / 'c', **dict(SMALL, seed=8))
    c = _files(tmp_path / 'c')
    assert c[Path('images/train/000000.png')] != a[Path('images/train/000000.png')]


def test_images_and_labels_are_valid_and_varied(tmp_path):
    generate(tmp_path / 'd', n_train=30, n_val=2, imgsz=128, seed=0)
    boxes = []
    for lb in sorted((tmp_path / 'd' / 'labels' / 'train').glob('*.txt')):
        labels, problems = read_labels(lb, len(CLASS_NAMES))
        assert not problems and len(labels) >= 1
        boxes.append(labels)
        im = cv2.imread(str(tmp_path / 'd' / 'images' / 'train' / (lb.stem + '.png')))
        assert im.shape == (128, 128, 3)
    boxes = np.concatenate(boxes)
    assert set(boxes[:, 0].astype(int)) == set(range(len(CLASS_NAMES)))  # every class appears
    sides = boxes[:, 3:5].max(1) * 128
    assert sides.min() < 12 and sides.max() > 35  # small and large objects


def test_ensure_generates_once_and_regenerates_on_new_options(tmp_path):
    root = tmp_path / 'syn'
    ensure_synthetic(root, **SMALL)
    first = (root / 'images' / 'train' / '000000.png').stat().st_mtime_ns
    ensure_synthetic(root, **SMALL)  # same options: untouched
    assert (root / 'images' / 'train' / '000000.png').stat().st_mtime_ns == first
    ensure_synthetic(root, **dict(SMALL, n_train=4))
    assert len(list((root / 'images' / 'train').glob('*.png'))) == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]  # no temporary folders left


def test_ensure_refuses_foreign_folder_and_bad_options(tmp_path):
    (tmp_path / 'mine').mkdir()
    (tmp_path / 'mine' / 'precious.txt').write_text('keep me')
    with pytest.raises(DatasetError, match='refusing'):
        ensure_synthetic(tmp_path / 'mine', **SMALL)
    assert (tmp_path / 'mine' / 'precious.txt').read_text() == 'keep me'
    with pytest.raises(DatasetError, match='unknown synthetic options'):
        ensure_synthetic(tmp_path / 'x', n_trian=3)
    with pytest.raises(DatasetError, match='must list the generator classes'):
        ensure_synthetic(tmp_path / 'x', names=['a', 'b'], **SMALL)


def test_check_dataset_generates_from_synthetic_key(tmp_path):
    y = tmp_path / 'cfg' / 'syn.yaml'
    y.parent.mkdir()
    bundled = (ROOT / 'data' / 'synthetic.yaml').read_text()
    small = bundled.replace('n_train: 400', 'n_train: 5').replace('n_val: 100', 'n_val: 2') \
                   .replace('imgsz: 160', 'imgsz: 64')
    assert small != bundled
    y.write_text(small)
    d = check_dataset(y)
    assert d['path'] == str(tmp_path / 'datasets' / 'synthetic') and d['names'] == CLASS_NAMES
    loader, ds = create_dataloader(d['train'], 64, 5, 32, augment=True, workers=0, nc=d['nc'])
    imgs, targets, _, _ = next(iter(loader))
    assert imgs.shape == (5, 3, 64, 64) and len(targets) > 0 and ds.scan['corrupt'] == 0


def test_cli_writes_a_usable_dataset(tmp_path):
    out = tmp_path / 'cli'
    r = subprocess.run([sys.executable, '-m', 'utils.synthetic', '--out', str(out), '--n-train', '3', '--n-val', '2',
                        '--imgsz', '64'], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    d = check_dataset(out / 'dataset.yaml')
    assert d['nc'] == len(CLASS_NAMES) and len(list(Path(d['val']).glob('*.png'))) == 2
    r = subprocess.run([sys.executable, '-m', 'utils.synthetic', '--out', str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and 'not empty' in r.stderr
