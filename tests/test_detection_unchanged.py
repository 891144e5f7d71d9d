"""Detection data must not change when segmentation data is added beside it.

The digests below were computed with the code on main before segmentation data existed (commit
6ac651f). They cover the synthetic generator's files and detection batches (mosaic, mixup,
copy-paste, perspective, flips, HSV, letterbox, rect, unlabeled pools, polygon rows read as boxes)
for a fixed seed: the quick-start figure and many tests depend on these bytes staying the same.
Shear is left at 0 because numpy may compute tan() with machine-specific SIMD code (1 ulp apart).
"""
import hashlib

import numpy as np
import pytest

from utils.datasets import create_dataloader
from utils.synthetic import generate

SMALL = dict(n_train=6, n_val=3, imgsz=64, seed=3, max_objects=5)
HYP = dict(mosaic=1.0, mixup=0.5, copy_paste=0.5, degrees=5.0, translate=0.1, scale=0.5, shear=0.0,
           perspective=0.0005, flipud=0.5, fliplr=0.5, hsv_h=0.015, hsv_s=0.7, hsv_v=0.4)
GENERATOR_DIGEST = 'a158904e1dd0744ddb98cae8fee65060f06aabd2d6ccce12a1241c00694ae5c0'
BATCHES_DIGEST = 'f081ea16489f1f04aecb4b13a01eaf77e5eba6edad6fe13a703cb82f466ac491'


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv('YOLOV5_DISTILL_CACHE_DIR', str(tmp_path / 'user-cache'))


def _files_digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob('*')):
        if p.is_file() and p.suffix != '.cache':
            h.update(str(p.relative_to(root)).encode() + b'\0' + p.read_bytes())
    return h.hexdigest()


def _add_polygon_rows(root):
    """Append a polygon row to every training label file: a detection set reads it as its box."""
    for i, lb in enumerate(sorted((root / 'labels' / 'train').glob('*.txt'))):
        x, y = 0.2 + 0.1 * (i % 4), 0.3 + 0.05 * (i % 3)
        with lb.open('a') as f:
            f.write(f'{i % 8} {x:.6f} {y:.6f} {x + 0.3:.6f} {y + 0.1:.6f} {x + 0.1:.6f} {y + 0.4:.6f}\n')


def _update(h, batches):
    for imgs, targets, paths, shapes in batches:
        h.update(imgs.numpy().tobytes())
        h.update(targets.numpy().astype(np.float32).tobytes())
        h.update(repr([(str(p).rsplit('/', 1)[-1], s) for p, s in zip(paths, shapes)]).encode())


def _batches_digest(root):
    train, val = str(root / 'images' / 'train'), str(root / 'images' / 'val')
    h = hashlib.sha256()
    loader, _ = create_dataloader(train, 64, 3, 32, hyp=HYP, augment=True, workers=0, shuffle=True, seed=1,
                                  nc=8)
    for _ in range(2):
        _update(h, loader)
    loader, _ = create_dataloader(train, 64, 2, 32, hyp=dict(HYP, mosaic=0.0), augment=True, workers=0,
                                  shuffle=True, seed=2, nc=8)
    _update(h, loader)
    loader, _ = create_dataloader(train, 64, 4, 32, hyp=HYP, augment=True, workers=0, shuffle=True, seed=4,
                                  nc=8, unlabeled=val)
    _update(h, loader)
    loader, _ = create_dataloader(val, 64, 2, 32, rect=True, pad=0.5, workers=0, nc=8)
    _update(h, loader)
    return h.hexdigest()


def test_detection_generator_and_batches_are_unchanged(tmp_path):
    root = tmp_path / 'syn'
    generate(root, **SMALL)
    assert _files_digest(root) == GENERATOR_DIGEST
    _add_polygon_rows(root)
    assert _batches_digest(root) == BATCHES_DIGEST
