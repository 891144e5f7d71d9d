"""Convert VisDrone2019-DET annotations to YOLO txt labels (10 classes).

Annotation rows: `x,y,w,h,score,category,truncation,occlusion` (top-left corner, pixels).
Handled as the VisDrone DET benchmark handles ground truth:
  - category 0 marks an ignored region: not an object; objects whose box lies at least half inside
    ignored regions are dropped (the benchmark drops them before scoring);
  - score 0 flags a box the benchmark ignores (neither a hit nor a miss): YOLO labels have no
    ignore flag, so it is dropped rather than taught as a positive;
  - category 11 'others' is not one of the 10 scored classes: dropped;
  - categories 1..10 become YOLO classes 0..9 (pedestrian ... motor).

  python data/scripts/visdrone2yolo.py --root datasets/VisDrone/VisDrone2019-DET-train
reads ROOT/annotations/*.txt and ROOT/images/*.jpg and writes ROOT/labels/*.txt. Given a folder that
holds several splits (e.g. datasets/VisDrone), every split inside it is converted.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

NAMES = ['pedestrian', 'people', 'bicycle', 'car', 'van', 'truck', 'tricycle', 'awning-tricycle', 'bus', 'motor']
IGNORED_REGION, OTHERS = 0, 11
IGNORED_FRACTION = 0.5  # benchmark rule: dropped when half or more of the box is in ignored regions
IMG_SUFFIXES = ('.jpg', '.jpeg', '.png')


def parse_annotation(text):
    """Rows as an (n, 8) int array; trailing commas and blank lines are tolerated."""
    rows = []
    for k, line in enumerate(text.splitlines(), 1):
        vals = [v for v in line.strip().split(',') if v.strip() != '']
        if not vals:
            continue
        if len(vals) < 6:
            raise ValueError(f'line {k}: expected 8 comma-separated values, got {len(vals)}')
        rows.append([int(float(v)) for v in vals[:8]] + [0] * (8 - len(vals[:8])))
    return np.array(rows, np.int64).reshape(-1, 8)


def ignored_fraction(boxes, regions, width, height):
    """Fraction of each box (x, y, w, h) covered by the union of ignored regions (x, y, w, h)."""
    if not len(regions) or not len(boxes):
        return np.zeros(len(boxes))
    mask = np.zeros((height, width), bool)
    for x, y, w, h in regions:
        mask[max(y, 0):min(y + h, height), max(x, 0):min(x + w, width)] = True
    integral = np.pad(mask.cumsum(0).cumsum(1), ((1, 0), (1, 0)))  # summed-area table
    x1 = boxes[:, 0].clip(0, width)
    y1 = boxes[:, 1].clip(0, height)
    x2 = (boxes[:, 0] + boxes[:, 2]).clip(0, width)
    y2 = (boxes[:, 1] + boxes[:, 3]).clip(0, height)
    covered = integral[y2, x2] - integral[y1, x2] - integral[y2, x1] + integral[y1, x1]
    return covered / np.maximum(boxes[:, 2] * boxes[:, 3], 1)


def convert_rows(rows, width, height):
    """Annotation rows -> list of (class, xc, yc, w, h) normalised, plus counts of what was dropped."""
    cat, score = rows[:, 5], rows[:, 4]
    regions = rows[cat == IGNORED_REGION, :4]
    objects = rows[(cat >= 1) & (cat <= 10)]
    frac = ignored_fraction(objects[:, :4], regions, width, height)
    keep = (objects[:, 4] != 0) & (frac < IGNORED_FRACTION) & (objects[:, 2] > 0) & (objects[:, 3] > 0)
    out = []
    for x, y, w, h, _, c, _, _ in objects[keep]:
        x1, y1 = max(x, 0), max(y, 0)
        x2, y2 = min(x + w, width), min(y + h, height)
        if x2 > x1 and y2 > y1:
            out.append((int(c) - 1, (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width,
                        (y2 - y1) / height))
    dropped = dict(regions=len(regions), others=int((cat == OTHERS).sum()),
                   ignore_flag=int(((objects[:, 4] == 0)).sum()), in_ignored=int((frac >= IGNORED_FRACTION).sum()))
    return out, dropped


def find_image(images_dir, stem):
    for s in IMG_SUFFIXES:
        p = images_dir / (stem + s)
        if p.exists():
            return p
    return None


def convert_split(root, out=None):
    """Convert ROOT/annotations into YOLO labels (default ROOT/labels); return summary counts."""
    root = Path(root)
    ann_dir, images_dir = root / 'annotations', root / 'images'
    out = Path(out) if out else root / 'labels'
    if not ann_dir.is_dir() or not images_dir.is_dir():
        raise FileNotFoundError(f'{root} must contain annotations/ and images/ (a VisDrone2019-DET split)')
    out.mkdir(parents=True, exist_ok=True)
    totals = dict(images=0, boxes=0, regions=0, others=0, ignore_flag=0, in_ignored=0, no_image=0)
    for ann in sorted(ann_dir.glob('*.txt')):
        im = find_image(images_dir, ann.stem)
        if im is None:
            totals['no_image'] += 1
            continue
        with Image.open(im) as img:
            width, height = img.size
        rows, dropped = convert_rows(parse_annotation(ann.read_text()), width, height)
        (out / ann.name).write_text(''.join(f'{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n' for c, x, y, w, h in rows))
        totals['images'] += 1
        totals['boxes'] += len(rows)
        for k, v in dropped.items():
            totals[k] += v
    return totals


def find_splits(root):
    """ROOT itself when it is a split folder, else the split folders directly inside it."""
    root = Path(root)
    if (root / 'annotations').is_dir():
        return [root]
    subs = [d for d in sorted(root.iterdir()) if (d / 'annotations').is_dir()] if root.is_dir() else []
    return subs or [root]  # convert_split then says what is missing


def main(argv=None):
    ap = argparse.ArgumentParser(description='Convert VisDrone2019-DET annotations to YOLO txt labels.')
    ap.add_argument('--root', required=True, nargs='+',
                    help='split folder(s) holding annotations/ and images/ (e.g. VisDrone2019-DET-train), '
                         'or a folder containing such splits')
    ap.add_argument('--out', help='output folder for the labels (default: ROOT/labels; one split only)')
    a = ap.parse_args(argv)
    splits = [s for r in a.root for s in find_splits(r)]
    if a.out and len(splits) > 1:
        ap.error(f'--out works with a single split, found {len(splits)}')
    for root in splits:
        try:
            t = convert_split(root, a.out)
        except (FileNotFoundError, ValueError) as e:
            sys.exit(f'error: {e}')
        print(f"{root}: {t['images']} images, {t['boxes']} boxes; dropped {t['regions']} ignored regions, "
              f"{t['ignore_flag']} score-0 boxes, {t['others']} 'others', {t['in_ignored']} boxes inside "
              f"ignored regions; {t['no_image']} annotations without an image")


if __name__ == '__main__':
    main()
