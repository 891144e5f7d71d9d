"""Image, box and polygon augmentation as YOLOv5 v7.0 does it: letterbox, mosaic, random perspective,
HSV, flips, mixup, copy-paste.

Images are HWC BGR uint8 (as cv2 reads them). Labels are `[n, 5]` = (class, box) where the box is
pixel xyxy inside this module unless a name says `n` (normalised xywh). Polygons (segmentation) are
lists of `(k, 2)` pixel xy arrays, one per label row, in the same order. Every random draw comes
from the `rng` argument (a `numpy.random.Generator`) so that a sample is reproducible from its seed.
The `*_polygons` variants draw exactly what their box-only twins draw.
"""
import math

import cv2
import numpy as np
import torch

from utils.boxes import xyn2xy, xywhn2xyxy

PAD_VALUE = 114  # grey used by YOLOv5 for letterbox borders and empty mosaic area
POLYGON_POINTS = 1000  # v7.0 resamples every polygon to this many points before warping it


# ---------------------------------------------------------------- resizing
def letterbox(im, new_shape=640, color=(PAD_VALUE,) * 3, auto=True, scale_fill=False, scaleup=True, stride=32):
    """Resize keeping the aspect ratio and pad to `new_shape` (h, w). Returns (im, (rw, rh), (padw, padh))."""
    shape = im.shape[:2]
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    if not scaleup:  # validation: never enlarge, it would only blur
        r = min(r, 1.0)
    ratio = r, r
    new_unpad = int(round(shape[1] * r)), int(round(shape[0] * r))
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]
    if auto:  # smallest padding that keeps both sides a multiple of the stride
        dw, dh = np.mod(dw, stride), np.mod(dh, stride)
    elif scale_fill:  # stretch, no padding
        dw, dh = 0.0, 0.0
        new_unpad = (new_shape[1], new_shape[0])
        ratio = new_shape[1] / shape[1], new_shape[0] / shape[0]
    dw, dh = dw / 2, dh / 2  # split the padding between both sides
    if shape[::-1] != new_unpad:
        im = cv2.resize(im, new_unpad, interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    im = cv2.copyMakeBorder(im, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    return im, ratio, (float(dw), float(dh))


# ---------------------------------------------------------------- colour
def draw_hsv_gains(rng, hgain=0.5, sgain=0.5, vgain=0.5):
    """The (hue, saturation, value) multipliers augment_hsv applies; None (and no draw) when all gains are 0."""
    if not (hgain or sgain or vgain):
        return None
    return rng.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1


def augment_hsv(im, rng, hgain=0.5, sgain=0.5, vgain=0.5):
    """Random hue / saturation / value gains, in place (lookup tables keep it cheap)."""
    r = draw_hsv_gains(rng, hgain, sgain, vgain)
    if r is None:
        return im
    hue, sat, val = cv2.split(cv2.cvtColor(im, cv2.COLOR_BGR2HSV))
    x = np.arange(0, 256, dtype=r.dtype)
    lut_hue = ((x * r[0]) % 180).astype(np.uint8)  # OpenCV hue lives in 0..179
    lut_sat = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * r[2], 0, 255).astype(np.uint8)
    im_hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    cv2.cvtColor(im_hsv, cv2.COLOR_HSV2BGR, dst=im)
    return im


# ---------------------------------------------------------------- geometry
def box_candidates(box1, box2, wh_thr=2, ar_thr=100, area_thr=0.1, eps=1e-16):
    """Keep boxes (4, n) (arrays or tensors) that stay wider/taller than wh_thr px, keep area_thr of their
    area and are not slivers."""
    w1, h1 = box1[2] - box1[0], box1[3] - box1[1]
    w2, h2 = box2[2] - box2[0], box2[3] - box2[1]
    maximum = torch.maximum if isinstance(w2, torch.Tensor) else np.maximum  # utils/device_augment.py: tensors
    ar = maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def _perspective_matrix(rng, height, width, src_shape, degrees, translate, scale, shear, perspective):
    """Compose centre -> perspective -> rotate/scale -> shear -> translate; returns (M, scale)."""
    C = np.eye(3)
    C[0, 2], C[1, 2] = -src_shape[1] / 2, -src_shape[0] / 2  # move the origin to the image centre
    P = np.eye(3)
    P[2, 0], P[2, 1] = rng.uniform(-perspective, perspective, 2)
    R = np.eye(3)
    angle = rng.uniform(-degrees, degrees)
    s = rng.uniform(1 - scale, 1 + scale)
    R[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=angle, scale=s)
    S = np.eye(3)
    S[0, 1], S[1, 0] = np.tan(rng.uniform(-shear, shear, 2) * math.pi / 180)
    T = np.eye(3)
    T[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * width
    T[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * height
    return T @ S @ R @ P @ C, s  # order matters: the right-most applies first


def _clip_polygon(pts, width, height):
    """Sutherland-Hodgman: clip a convex polygon (k, 2) to the image rectangle."""
    for axis, limit, keep_below in ((0, 0, False), (0, width, True), (1, 0, False), (1, height, True)):
        if not len(pts):
            break
        inside = pts[:, axis] <= limit if keep_below else pts[:, axis] >= limit
        out = []
        for i in range(len(pts)):
            p, q = pts[i], pts[(i + 1) % len(pts)]
            pin, qin = inside[i], inside[(i + 1) % len(pts)]
            if pin:
                out.append(p)
            if pin != qin:  # the edge crosses the clip line: add the crossing point
                t = (limit - p[axis]) / (q[axis] - p[axis])
                out.append(p + t * (q - p))
        pts = np.array(out).reshape(-1, 2)
    return pts


def _warp_points(points, M, perspective):
    """Map (k, 2) points through the 3x3 matrix M (dividing by w only when there is a perspective term)."""
    xy = np.ones((len(points), 3))
    xy[:, :2] = points
    xy = xy @ M.T
    return xy[:, :2] / xy[:, 2:3] if perspective else xy[:, :2]


def transform_boxes(boxes, M, perspective, width, height):
    """Map xyxy boxes (n, 4) through M; each new box encloses the warped box clipped to the image.

    Clipping the warped quadrilateral (not just its enclosing box) keeps boxes of rotated objects
    cut by the image border tight around the part that is still visible.
    """
    n = len(boxes)
    corners = boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(n * 4, 2)  # in polygon order
    xy = _warp_points(corners, M, perspective).reshape(n, 4, 2)
    new = np.concatenate((xy.min(1), xy.max(1)), 1)
    axis_aligned = M[0, 1] == 0 and M[1, 0] == 0 and M[2, 0] == 0 and M[2, 1] == 0
    outside = (new[:, 0] < 0) | (new[:, 1] < 0) | (new[:, 2] > width) | (new[:, 3] > height)
    if not axis_aligned:  # a clipped rectangle is still a rectangle; a clipped rotated one is not
        for i in np.nonzero(outside)[0]:
            poly = _clip_polygon(xy[i], width, height)
            new[i] = np.concatenate((poly.min(0), poly.max(0))) if len(poly) else 0
    new[:, [0, 2]] = new[:, [0, 2]].clip(0, width)
    new[:, [1, 3]] = new[:, [1, 3]].clip(0, height)
    return new


def draw_perspective(rng, src_shape, degrees, translate, scale, shear, perspective, border):
    """The random transform warp_image applies to an image of `src_shape` -> (M, scale drawn, width, height).

    `border` (negative for mosaic) crops the output: a 2s x 2s mosaic comes out s x s.
    """
    height = src_shape[0] + border[0] * 2
    width = src_shape[1] + border[1] * 2
    M, s = _perspective_matrix(rng, height, width, src_shape, degrees, translate, scale, shear, perspective)
    return M, s, width, height


def warp_image(im, rng, degrees, translate, scale, shear, perspective, border):
    """Draw a random affine / perspective transform and warp `im` -> (im, M, scale drawn, width, height)."""
    M, s, width, height = draw_perspective(rng, im.shape, degrees, translate, scale, shear, perspective, border)
    if border[0] or border[1] or (M != np.eye(3)).any():
        if perspective:
            im = cv2.warpPerspective(im, M, dsize=(width, height), borderValue=(PAD_VALUE,) * 3)
        else:  # affine is cheaper and exact when there is no perspective term
            im = cv2.warpAffine(im, M[:2], dsize=(width, height), borderValue=(PAD_VALUE,) * 3)
    return im, M, s, width, height


def random_perspective(im, labels, rng, degrees=10, translate=0.1, scale=0.1, shear=10, perspective=0.0,
                       border=(0, 0)):
    """Random affine / perspective warp of image and pixel-xyxy labels; drops boxes that are mostly gone."""
    im, M, s, width, height = warp_image(im, rng, degrees, translate, scale, shear, perspective, border)
    if len(labels):
        new = transform_boxes(labels[:, 1:5], M, perspective, width, height)
        keep = box_candidates(labels[:, 1:5].T * s, new.T, area_thr=0.10)
        labels = labels[keep]
        labels[:, 1:5] = new[keep]
    return im, labels


def resample_polygons(polygons, n=POLYGON_POINTS):
    """Each closed polygon (k, 2) -> n points evenly spaced in vertex index, as v7.0 resamples segments."""
    out = []
    for p in polygons:
        closed = np.concatenate((p, p[:1]), 0)
        t, knots = np.linspace(0, len(closed) - 1, n), np.arange(len(closed))
        out.append(np.stack([np.interp(t, knots, closed[:, 0]), np.interp(t, knots, closed[:, 1])], 1))
    return out


def polygon_box(xy, width, height):
    """xyxy box of the points of `xy` that lie inside the width x height image (zeros when none does).

    On a densely resampled polygon this is the box of the polygon clipped to the image (v7.0's segment2box)."""
    inside = (xy[:, 0] >= 0) & (xy[:, 1] >= 0) & (xy[:, 0] <= width) & (xy[:, 1] <= height)
    if not inside.any():
        return np.zeros(4)
    xy = xy[inside]
    return np.concatenate((xy.min(0), xy.max(0)))


def random_perspective_polygons(im, labels, polygons, rng, degrees=10, translate=0.1, scale=0.1, shear=10,
                                perspective=0.0, border=(0, 0)):
    """random_perspective for segmentation, as v7.0: each polygon is resampled to POLYGON_POINTS points and
    warped, its box is the box of its warped points inside the image, and objects keeping under 1% of their
    area are dropped with their polygons. Returns (im, labels, polygons)."""
    im, M, s, width, height = warp_image(im, rng, degrees, translate, scale, shear, perspective, border)
    if not len(labels):
        return im, labels, []
    warped = [_warp_points(p, M, perspective) for p in resample_polygons(polygons)]
    new = np.array([polygon_box(xy, width, height) for xy in warped]).reshape(-1, 4)
    keep = box_candidates(labels[:, 1:5].T * s, new.T, area_thr=0.01)
    labels = labels[keep]
    labels[:, 1:5] = new[keep]
    return im, labels, [xy for xy, k in zip(warped, keep) if k]


# ---------------------------------------------------------------- multi-image
def _mosaic_slots(i, xc, yc, w, h, s):
    """Where tile i (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right) goes: (dst box, src box)."""
    if i == 0:
        a = max(xc - w, 0), max(yc - h, 0), xc, yc
        b = w - (a[2] - a[0]), h - (a[3] - a[1]), w, h
    elif i == 1:
        a = xc, max(yc - h, 0), min(xc + w, s * 2), yc
        b = 0, h - (a[3] - a[1]), min(w, a[2] - a[0]), h
    elif i == 2:
        a = max(xc - w, 0), yc, xc, min(s * 2, yc + h)
        b = w - (a[2] - a[0]), 0, w, min(a[3] - a[1], h)
    else:
        a = xc, yc, min(xc + w, s * 2), min(s * 2, yc + h)
        b = 0, 0, min(w, a[2] - a[0]), min(a[3] - a[1], h)
    return a, b


def mosaic_slots(shapes, s, rng):
    """Draw the mosaic centre of a 2s x 2s canvas; per tile of shape (h, w): (dst box, src box) on it."""
    border = -s // 2
    yc, xc = (int(rng.uniform(-border, 2 * s + border)) for _ in range(2))
    return [_mosaic_slots(i, xc, yc, hw[1], hw[0], s) for i, hw in enumerate(shapes)]


def mosaic_labels(labels, shapes, slots, s):
    """Each tile's normalised-xywh labels -> pixel xyxy on the canvas, concatenated and clipped to it."""
    labels4 = []
    for lb, (h, w), (a, b) in zip(labels, shapes, slots):
        lb = lb.copy()
        if len(lb):
            lb[:, 1:] = xywhn2xyxy(lb[:, 1:], w, h, a[0] - b[0], a[1] - b[1])
        labels4.append(lb)
    labels4 = np.concatenate(labels4, 0) if labels4 else np.zeros((0, 5), np.float32)
    np.clip(labels4[:, 1:], 0, 2 * s, out=labels4[:, 1:])
    return labels4


def _mosaic(samples, s, rng):
    """mosaic4's work, also returning each tile's (padw, padh) offset on the canvas."""
    shapes = [im.shape[:2] for im, _ in samples]
    slots = mosaic_slots(shapes, s, rng)
    img4 = np.full((s * 2, s * 2, samples[0][0].shape[2]), PAD_VALUE, dtype=np.uint8)
    for (im, _), ((x1a, y1a, x2a, y2a), (x1b, y1b, x2b, y2b)) in zip(samples, slots):
        img4[y1a:y2a, x1a:x2a] = im[y1b:y2b, x1b:x2b]
    labels4 = mosaic_labels([lb for _, lb in samples], shapes, slots, s)
    return img4, labels4, [(a[0] - b[0], a[1] - b[1]) for a, b in slots]


def mosaic4(samples, s, rng):
    """Tile 4 (image, labels normalised xywh) around a random centre of a 2s x 2s canvas.

    Returns the canvas and pixel-xyxy labels clipped to it; random_perspective with border -s//2
    then crops it back to s x s.
    """
    return _mosaic(samples, s, rng)[:2]


def mosaic4_polygons(samples, polygons, s, rng):
    """mosaic4 for segmentation: `polygons` (per sample, normalised (k, 2) arrays, one per label row) move
    with their tiles and are clipped to the canvas like the boxes. Returns (img4, labels4, polygons4)."""
    img4, labels4, offsets = _mosaic(samples, s, rng)
    polygons4 = []
    for (im, _), polys, (padw, padh) in zip(samples, polygons, offsets):
        h, w = im.shape[:2]
        polygons4 += [np.clip(xyn2xy(p, w, h, padw, padh), 0, 2 * s) for p in polys]
    return img4, labels4, polygons4


def box_ioa(box, boxes, eps=1e-7):
    """Intersection of `box` (4,) with each of `boxes` (n, 4), over the area of each of `boxes`."""
    iw = (np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])).clip(0)
    ih = (np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])).clip(0)
    return iw * ih / ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) + eps)


