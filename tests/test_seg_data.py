"""Segmentation data (YOLOv5 v7.0): polygon labels, their augmentation, masks and batches."""
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from utils.augment import copy_paste_polygons, mosaic4_polygons, polygon_box, random_perspective_polygons
from utils.dataset_yaml import check_dataset
from utils.datasets import LoadImagesAndLabels, collate_fn, create_dataloader
from utils.label_cache import DatasetError, parse_label_row, read_label_file, read_labels
from utils.polygon_masks import instance_masks, overlap_mask, sample_masks
from utils.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared'
PALETTE = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255), (255, 0, 255), (255, 255, 0)]
IMG = 128
GEOMETRY = dict(mosaic=1.0, mixup=0.0, copy_paste=0.0, degrees=10.0, translate=0.1, scale=0.3, shear=3.0,
                perspective=0.0005, flipud=0.5, fliplr=0.5, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv('YOLOV5_DISTILL_CACHE_DIR', str(tmp_path / 'user-cache'))


def _polygon_dataset(root, n_images=4, seed=0):
    """Grey images with a triangle and a pentagon each, one unique colour per object (class = colour)."""
    rng = np.random.default_rng(seed)
    (root / 'images').mkdir(parents=True)
    (root / 'labels').mkdir()
    for i in range(n_images):
        img = np.full((IMG, IMG, 3), 114, np.uint8)
        rows = []
        for j, sides in enumerate((3, 5)):
            c = (2 * i + j) % len(PALETTE)
            centre = np.array([32 + 64 * j, rng.uniform(36, IMG - 36)])
            ang = np.linspace(0, 2 * np.pi, sides, endpoint=False) + rng.uniform(0, np.pi)
            poly = centre + np.stack([np.cos(ang), np.sin(ang)], 1) * rng.uniform(18, 28)
            cv2.fillPoly(img, [np.round(poly).astype(np.int32)], PALETTE[c])
            rows.append(f'{c} ' + ' '.join(f'{v:.6f}' for v in (poly / IMG).reshape(-1)) + '\n')
        cv2.imwrite(str(root / 'images' / f'{i}.png'), img)
        (root / 'labels' / f'{i}.txt').write_text(''.join(rows))
    return root / 'images'


# ---------------------------------------------------------------- labels
def test_polygon_row_gives_its_box_and_points():
    row, poly = parse_label_row('3 0.1 0.2 0.5 0.2 0.3 0.6'.split())
    np.testing.assert_allclose(row, [3, 0.3, 0.4, 0.4, 0.4])
    np.testing.assert_allclose(poly, [[0.1, 0.2], [0.5, 0.2], [0.3, 0.6]], atol=1e-7)
    assert parse_label_row('3 0.5 0.5 0.2 0.2'.split())[1] is None  # a box row has no polygon


@pytest.mark.parametrize('row, reason', [
    ('0 0.1 0.1', 'polygon with fewer than 3 points'),
    ('0 0.1 0.1 0.2 0.2 0.3', 'odd number of coordinates'),
    ('0 0.1 0.1 0.2 0.2 0.3 0.3 0.4', 'odd number of coordinates'),
    ('0 0.1 0.1 1.2 0.2 0.3 0.4', 'coordinates outside 0..1'),
    ('0 0.1 0.1 0.2 0.2 -0.3 0.4', 'coordinates outside 0..1'),
    ('0', 'no coordinates'),
])
def test_bad_polygons_are_refused_with_their_reason(row, reason):
    with pytest.raises(ValueError, match=reason):
        parse_label_row(row.split())


def _seg_file_with_bad_rows(root):
    img_dir = _polygon_dataset(root, n_images=2)
    lb = root / 'labels' / '0.txt'
    good = lb.read_text()
    lb.write_text(good + '1 0.1 0.1 0.2 0.2 0.3\n2 0.1 0.1\n3 0.1 0.1 1.5 0.1 0.3 0.3\n4 0.2 0.2 0.4 0.2 0.3 0.5 0.9\n')
    return img_dir, good


def test_bad_polygons_are_reported_once_per_file_and_skipped(tmp_path, caplog):
    img_dir, good = _seg_file_with_bad_rows(tmp_path / 'd')
    with caplog.at_level(logging.INFO, logger='yolov5'):
        ds = LoadImagesAndLabels(str(img_dir), img_size=IMG, masks=True)
    assert ds.scan['dropped_rows'] == 4 and '4 label rows dropped' in caplog.text
    lines = [r.message for r in caplog.records if '0.txt' in r.message]
    assert len(lines) == 1  # one line for the file, every reason with its line numbers
    for reason in ('odd number of coordinates (lines 3, 6)', 'polygon with fewer than 3 points (line 4)',
                   'coordinates outside 0..1 (line 5)'):
        assert reason in lines[0], reason
    assert len(ds.labels[0]) == len(ds.segments[0]) == 2
    for row, poly in zip(ds.labels[0], ds.segments[0]):  # the box is the polygon's box
        x1, y1 = poly.min(0)
        x2, y2 = poly.max(0)
        np.testing.assert_allclose(row[1:], [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], atol=1e-6)


def test_polygons_survive_the_label_cache(tmp_path):
    img_dir, _ = _seg_file_with_bad_rows(tmp_path / 'd')
    first = LoadImagesAndLabels(str(img_dir), img_size=IMG, masks=True)
    again = LoadImagesAndLabels(str(img_dir), img_size=IMG, masks=True)
    assert not first.from_cache and again.from_cache and again.scan['dropped_rows'] == 4
    for a, b in zip(first.segments, again.segments):
        assert len(a) == len(b) and all(np.array_equal(p, q) for p, q in zip(a, b))
    with np.load(again.cache_path, allow_pickle=False) as z:  # plain arrays only
        assert str(z['version']).endswith('-3') and z['points'].dtype == np.float32
        assert z['point_counts'].tolist() == [len(p) for s in first.segments for p in s]


def test_box_only_row_in_a_segmentation_dataset_is_an_error(tmp_path):
    img_dir = _polygon_dataset(tmp_path / 'd', n_images=3)
    with (tmp_path / 'd' / 'labels' / '1.txt').open('a') as f:
        f.write('0 0.5 0.5 0.2 0.2\n')
    with pytest.raises(DatasetError, match=r'box-only label rows .*/1\.txt; every row needs a polygon') as e:
        LoadImagesAndLabels(str(img_dir), img_size=IMG, masks=True)
    assert 'detection model' in str(e.value) and '\n' not in str(e.value)
    ds = LoadImagesAndLabels(str(img_dir), img_size=IMG)  # detection reads polygons and boxes alike
    assert [len(lb) for lb in ds.labels] == [2, 3, 2] and ds.segments is None


# ---------------------------------------------------------------- transforms
def test_perspective_box_is_the_box_of_the_warped_polygon_inside_the_image():
    rng = np.random.default_rng(0)
    im = np.full((64, 64, 3), 114, np.uint8)
    polys = [np.array([[5, 5], [60, 8], [30, 58]], float), np.array([[50, 50], [63, 50], [63, 63]], float)]
    labels = np.array([[0, 5, 5, 60, 58], [1, 50, 50, 63, 63]], np.float32)
    for _ in range(20):
        _, lb, out = random_perspective_polygons(im, labels.copy(), [p.copy() for p in polys], rng, degrees=30,
                                                 translate=0.3, scale=0.5, shear=5)
        assert len(lb) == len(out) and all(len(p) == 1000 for p in out)  # resampled as v7.0
        for row, p in zip(lb, out):
            np.testing.assert_allclose(row[1:], polygon_box(p, 64, 64))
            assert (row[1:] >= 0).all() and (row[1:] <= 64).all()


def test_mosaic_moves_polygons_with_their_boxes():
    rng = np.random.default_rng(1)
    tri = np.array([[0.2, 0.2], [0.8, 0.3], [0.5, 0.9]], np.float32)
    samples = [(np.full((64, 64, 3), 40 * i, np.uint8), np.array([[i, 0.5, 0.55, 0.6, 0.7]], np.float32))
               for i in range(4)]
    img4, labels4, polys4 = mosaic4_polygons(samples, [[tri]] * 4, 64, rng)
    assert img4.shape == (128, 128, 3) and len(labels4) == len(polys4) == 4
    for row, p in zip(labels4, polys4):
        np.testing.assert_allclose(row[1:], np.concatenate((p.min(0), p.max(0))), atol=1e-4)


def test_copy_paste_mirrors_the_object_inside_its_polygon():
    im = np.full((64, 128, 3), 114, np.uint8)
    tri = np.array([[10, 10], [50, 12], [20, 50]], np.float32)
    cv2.fillPoly(im, [tri.astype(np.int32)], (0, 0, 255))
    labels = np.array([[2, 10, 10, 50, 50]], np.float32)
    out, lb, polys = copy_paste_polygons(im.copy(), labels, [tri], np.random.default_rng(0), p=1.0)
    assert len(lb) == len(polys) == 2
    np.testing.assert_allclose(lb[1], [2, 78, 10, 118, 50])
    np.testing.assert_allclose(polys[1], [[118, 10], [78, 12], [108, 50]])
    copy = instance_masks(im.shape[:2], polys[1:], downsample_ratio=1)[0]
    kernel = np.ones((3, 3), np.uint8)  # the pasted pixels are mirrored, the polygon filled: 1 px apart at edges
    assert (out[cv2.erode(copy, kernel) > 0] == (0, 0, 255)).all()  # the copy's pixels are the object's
    assert (out[:, 64:][cv2.dilate(copy, kernel)[:, 64:] == 0] == 114).all()  # nothing else on the right
    assert np.array_equal(out[:, :64], im[:, :64])  # the original is untouched


def _colour_mask(img_rgb, colour_bgr, r=4):
    """Where the object of this colour shows, at 1/r resolution (half-covered mask pixels count)."""
    full = (np.abs(img_rgb.astype(np.int16) - np.array(colour_bgr[::-1])).max(-1) < 60).astype(np.float32)
    return cv2.resize(full, (img_rgb.shape[1] // r, img_rgb.shape[0] // r), interpolation=cv2.INTER_AREA) >= 0.5


def _check_masks_follow_objects(img, targets, masks):
    """Each instance mask lies inside its box and covers its object's pixels; returns how many were checked."""
    img = img.permute(1, 2, 0).numpy()
    h, w = img.shape[:2]
    checked = 0
    for row, m in zip(targets.numpy(), masks.numpy().astype(bool)):
        c, xc, yc, bw, bh = row[1:]
        ys, xs = np.nonzero(m)
        if len(xs):  # mask pixels (centres at +0.5, 4 px each) fall inside the box, give or take one pixel
            assert xs.min() + 0.5 >= (xc - bw / 2) * w / 4 - 1 and xs.max() + 0.5 <= (xc + bw / 2) * w / 4 + 1
            assert ys.min() + 0.5 >= (yc - bh / 2) * h / 4 - 1 and ys.max() + 0.5 <= (yc + bh / 2) * h / 4 + 1
        if bw * w >= 16 and bh * h >= 16:  # large enough that 1/4-resolution edges cannot dominate
            obj = _colour_mask(img, PALETTE[int(c)])
            iou = (obj & m).sum() / max((obj | m).sum(), 1)
            assert iou > 0.6, f'class {int(c)}: mask IoU {iou:.2f} with its object'
            checked += 1
    return checked


@pytest.mark.parametrize('mosaic', [1.0, 0.0])
def test_masks_and_boxes_follow_objects_through_augmentation(tmp_path, mosaic):
    img_dir = _polygon_dataset(tmp_path / 'd')
    ds = LoadImagesAndLabels(str(img_dir), img_size=IMG, augment=True, hyp=dict(GEOMETRY, mosaic=mosaic),
                             masks=True, overlap=False)
    checked = 0
    for key in [(i, epoch, True) for epoch in range(4) for i in range(ds.n)]:
        img, targets, _, _, masks = ds[key]
        assert masks.shape == (len(targets), IMG // 4, IMG // 4) and masks.dtype == torch.uint8
        checked += _check_masks_follow_objects(img, targets, masks)
    assert checked >= 20


def test_rect_letterboxed_masks_follow_objects(tmp_path):
    img_dir = _polygon_dataset(tmp_path / 'd')
    loader, _ = create_dataloader(str(img_dir), 96, 2, 32, rect=True, workers=0, masks=True, overlap=False)
    checked = 0
    for imgs, targets, _, shapes, masks in loader:
        assert masks.shape[1:] == (imgs.shape[2] // 4, imgs.shape[3] // 4)
        for i in range(len(imgs)):
            checked += _check_masks_follow_objects(imgs[i], targets[targets[:, 0] == i], masks[targets[:, 0] == i])
    assert checked == 8


# ---------------------------------------------------------------- mask layouts
def test_overlap_map_draws_small_instances_on_top_and_reorders_labels():
    big = np.array([[0, 0], [63, 0], [63, 63], [0, 63]], float)
    small = np.array([[8, 8], [24, 8], [24, 24], [8, 24]], float)
    labels = np.array([[5, 0, 0, 1, 1], [7, 0, 0, 1, 1]], np.float32)  # small first in label order
    out, masks = sample_masks((64, 64), labels, [small, big], overlap=True)
    assert masks.shape == (1, 16, 16) and masks.dtype == np.int32
    assert out[:, 0].tolist() == [7, 5]  # largest first
    assert masks[0, 3, 3] == 2 and masks[0, 12, 12] == 1  # the small one on top of the big one
    index_map, order = overlap_mask((64, 64), [small, big])
    assert order.tolist() == [1, 0] and np.array_equal(index_map, masks[0])
    out, per_row = sample_masks((64, 64), labels, [small, big], overlap=False)
    assert per_row.shape == (2, 16, 16) and per_row.dtype == np.uint8 and out[:, 0].tolist() == [5, 7]
    assert per_row[0].sum() == 16 and per_row[1].sum() == 256  # 16x16 px square -> 4x4 mask pixels
    _, empty = sample_masks((64, 32), np.zeros((0, 5), np.float32), [], overlap=True)
    assert empty.shape == (1, 16, 8) and not empty.any()


def test_overlap_and_per_instance_layouts_describe_the_same_sample(tmp_path):
    img_dir = _polygon_dataset(tmp_path / 'd')
    hyp = dict(GEOMETRY, copy_paste=0.5, mixup=0.5)
    per_row = LoadImagesAndLabels(str(img_dir), img_size=IMG, augment=True, hyp=hyp, masks=True, overlap=False)
    overlap = LoadImagesAndLabels(str(img_dir), img_size=IMG, augment=True, hyp=hyp, masks=True)
    for key in [(i, epoch, True) for epoch in range(3) for i in range(per_row.n)]:
        img_a, t_a, _, _, m_a = per_row[key]
        img_b, t_b, _, _, m_b = overlap[key]
        assert torch.equal(img_a, img_b) and m_b.shape == (1, IMG // 4, IMG // 4)
        order = np.argsort(-m_a.sum((1, 2)).numpy(), kind='stable')
        assert torch.equal(t_b, t_a[order])  # rows sorted by mask area, largest first
        expected = torch.zeros_like(m_b[0])
        for i, j in enumerate(order):
            expected[m_a[j] > 0] = i + 1
        assert torch.equal(m_b[0], expected)


@pytest.mark.parametrize('overlap', [True, False])
def test_collate_and_unlabeled_images_get_empty_masks(tmp_path, overlap):
    img_dir = _polygon_dataset(tmp_path / 'd', n_images=2)
    unl = _polygon_dataset(tmp_path / 'u', n_images=2, seed=1)
    loader, ds = create_dataloader(str(img_dir), IMG, 4, 32, hyp=GEOMETRY, augment=True, workers=0, masks=True,
                                   overlap=overlap, unlabeled=str(unl))
    assert ds.n_unlabeled == 2 and ds.segments[2:] == [[], []]
    imgs, targets, paths, shapes, masks = next(iter(loader))
    assert imgs.shape == (4, 3, IMG, IMG) and targets.shape[1] == 6
    if overlap:
        assert masks.shape == (4, IMG // 4, IMG // 4) and masks.dtype == torch.int32
        for i in range(4):  # image i's map indexes its own target rows, 1-based
            assert masks[i].max() <= (targets[:, 0] == i).sum()
    else:
        assert masks.shape == (len(targets), IMG // 4, IMG // 4) and masks.dtype == torch.uint8
    for i in np.flatnonzero(ds.is_unlabeled):  # an unlabeled sample: no rows, an empty mask
        _, t, _, _, m = ds[(int(i), 0, True)]
        assert len(t) == 0 and not m.any() and len(m) == (1 if overlap else 0)
    batch = collate_fn([ds[(0, 0, False)], ds[(2, 0, False)]])
    assert len(batch) == 5 and batch[1][:, 0].unique().tolist() == [0]
    assert len(collate_fn([(imgs[0], targets[:0].clone(), 'a', None)])) == 4  # detection samples: 4-tuple


# ---------------------------------------------------------------- synthetic-seg
def test_synthetic_polygons_redraw_the_detection_set_objects(tmp_path):
    opts = dict(n_train=4, n_val=2, imgsz=96, seed=5)
    generate(tmp_path / 'det', **opts)
    generate(tmp_path / 'seg', **opts, polygons=True)
    for split in ('train', 'val'):
        for im in sorted((tmp_path / 'det' / 'images' / split).glob('*.png')):
            assert im.read_bytes() == (tmp_path / 'seg' / 'images' / split / im.name).read_bytes()
            det, _ = read_labels(tmp_path / 'det' / 'labels' / split / (im.stem + '.txt'))
            seg, polys, problems = read_label_file(tmp_path / 'seg' / 'labels' / split / (im.stem + '.txt'))
            assert not problems and all(p is not None for p in polys) and len(seg) == len(det)
            # the polygon runs through the boundary pixels' centres: its box is one pixel smaller
            np.testing.assert_allclose(seg[:, :3], det[:, :3], atol=1e-5)
            np.testing.assert_allclose(seg[:, 3:], det[:, 3:] - 1 / 96, atol=1e-5)
    d = {'path': str(tmp_path / 'seg'), 'train': 'images/train', 'val': 'images/val', 'names': list(range(8))}
    _, ds = create_dataloader(check_dataset(d)['train'], 96, 2, 32, workers=0, masks=True, overlap=False)
    _, targets, _, _, masks = ds[0]
    assert masks.shape == (len(targets), 24, 24) and all(m.any() for m in masks)


def test_synthetic_seg_yaml_is_the_detection_set_with_polygons():
    det = yaml.safe_load((ROOT / 'data' / 'synthetic.yaml').read_text())
    seg = yaml.safe_load((ROOT / 'data' / 'synthetic-seg.yaml').read_text())
    assert seg['synthetic'] == dict(det['synthetic'], polygons=True) and seg['names'] == det['names']
    assert seg['path'] == '../datasets/synthetic-seg' != det['path']


def test_synthetic_polygons_option_is_validated(tmp_path):
    with pytest.raises(DatasetError, match='polygons must be true or false'):
        generate(tmp_path / 'x', polygons='yes')


# ---------------------------------------------------------------- real data
@pytest.mark.skipif(not (SHARED / 'datasets' / 'coco-seg').exists(), reason='shared coco-seg not available')
def test_coco_seg_reads_as_segmentation_and_writes_nothing_to_shared(tmp_path):
    root = SHARED / 'datasets' / 'coco-seg'
    before = sorted(str(p) for p in root.rglob('*'))
    d = check_dataset(root / 'coco-seg.yaml')
    loader, ds = create_dataloader(d['val'], 160, 4, 32, hyp=dict(GEOMETRY, hsv_s=0.7), augment=True, workers=0,
                                   nc=d['nc'], masks=True)
    assert len(ds) == 82 and sum(len(lb) for lb in ds.labels) == 695 and ds.scan['dropped_rows'] == 0
    assert all(len(s) == len(lb) for s, lb in zip(ds.segments, ds.labels))
    imgs, targets, _, _, masks = next(iter(loader))
    assert masks.shape == (4, 40, 40) and int(masks.max()) >= 1
    assert sorted(str(p) for p in root.rglob('*')) == before
    assert str(ds.cache_path).startswith(str(tmp_path))
