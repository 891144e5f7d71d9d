"""Augmentation: boxes must follow their objects through mosaic, perspective and flips."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from utils.augment import (augment_hsv, box_candidates, copy_paste_boxes, letterbox, mixup, mosaic4,
                           random_flips, random_perspective)
from utils.boxes import xywhn2xyxy, xyxy2xywhn
from utils.datasets import LoadImagesAndLabels

# Saturated, well separated colours (BGR); the background is the mosaic grey so borders blend away.
PALETTE = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255), (255, 0, 255), (255, 255, 0),
           (255, 255, 255), (0, 0, 0), (0, 128, 255), (255, 0, 128), (128, 255, 0), (40, 40, 140)]
IMG = 192
SHARED = Path(__file__).resolve().parents[2] / 'shared'


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv('YOLOV5_DISTILL_CACHE_DIR', str(tmp_path / 'cache'))


def _write_colour_dataset(root, n_images=6, per_image=2, seed=0):
    """Images of filled rectangles, one unique colour per object; class id = colour index."""
    rng = np.random.default_rng(seed)
    (root / 'images').mkdir(parents=True)
    (root / 'labels').mkdir()
    k = 0
    for i in range(n_images):
        img = np.full((IMG, IMG, 3), 114, np.uint8)
        rows = []
        for j in range(per_image):
            w, h = rng.integers(50, 80, 2)
            x1 = j * 96 + int(rng.integers(4, 96 - w - 4))  # left or right half, off the edges
            y1 = int(rng.integers(8, IMG - h - 8))
            cv2.rectangle(img, (int(x1), y1), (int(x1 + w - 1), int(y1 + h - 1)), PALETTE[k], -1)
            rows.append(f'{k} {(x1 + w / 2) / IMG} {(y1 + h / 2) / IMG} {w / IMG} {h / IMG}\n')
            k += 1
        cv2.imwrite(str(root / 'images' / f'{i}.png'), img)
        (root / 'labels' / f'{i}.txt').write_text(''.join(rows))
    return root / 'images'


def _colour_components(img_rgb, colour_bgr):
    """Bounding boxes (x1, y1, x2, y2) and pixel counts of the connected regions of one colour."""
    target = np.array(colour_bgr[::-1], np.int16)
    # a border pixel blends the colour with the grey background: count it when it is at least half colour
    half = np.abs(target - 114).max() / 2
    mask = (np.abs(img_rgb.astype(np.int16) - target).max(-1) <= half).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    return [(x, y, x + w, y + h, a) for x, y, w, h, a in stats[1:] if a >= 6]  # ignore stray edge pixels


def _iou(a, b):
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_boxes_follow_objects_through_mosaic_perspective_and_flips(tmp_path):
    path = _write_colour_dataset(tmp_path / 'd')
    hyp = dict(mosaic=1.0, mixup=0.0, copy_paste=0.0, degrees=10.0, translate=0.1, scale=0.3, shear=3.0,
               perspective=0.0005, flipud=0.5, fliplr=0.5, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0)
    ds = LoadImagesAndLabels(str(path), img_size=IMG, batch_size=4, augment=True, hyp=hyp, nc=len(PALETTE))
    # source area of each object: random_perspective drops a box only when its visible box keeps
    # under 10% of that area times scale**2, so an object keeping 25% at the largest scale must survive
    source_area = {int(c): w * h * IMG * IMG for lb in ds.labels for c, _, _, w, h in lb}
    max_gain = (1 + hyp['scale']) ** 2
    checked_boxes = checked_objects = 0
    for key in [(i % ds.n, epoch, True) for epoch in range(8) for i in range(ds.n)]:
        img, targets, _, _ = ds[key]
        img = img.permute(1, 2, 0).numpy()
        h, w = img.shape[:2]
        boxes = targets[:, 1:].numpy().copy()
        xyxy = xywhn2xyxy(boxes[:, 1:], w, h)
        for c in range(len(PALETTE)):
            comps = _colour_components(img, PALETTE[c])
            mine = xyxy[boxes[:, 0] == c]
            for b in mine:  # every box covers one visible copy of its object
                assert comps, f'box of class {c} has no object under it'
                if min(b[2] - b[0], b[3] - b[1]) < 20:
                    continue  # half-pixel edge quantisation alone could cost a tiny box 10% IoU
                best = max(_iou(b, comp) for comp in comps)
                assert best > 0.9, f'class {c}: box {b.round(1)} IoU {best:.2f} with its object'
                checked_boxes += 1
            for comp in comps:  # every clearly visible object kept its box
                cw, ch = comp[2] - comp[0], comp[3] - comp[1]
                if cw >= 12 and ch >= 12 and cw * ch >= 0.25 * source_area[c] * max_gain:
                    assert any(_iou(b, comp) > 0.9 for b in mine), f'class {c}: object {comp} lost its box'
                    checked_objects += 1
    assert checked_boxes > 80 and checked_objects > 80  # the test really looked at many boxes


def test_letterbox_keeps_aspect_and_pads_to_shape():
    im = np.zeros((100, 200, 3), np.uint8)
    out, ratio, (dw, dh) = letterbox(im, 256, auto=False)
    assert out.shape == (256, 256, 3) and ratio == (1.28, 1.28)
    assert dw == 0 and dh == pytest.approx((256 - 128) / 2)
    assert (out[:int(dh)] == 114).all() and (out[int(dh) + 1:int(dh) + 127] == 0).all()
    out, _, _ = letterbox(im, 256, auto=True, stride=32)  # minimal padding to a stride multiple
    assert out.shape == (128, 256, 3)
    out, ratio, _ = letterbox(im, 640, auto=False, scaleup=False)  # validation never enlarges
    assert ratio == (1.0, 1.0) and out.shape == (640, 640, 3)


@pytest.mark.skipif(not (SHARED / 'weights' / 'yolov5n_reference_io.pt').exists(), reason='shared assets absent')
def test_letterbox_matches_yolov5_reference_input():
    ref = torch.load(SHARED / 'weights' / 'yolov5n_reference_io.pt', weights_only=True)['input']
    for i, name in enumerate(('bus.jpg', 'zidane.jpg')):
        im, _, _ = letterbox(cv2.imread(str(SHARED / 'images' / name)), 320, auto=False)
        x = torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1)[::-1])).float() / 255
        assert torch.equal(x, ref[i]), name  # bit-exact: same resize, same padding split


def test_box_format_round_trip():
    xywhn = np.array([[0.5, 0.25, 0.2, 0.1], [0.1, 0.9, 0.2, 0.2]])
    back = xyxy2xywhn(xywhn2xyxy(xywhn, 640, 320), 640, 320)
    np.testing.assert_allclose(back, xywhn, atol=1e-9)
    np.testing.assert_allclose(xywhn2xyxy(xywhn, 100, 100, padw=5, padh=7)[0], [45, 27, 65, 37])


def test_box_candidates_drops_slivers_and_vanished_boxes():
    box1 = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [10, 10, 10, 10], [10, 10, 10, 10]], float)
    box2 = np.array([[0, 0, 0, 0], [0, 0, 0, 0], [10, 1.5, 10, 0.5], [10, 10, 1.5, 10]], float)
    # kept / too thin / 5% of its area left / too thin in x
    np.testing.assert_array_equal(box_candidates(box1, box2), [True, False, False, False])


def test_random_perspective_identity_keeps_image_and_boxes():
    rng = np.random.default_rng(0)
    im = (np.random.default_rng(1).random((64, 96, 3)) * 255).astype(np.uint8)
    labels = np.array([[3, 10, 12, 40, 50]], np.float32)
    out, lb = random_perspective(im, labels.copy(), rng, degrees=0, translate=0.0, scale=0, shear=0)
    # with no motion requested the centre -> translate-back composition must be the identity
    np.testing.assert_array_equal(out, im)
    np.testing.assert_allclose(lb, labels, atol=1e-4)


def test_mosaic_output_size_and_labels_inside():
    rng = np.random.default_rng(3)
    samples = [(np.full((64, 64, 3), i * 40, np.uint8), np.array([[i, 0.5, 0.5, 0.5, 0.5]], np.float32))
               for i in range(4)]
    img4, labels4 = mosaic4(samples, 64, rng)
    assert img4.shape == (128, 128, 3) and len(labels4) == 4
    assert (labels4[:, 1:] >= 0).all() and (labels4[:, 1:] <= 128).all()
    out, lb = random_perspective(img4, labels4, rng, translate=0.1, scale=0.5, degrees=0, shear=0,
                                 border=(-32, -32))
    assert out.shape == (64, 64, 3)
    assert (lb[:, 1:] >= 0).all() and (lb[:, [1, 3]] <= 64).all() and (lb[:, [2, 4]] <= 64).all()


def test_flips_move_boxes_with_pixels():
    im = np.zeros((40, 80, 3), np.uint8)
    im[0:10, 0:20] = 255  # top-left block
    labels = np.array([[0, 10 / 80, 5 / 40, 20 / 80, 10 / 40]], np.float32)
    out, lb = random_flips(im.copy(), labels.copy(), np.random.default_rng(0), flipud=1.0, fliplr=1.0)
    assert out[-10:, -20:].min() == 255 and out[:30].max() == 0
    np.testing.assert_allclose(lb[0, 1:3], [1 - 10 / 80, 1 - 5 / 40])


def test_hsv_changes_colours_but_not_shape():
    im = np.full((32, 32, 3), (30, 120, 200), np.uint8)
    out = augment_hsv(im.copy(), np.random.default_rng(5), 0.015, 0.7, 0.4)
    assert out.shape == im.shape and not np.array_equal(out, im)
    same = augment_hsv(im.copy(), np.random.default_rng(5), 0.0, 0.0, 0.0)
    np.testing.assert_array_equal(same, im)


def test_mixup_blends_and_keeps_both_label_sets():
    a, b = np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 200, np.uint8)
    la, lb = np.ones((2, 5), np.float32), np.zeros((3, 5), np.float32)
    im, labels = mixup(a, la, b, lb, np.random.default_rng(0))
    assert len(labels) == 5 and 70 < im.mean() < 130  # Beta(32, 32) ratio is close to 0.5


def test_copy_paste_adds_mirrored_box_only_where_free():
    im = np.full((100, 200, 3), 114, np.uint8)
    im[10:40, 10:50] = (0, 0, 255)
    labels = np.array([[2, 10, 10, 50, 40]], np.float32)
    out, lb = copy_paste_boxes(im.copy(), labels.copy(), np.random.default_rng(0), p=1.0)
    assert len(lb) == 2
    np.testing.assert_allclose(lb[1], [2, 150, 10, 190, 40])
    assert (out[10:40, 150:190] == (0, 0, 255)).all()
    centred = np.array([[1, 80, 10, 120, 40]], np.float32)  # its mirror overlaps itself: not pasted
    _, lb = copy_paste_boxes(im.copy(), centred.copy(), np.random.default_rng(0), p=1.0)
    assert len(lb) == 1