def copy_paste_boxes(im, labels, rng, p=0.5):
    """Box-level copy-paste: paste a left-right mirrored copy of an object at its mirrored position.

    YOLOv5 does this with segment masks; with box labels only the whole box is copied. A copy is
    kept only where it covers under 30% of every existing box, as YOLOv5 requires.
    """
    n = len(labels)
    if not (p and n):
        return im, labels
    w = im.shape[1]
    src = im.copy()
    for j in rng.permutation(n)[: round(p * n)]:
        c, x1, y1, x2, y2 = labels[j]
        xa, ya, xb, yb = (int(round(v)) for v in (x1, y1, x2, y2))
        if xb - xa < 2 or yb - ya < 2:
            continue
        box = np.array([w - xb, ya, w - xa, yb], np.float32)
        if (box_ioa(box, labels[:, 1:5]) < 0.30).all():
            im[ya:yb, w - xb:w - xa] = src[ya:yb, xa:xb][:, ::-1]
            labels = np.concatenate((labels, np.array([[c, *box]], labels.dtype)), 0)
    return im, labels


def copy_paste_polygons(im, labels, polygons, rng, p=0.5):
    """Copy-paste as v7.0 does it with segments: the pixels inside an object's polygon, mirrored left-right,
    pasted at its mirrored place with a mirrored polygon; kept only where the copy's box covers under 30% of
    every existing box. Returns (im, labels, polygons)."""
    n = len(polygons)
    if not (p and n):
        return im, labels, polygons
    w = im.shape[1]
    polygons = list(polygons)
    pasted = np.zeros(im.shape[:2], np.uint8)  # the source objects, in the unmirrored frame
    for j in rng.permutation(n)[: round(p * n)]:
        c, x1, y1, x2, y2 = labels[j]
        box = np.array([w - x2, y1, w - x1, y2], np.float32)
        if (box_ioa(box, labels[:, 1:5]) < 0.30).all():
            labels = np.concatenate((labels, np.array([[c, *box]], labels.dtype)), 0)
            polygons.append(np.stack((w - polygons[j][:, 0], polygons[j][:, 1]), 1))
            cv2.fillPoly(pasted, [polygons[j].astype(np.int32)], 1)
    where = cv2.flip(pasted, 1).astype(bool)
    im[where] = cv2.flip(im, 1)[where]
    return im, labels, polygons


