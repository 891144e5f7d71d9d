"""The embedded default dataset: textured shapes on cluttered, noisy backgrounds (generated on first use).

Designed to separate small and large detectors: objects range from a few pixels to ~40% of the
image, partly occlude each other, and come in near-duplicate pairs (plain vs striped disc, square
vs wide rectangle, plain vs dotted triangle) that only fine texture or aspect tells apart. Colours
are random, so colour never gives the class away. Output is PNG + YOLO txt, byte-identical for a
given seed and options.

With `polygons` the labels are YOLO-seg polygons of each object's visible pixels (the segmentation
twin of the set: same images, data/synthetic-seg.yaml).

CLI: python -m utils.synthetic --out DIR --n-train 400 --n-val 100 --imgsz 160 --seed 0 [--polygons]
"""
import argparse
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from utils.label_cache import DatasetError

CLASS_NAMES = ['disc', 'striped_disc', 'square', 'wide_rect', 'triangle', 'dotted_triangle', 'cross', 'ring']
DEFAULTS = dict(n_train=400, n_val=100, imgsz=160, seed=0, max_objects=8)
GENERATOR_VERSION = 'yolov5-distill-synthetic-1'
MANIFEST = 'synthetic.json'
MIN_VISIBLE = 0.5  # an object keeps at least half of its pixels visible, so every label is fair
SPLITS = ('train', 'val')


# ---------------------------------------------------------------- shapes
def _rotated(points, angle):
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _polygon_mask(size, points):
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(points + size / 2).astype(np.int32)], 1)
    return mask


def _shape_mask(cls, r, rng, size):
    """Binary mask (size x size) of a class's outline with radius ~r centred in the patch."""
    c = size // 2
    if cls in (0, 1):  # discs
        mask = np.zeros((size, size), np.uint8)
        cv2.circle(mask, (c, c), max(1, round(r)), 1, -1)
        return mask
    if cls == 7:  # ring: thick annulus
        mask = np.zeros((size, size), np.uint8)
        cv2.circle(mask, (c, c), max(2, round(r)), 1, -1)
        cv2.circle(mask, (c, c), max(1, round(r * 0.55)), 0, -1)
        return mask
    if cls in (2, 3):  # square vs wide rectangle: only the aspect ratio differs
        aspect = 1.0 if cls == 2 else rng.uniform(1.55, 1.85)
        hw, hh = r * math.sqrt(aspect) * 0.8, r / math.sqrt(aspect) * 0.8
        pts = np.array([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]])
        if rng.random() < 0.5:
            pts = pts[:, ::-1]  # tall or wide
        return _polygon_mask(size, _rotated(pts, rng.uniform(-0.25, 0.25)))
    if cls in (4, 5):  # triangles, any rotation
        ang = np.array([0, 2 * math.pi / 3, 4 * math.pi / 3]) + rng.uniform(0, 2 * math.pi)
        return _polygon_mask(size, np.stack([np.cos(ang), np.sin(ang)], 1) * r)
    # cross: two bars
    t = r * 0.36
    bars = [np.array([[-r, -t], [r, -t], [r, t], [-r, t]]), np.array([[-t, -r], [t, -r], [t, r], [-t, r]])]
    angle = rng.uniform(-0.3, 0.3)
    return np.maximum(_polygon_mask(size, _rotated(bars[0], angle)), _polygon_mask(size, _rotated(bars[1], angle)))


