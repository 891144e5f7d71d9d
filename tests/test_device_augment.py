"""Device augmentation (utils/sample_plan.py + utils/device_augment.py) against the CPU path it replaces."""
import csv
import sys

import cv2
import numpy as np
import pytest
import torch

import train
from conftest import ROOT, tiny_train_args
from test_augment import _write_colour_dataset
from utils.augment import augment_hsv as cpu_hsv
from utils.augment import draw_hsv_gains, transform_boxes
from utils.cli import UserError
from utils.datasets import LoadImagesAndLabels, collate_fn, create_dataloader, default_hyp
from utils.device_augment import DeviceAugment, augment_hsv, warp
from utils.device_augment import transform_boxes as device_boxes
from utils.sample_plan import collate_plans

IMGSZ = 64
sys.path.insert(0, str(ROOT / 'benchmarks'))
import bench_augment  # noqa: E402


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv('YOLOV5_DISTILL_CACHE_DIR', str(tmp_path / 'cache'))


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    return _write_colour_dataset(tmp_path_factory.mktemp('colour'), n_images=6)


def _datasets(images, seed=3, **hyp):
    h = {**default_hyp(), **hyp}
    cpu = LoadImagesAndLabels(str(images), IMGSZ, augment=True, hyp=h, seed=seed)
    dev = LoadImagesAndLabels(str(images), IMGSZ, augment=True, hyp=h, seed=seed, device_augment=True)
    return cpu, dev


def _both(cpu, dev, keys):
    """(imgs, targets) of the CPU path and of the device path for the same sample keys."""
    a = collate_fn([cpu[k] for k in keys])
    b = DeviceAugment('cpu')(collate_plans([dev[k] for k in keys]))
    return a[:2], b