def mixup(im, labels, im2, labels2, rng):
    """Blend two training samples (ratio ~ Beta(32, 32), i.e. close to half-half) and keep both label sets."""
    r = rng.beta(32.0, 32.0)
    im = (im * r + im2 * (1 - r)).astype(np.uint8)
    return im, np.concatenate((labels, labels2), 0)


def mixup_polygons(im, labels, polygons, im2, labels2, polygons2, rng):
    """mixup for segmentation: both samples' polygons are kept, in label order. -> (im, labels, polygons)."""
    im, labels = mixup(im, labels, im2, labels2, rng)
    return im, labels, list(polygons) + list(polygons2)


def draw_flips(rng, flipud=0.0, fliplr=0.5):
    """(flip up-down?, flip left-right?): both draws are always made, so later draws do not shift."""
    return rng.random() < flipud, rng.random() < fliplr


def apply_flips(im, labels_n, ud, lr):
    """Flip an image and its normalised-xywh labels up-down (`ud`) and / or left-right (`lr`)."""
    if ud:
        im = np.flipud(im)
        if len(labels_n):
            labels_n[:, 2] = 1 - labels_n[:, 2]
    if lr:
        im = np.fliplr(im)
        if len(labels_n):
            labels_n[:, 1] = 1 - labels_n[:, 1]
    return im, labels_n


def random_flips(im, labels_n, rng, flipud=0.0, fliplr=0.5):
    """Up-down / left-right flips of an image and its normalised-xywh labels."""
    return apply_flips(im, labels_n, *draw_flips(rng, flipud, fliplr))