def _texture(cls, size, r, rng):
    """Boolean pattern: where the object's second colour shows (stripes, dots, or nothing)."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    if cls == 1:  # stripes at a random angle
        a = rng.uniform(0, math.pi)
        period = max(2.5, r / 2.2)
        return ((xx * math.cos(a) + yy * math.sin(a)) / period) % 2 < 1
    if cls == 5:  # dot grid
        period = max(3.0, r / 2.0)
        ox, oy = rng.uniform(0, period, 2)
        return (((xx + ox) % period) < period * 0.45) & (((yy + oy) % period) < period * 0.45)
    return np.zeros((size, size), bool)


def _random_colour(rng, avoid):
    """A colour at least some distance from `avoid` (the local background), so objects stay visible."""
    for _ in range(20):
        col = rng.integers(0, 256, 3).astype(np.float32)
        if np.abs(col - avoid).sum() > 120:
            return col
    return 255 - avoid


# ---------------------------------------------------------------- background
def _background(rng, s):
    """Smooth random colour field + unlabelled clutter (lines, blobs, arcs)."""
    low = rng.uniform(40, 215, (4, 4, 3)).astype(np.float32)
    img = cv2.resize(low, (s, s), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(6, 16))):
        col = tuple(float(v) for v in rng.uniform(0, 255, 3))
        kind = rng.integers(3)
        if kind == 0:
            p1, p2 = rng.integers(0, s, 2), rng.integers(0, s, 2)
            cv2.line(img, tuple(int(v) for v in p1), tuple(int(v) for v in p2), col, int(rng.integers(1, 3)))
        elif kind == 1:  # irregular many-sided blob: not one of the classes
            n = int(rng.integers(7, 11))
            ang = np.sort(rng.uniform(0, 2 * math.pi, n))
            rad = rng.uniform(0.3, 1.0, n) * rng.uniform(3, s * 0.12)
            ctr = rng.uniform(0, s, 2)
            pts = np.stack([np.cos(ang) * rad, np.sin(ang) * rad], 1) + ctr
            cv2.fillPoly(img, [np.round(pts).astype(np.int32)], col)
        else:
            ctr = tuple(int(v) for v in rng.integers(0, s, 2))
            axes = tuple(int(v) for v in rng.integers(3, max(4, s // 5), 2))
            cv2.ellipse(img, ctr, axes, float(rng.uniform(0, 180)), 0, float(rng.uniform(60, 300)), col, 1)
    return img


# ---------------------------------------------------------------- one image
def _try_place(id_map, areas, mask, x0, y0):
    """Place `mask` at (x0, y0) unless it would leave an earlier object under MIN_VISIBLE; return region or None."""
    s = id_map.shape[0]
    h, w = mask.shape
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + w, s), min(y0 + h, s)
    m = mask[ya - y0:yb - y0, xa - x0:xb - x0].astype(bool)
    if m.sum() < mask.sum() * 0.9:  # keep objects (nearly) inside the image
        return None
    covered = id_map[ya:yb, xa:xb][m]
    for j in np.unique(covered[covered > 0]):
        still = (id_map == j).sum() - (covered == j).sum()
        if still < MIN_VISIBLE * areas[j]:
            return None
    return xa, ya, xb, yb, m


def render_image(rng, s, max_objects):
    """One image (HWC BGR uint8) and its labels [n, 5] (class, xc, yc, w, h normalised)."""
    img, id_map, classes = render_scene(rng, s, max_objects)
    return img, _labels_from_id_map(id_map, classes, s)


def render_scene(rng, s, max_objects):
    """One image (HWC BGR uint8), its object-id map (0 = background, k = object k, as visible) and
    {object id: class}."""
    img = _background(rng, s)
    id_map = np.zeros((s, s), np.int32)
    areas, classes = {}, {}
    for k in range(1, int(rng.integers(2, max_objects + 1)) + 1):
        cls = int(rng.integers(len(CLASS_NAMES)))
        r = s * math.exp(rng.uniform(math.log(0.035), math.log(0.2)))  # log-uniform: many small objects
        size = int(math.ceil(r * 2.4)) + 3
        mask = _shape_mask(cls, r, rng, size)
        if mask.sum() < 6:
            continue
        for _ in range(8):
            x0, y0 = (int(v) for v in rng.integers(-size // 4, s - size + size // 4 + 1, 2))
            placed = _try_place(id_map, areas, mask, x0, y0)
            if placed is not None:
                break
        if placed is None:
            continue
        xa, ya, xb, yb, m = placed
        region = img[ya:yb, xa:xb]
        col_a = _random_colour(rng, region.reshape(-1, 3).mean(0))
        col_b = col_a * rng.uniform(0.35, 0.6)  # darker second colour for the texture
        tex = _texture(cls, size, r, rng)[ya - y0:yb - y0, xa - x0:xb - x0]
        shade = rng.uniform(0.85, 1.15)
        region[m & ~tex] = col_a * shade
        region[m & tex] = col_b
        id_map[ya:yb, xa:xb][m] = k
        areas[k], classes[k] = int(m.sum()), cls
    img += rng.normal(0, rng.uniform(4, 12), img.shape).astype(np.float32)  # sensor noise
    img = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), 0)
    return img, id_map, classes


def _visible_objects(id_map, classes):
    """(object id, class, visible pixels' xs, ys) of every object at least 2 pixels wide and tall."""
    for k, cls in classes.items():
        ys, xs = np.nonzero(id_map == k)
        if len(xs) and xs.max() - xs.min() >= 1 and ys.max() - ys.min() >= 1:
            yield k, cls, xs, ys


def _labels_from_id_map(id_map, classes, s):
    """Boxes of the visible part of each object (what a human annotator would draw)."""
    rows = []
    for _, cls, xs, ys in _visible_objects(id_map, classes):
        x1, x2, y1, y2 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        rows.append([cls, (x1 + x2) / 2 / s, (y1 + y2) / 2 / s, (x2 - x1) / s, (y2 - y1) / s])
    return np.array(rows, np.float64).reshape(-1, 5)


def mask_polygon(mask):
    """One pixel polygon (k, 2) whose filling (cv2.fillPoly) redraws the binary `mask`: every outline and
    hole (ring, an occluder's bite) is joined to the rest by a zero-width bridge at their closest points,
    so a single YOLO-seg row describes a ring or an object cut in two."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    parts = sorted((c.reshape(-1, 2) for c in contours), key=len, reverse=True)
    if not parts:
        return np.zeros((0, 2), np.int32)
    poly = parts[0]
    for part in parts[1:]:
        d = ((poly[:, None, :] - part[None, :, :]) ** 2).sum(-1)
        i, j = np.unravel_index(d.argmin(), d.shape)
        poly = np.concatenate((poly[:i + 1], np.roll(part, -j, 0), part[j:j + 1], poly[i:]))
    return poly


def _polygons_from_id_map(id_map, classes, s):
    """YOLO-seg rows (class, normalised polygon (k, 2)) of the visible part of the objects that get a box.
    Points are pixel centres, so the polygon redraws exactly the object's pixels at this size."""
    rows = []
    for k, cls, _, _ in _visible_objects(id_map, classes):
        poly = mask_polygon(id_map == k)
        if len(poly) >= 3:  # a diagonal line of pixels has no area as a polygon: no mask to learn
            rows.append((cls, (poly + 0.5) / s))
    return rows


# ---------------------------------------------------------------- dataset
def _label_lines(id_map, classes, s, polygons):
    if polygons:
        return ''.join(f'{cls} ' + ' '.join(f'{v:.6f}' for v in poly.reshape(-1)) + '\n'
                       for cls, poly in _polygons_from_id_map(id_map, classes, s))
    labels = _labels_from_id_map(id_map, classes, s)
    return ''.join(f'{int(c)} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n' for c, x, y, w, h in labels)


def _write_split(root, split, n, imgsz, seed, max_objects, polygons=False):
    im_dir, lb_dir = root / 'images' / split, root / 'labels' / split
    im_dir.mkdir(parents=True, exist_ok=True)
    lb_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rng = np.random.default_rng([seed, SPLITS.index(split), i])  # each image has its own stream
        img, id_map, classes = render_scene(rng, imgsz, max_objects)
        cv2.imwrite(str(im_dir / f'{i:06d}.png'), img, [cv2.IMWRITE_PNG_COMPRESSION, 3])
        (lb_dir / f'{i:06d}.txt').write_text(_label_lines(id_map, classes, imgsz, polygons))


def _options(opts):
    """Validated generator options; `polygons: true` (segmentation labels) is kept only when set, so the
    detection set's manifest and files stay what they were before polygons existed."""
    opts = dict(opts)
    polygons = opts.pop('polygons', False)
    if polygons not in (True, False):  # 1 == True, so YAML's true and a CLI 1 both pass
        raise DatasetError(f'synthetic option polygons must be true or false, got {polygons!r}')
    unknown = set(opts) - set(DEFAULTS)
    if unknown:
        raise DatasetError(f'unknown synthetic options {sorted(unknown)}; valid: {sorted(DEFAULTS)}')
    o = {**DEFAULTS, **opts}
    try:
        o = {k: int(v) for k, v in o.items()}
    except (TypeError, ValueError):
        raise DatasetError(f'synthetic options must be integers, got {opts}') from None
    if o['n_train'] < 1 or o['n_val'] < 1 or o['imgsz'] < 32 or o['max_objects'] < 2:
        raise DatasetError(f'synthetic options out of range: {o} (need n_train, n_val >= 1, imgsz >= 32, '
                           f'max_objects >= 2)')
    return {**o, 'polygons': True} if polygons else o


def _manifest(o):
    return {'generator': GENERATOR_VERSION, 'options': o, 'names': CLASS_NAMES}


def generate(out, **opts):
    """Write the dataset to `out` (images/{train,val}, labels/{train,val}, manifest, dataset.yaml)."""
    o = _options(opts)
    out = Path(out)
    for split in SPLITS:
        _write_split(out, split, o[f'n_{split}'], o['imgsz'], o['seed'], o['max_objects'], o.get('polygons', False))
    names = ', '.join(f"'{n}'" for n in CLASS_NAMES)
    (out / 'dataset.yaml').write_text(f'# Generated by utils/synthetic.py with {o}\npath: .\ntrain: images/train\n'
                                      f'val: images/val\nnc: {len(CLASS_NAMES)}\nnames: [{names}]\n')
    (out / MANIFEST).write_text(json.dumps(_manifest(o), indent=1) + '\n')  # written last: marks completion
    return o


def _is_current(root, o):
    try:
        return json.loads((root / MANIFEST).read_text()) == _manifest(o)
    except (OSError, ValueError):
        return False


def ensure_synthetic(root, names=None, **opts):
    """Generate the dataset into `root` unless it is already there with the same options.

    Generation goes to a temporary sibling folder that is renamed into place, so concurrent
    processes (DDP ranks, parallel tests) never see a half-written dataset.
    """
    o = _options(opts)
    if names is not None and list(names) != CLASS_NAMES:
        raise DatasetError(f'a `synthetic:` dataset must list the generator classes {CLASS_NAMES}, got {list(names)}')
    root = Path(root)
    if _is_current(root, o):
        return root
    if root.exists() and any(root.iterdir()) and not (root / MANIFEST).exists():
        raise DatasetError(f'{root} exists and was not made by the synthetic generator; refusing to overwrite it')
    root.parent.mkdir(parents=True, exist_ok=True)
    t = time.time()
    tmp = Path(tempfile.mkdtemp(prefix=f'.{root.name}-', dir=root.parent))
    try:
        generate(tmp, **o)
        if root.exists():  # an older generation with other options: ours to replace
            old = root.with_name(f'.{root.name}-old-{os.getpid()}')
            os.rename(root, old)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(tmp, root)
    except OSError:
        if not _is_current(root, o):  # another process did not win the race either: a real error
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f'Synthetic dataset generated in {root} ({o["n_train"]} train / {o["n_val"]} val, '
          f'{o["imgsz"]}px) in {time.time() - t:.1f}s')
    return root