@pytest.mark.parametrize('hyp, mosaic', [
    ({}, True),  # hyp.scratch-low: mosaic, scale, translate, HSV, left-right flips
    ({'degrees': 30, 'shear': 10, 'mosaic': 0.5}, True),  # rotated boxes cut by the border; mixed batches
    ({'degrees': 10, 'perspective': 0.001, 'flipud': 0.5}, True),
    ({'degrees': 20}, False),  # letterboxed images only (close_mosaic)
])
def test_same_plan_gives_the_cpu_path_batch(images, hyp, mosaic):
    cpu, dev = _datasets(images, **hyp)
    keys = [(i, epoch, mosaic) for epoch in range(3) for i in range(6)]
    (imgs_cpu, t_cpu), (imgs_dev, t_dev) = _both(cpu, dev, keys)
    assert imgs_dev.dtype == torch.uint8 and imgs_dev.shape == imgs_cpu.shape
    diff = (imgs_cpu.int() - imgs_dev.int()).abs()
    # OpenCV interpolates in 1/32-pixel fixed point and its HSV uses lookup tables: rounding, not content
    assert diff.max() <= 2 and diff.float().mean() < 0.05, (diff.max(), diff.float().mean())
    assert t_dev.shape == t_cpu.shape and len(t_cpu) > 20
    torch.testing.assert_close(t_dev, t_cpu, atol=1e-4, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_gives_the_cpu_result(images):
    _, dev = _datasets(images, degrees=20, perspective=0.0005)
    batch = collate_plans([dev[(i, e, True)] for e in range(2) for i in range(6)])
    imgs, targets = DeviceAugment('cpu')(batch)
    imgs_cuda, targets_cuda = DeviceAugment('cuda')(batch)
    assert imgs_cuda.is_cuda and (imgs_cuda.cpu().int() - imgs.int()).abs().max() <= 1
    torch.testing.assert_close(targets_cuda.cpu(), targets, atol=1e-4, rtol=0)


def test_rect_batches_match(tmp_path):
    """--rect: letterboxed to each batch's shape (not square), no mosaic."""
    rng = np.random.default_rng(2)
    (tmp_path / 'images').mkdir()
    (tmp_path / 'labels').mkdir()
    for i, (w, h) in enumerate([(96, 48), (96, 60), (80, 40), (90, 50)]):
        cv2.imwrite(str(tmp_path / 'images' / f'{i}.png'), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        (tmp_path / 'labels' / f'{i}.txt').write_text('0 0.5 0.5 0.4 0.5\n1 0.3 0.6 0.2 0.3\n')
    kw = dict(augment=True, hyp={**default_hyp(), 'degrees': 5}, rect=True, batch_size=4, seed=1)
    cpu = LoadImagesAndLabels(str(tmp_path / 'images'), 128, **kw)  # 128 x 96 batches
    dev = LoadImagesAndLabels(str(tmp_path / 'images'), 128, device_augment=True, **kw)
    (imgs_cpu, t_cpu), (imgs_dev, t_dev) = _both(cpu, dev, [(i, 0, False) for i in range(4)])
    assert imgs_dev.shape == imgs_cpu.shape and imgs_cpu.shape[2] != imgs_cpu.shape[3]
    assert (imgs_cpu.int() - imgs_dev.int()).abs().max() <= 2
    torch.testing.assert_close(t_dev, t_cpu, atol=1e-4, rtol=0)


def test_distribution_over_many_draws_matches(images):
    """Independent draws (different seeds) of both paths: box sizes and pixel statistics agree."""
    cpu, _ = _datasets(images, seed=0, degrees=15)
    _, dev = _datasets(images, seed=1, degrees=15)
    keys = [(i, epoch, True) for epoch in range(16) for i in range(6)]
    (imgs_cpu, t_cpu), (imgs_dev, t_dev) = _both(cpu, dev, keys)
    assert abs(len(t_dev) - len(t_cpu)) < 0.15 * len(t_cpu)
    for col in (4, 5):  # normalised box width, height
        assert abs(t_dev[:, col].mean() - t_cpu[:, col].mean()) < 0.1 * t_cpu[:, col].mean()
        assert abs(t_dev[:, col].std() - t_cpu[:, col].std()) < 0.15 * t_cpu[:, col].std()
    for c in range(3):
        a, b = imgs_cpu[:, c].float(), imgs_dev[:, c].float()
        assert abs(a.mean() - b.mean()) < 4 and abs(a.std() - b.std()) < 4


def test_box_clipping_matches_sutherland_hodgman():
    """Rotated / perspective boxes cut by the image border: same enclosing box as utils/augment.py."""
    rng = np.random.default_rng(0)
    boxes = np.sort(rng.uniform(-20, 84, (200, 2, 2)), 1).transpose(0, 2, 1).reshape(-1, 4)[:, [0, 2, 1, 3]]
    for angle, p in ((37.0, 0.0), (-80.0, 0.002), (0.0, 0.0)):  # the last: axis-aligned
        M = np.eye(3)
        M[:2] = cv2.getRotationMatrix2D((32, 32), angle, 1.2)
        M[2, :2] = p, -p
        expected = transform_boxes(boxes, M, p, 64, 64)
        got = device_boxes(torch.from_numpy(boxes), torch.from_numpy(M).expand(len(boxes), 3, 3), 64, 64)
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)


def test_warp_and_hsv_match_opencv():
    rng = np.random.default_rng(1)
    im = cv2.GaussianBlur(rng.integers(0, 256, (72, 80, 3), dtype=np.uint8), (5, 5), 0)  # BGR
    rgb = torch.from_numpy(im[..., ::-1].copy()).permute(2, 0, 1)[None]
    M = np.eye(3)
    M[:2] = cv2.getRotationMatrix2D((40, 36), 25, 0.8)
    M[2, :2] = 1e-3, 0
    ref = cv2.warpPerspective(im, M, (64, 56), borderValue=(114,) * 3)[..., ::-1]
    got = warp(rgb, torch.from_numpy(M)[None], (56, 64))[0].permute(1, 2, 0).numpy()
    assert np.abs(got.astype(int) - ref).max() <= 2
    gains = draw_hsv_gains(np.random.default_rng(7), 0.015, 0.7, 0.4)  # what augment_hsv draws from this seed
    ref = cpu_hsv(im.copy(), np.random.default_rng(7), 0.015, 0.7, 0.4)[..., ::-1]
    got = augment_hsv(rgb, torch.tensor(gains)[None])[0].permute(1, 2, 0).numpy()
    d = np.abs(got.astype(int) - ref)
    assert d.max() <= 1 and d.mean() < 0.35  # HSV -> BGR rounds differently across OpenCV versions: +-1


def test_loader_batches_keep_their_layout_whatever_the_workers(images):
    epochs = []
    for workers in (0, 2):  # plans are collated and pickled in the workers, and drawn from the same seeds
        loader, dataset = create_dataloader(str(images), IMGSZ, 3, 32, augment=True, workers=workers,
                                            shuffle=True, device_augment=True)
        augment = DeviceAugment('cpu', dataset.hyp, IMGSZ)
        batches = list(loader)
        assert all(len(b) == 4 and all(str(p).endswith('.png') for p in b[2]) for b in batches)  # paths kept
        epochs.append([augment(b) for b in batches])
    for (imgs, targets), (imgs2, targets2) in zip(*epochs):
        assert imgs.shape == (3, 3, IMGSZ, IMGSZ) and imgs.dtype == torch.uint8 and torch.equal(imgs, imgs2)
        assert targets.shape[1] == 6 and set(targets[:, 0].long().tolist()) <= set(range(3))
        assert ((targets[:, 2:] >= 0) & (targets[:, 2:] <= 1)).all() and torch.equal(targets, targets2)


@pytest.mark.parametrize('kw, match', [({'masks': True}, 'segmentation'), ({'hyp': {'mixup': 0.5}}, 'mixup')])
def test_unsupported_augmentation_is_a_user_error(images, kw, match):
    with pytest.raises(UserError, match=match):
        create_dataloader(str(images), IMGSZ, 4, 32, augment=True, workers=0, device_augment=True, **kw)


def test_bench_augment_runs(tiny_data):
    rows = bench_augment.main(['--data', str(tiny_data), '--imgsz', '64', '--batch', '4', '--workers', '0',
                               '--epochs', '1', '--samples', '2'])
    assert [r[0].split(' (')[0] for r in rows] == ['CPU path', 'device path']
    assert all(ms > 0 and rate > 0 for _, ms, rate, _ in rows) and rows[1][3] > 0


def test_train_with_device_augment_runs_and_logs(tiny_data, tmp_path):
    results = train.main(train.parse_opt(tiny_train_args(tiny_data, tmp_path, 'exp', epochs=1,
                                                         extra=['--device-augment'])))
    assert len(results) == 7 and all(np.isfinite(results))
    with open(tmp_path / 'exp' / 'results.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    losses = [float(v) for k, v in rows[0].items() if k.strip().startswith('train/')]
    assert losses and all(np.isfinite(losses)) and sum(losses) > 0