def main(argv=None):
    ap = argparse.ArgumentParser(description='Generate the synthetic shapes detection dataset (YOLO format).')
    ap.add_argument('--out', required=True, help='output folder (images/, labels/, dataset.yaml)')
    ap.add_argument('--n-train', type=int, default=DEFAULTS['n_train'], help='number of training images')
    ap.add_argument('--n-val', type=int, default=DEFAULTS['n_val'], help='number of validation images')
    ap.add_argument('--imgsz', type=int, default=DEFAULTS['imgsz'], help='square image size in pixels')
    ap.add_argument('--seed', type=int, default=DEFAULTS['seed'], help='random seed (same seed, same bytes)')
    ap.add_argument('--max-objects', type=int, default=DEFAULTS['max_objects'], help='most objects per image')
    ap.add_argument('--polygons', action='store_true', help='YOLO-seg polygon labels (segmentation) instead of boxes')
    a = ap.parse_args(argv)
    out = Path(a.out)
    if out.exists() and any(out.iterdir()):
        ap.error(f'{out} is not empty')
    t = time.time()
    try:
        generate(out, n_train=a.n_train, n_val=a.n_val, imgsz=a.imgsz, seed=a.seed, max_objects=a.max_objects,
                 polygons=a.polygons)
    except DatasetError as e:
        ap.error(str(e))
    print(f'Wrote {a.n_train} train + {a.n_val} val images to {out} in {time.time() - t:.1f}s; '
          f'use --data {out / "dataset.yaml"}')


if __name__ == '__main__':
    main()
