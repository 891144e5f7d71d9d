"""Convert COCO instances JSON (e.g. instances_val2017.json) to YOLO txt labels.

One `<image stem>.txt` per image with rows `class xc yc w h` normalised to the image size.
Crowd annotations (iscrowd=1) are skipped, as YOLOv5 does: they mark regions, not single objects.
Class ids: `--classes coco80` maps COCO's 91 sparse category ids to YOLOv5's contiguous 0..79;
`--classes sorted` numbers any other COCO-format dataset's categories in ascending id order.

  python data/scripts/coco2yolo.py --json annotations/instances_val2017.json --out datasets/coco/labels/val2017
"""
import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

# The 80 COCO category ids that have annotations, in order: index = YOLOv5 class id.
# (ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83 were defined in the paper but never annotated)
COCO80_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
              31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
              56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
              85, 86, 87, 88, 89, 90]


def coco91_to_coco80():
    """{COCO category id: YOLOv5 class id 0..79}."""
    return {cid: i for i, cid in enumerate(COCO80_IDS)}


def category_map(categories, mode):
    if mode == 'coco80':
        return coco91_to_coco80()
    return {c['id']: i for i, c in enumerate(sorted(categories, key=lambda c: c['id']))}


def yolo_row(bbox, width, height):
    """COCO [x, y, w, h] (top-left, pixels) -> (xc, yc, w, h) normalised and clipped, or None if empty."""
    x, y, w, h = bbox
    x1, y1 = max(0.0, x), max(0.0, y)
    x2, y2 = min(float(width), x + w), min(float(height), y + h)
    if x2 <= x1 or y2 <= y1:
        return None
    return (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height


def convert(json_file, out_dir, classes='coco80', write_empty=True):
    """Write the label files; return counts of images, boxes and skipped annotations."""
    data = json.loads(Path(json_file).read_text(encoding='utf-8'))
    images = {im['id']: im for im in data['images']}
    cmap = category_map(data.get('categories', []), classes)
    per_image = defaultdict(list)
    stats = dict(images=len(images), boxes=0, crowd=0, unknown_class=0, empty_box=0, no_image=0)
    for a in data.get('annotations', []):
        im = images.get(a['image_id'])
        if im is None:
            stats['no_image'] += 1
        elif a.get('iscrowd', 0):
            stats['crowd'] += 1
        elif a['category_id'] not in cmap:
            stats['unknown_class'] += 1
        else:
            row = yolo_row(a['bbox'], im['width'], im['height'])
            if row is None:
                stats['empty_box'] += 1
            else:
                per_image[im['id']].append((cmap[a['category_id']], *row))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for iid, im in images.items():
        rows = per_image.get(iid, [])
        if rows or write_empty:
            text = ''.join(f'{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n' for c, x, y, w, h in rows)
            (out / Path(im['file_name']).with_suffix('.txt').name).write_text(text)
        stats['boxes'] += len(rows)
    return stats


def main(argv=None):
    ap = argparse.ArgumentParser(description='Convert COCO instances JSON to YOLO txt labels.')
    ap.add_argument('--json', required=True, help='COCO instances JSON, e.g. annotations/instances_val2017.json')
    ap.add_argument('--out', required=True, help='folder for the .txt labels, e.g. datasets/coco/labels/val2017')
    ap.add_argument('--classes', choices=('coco80', 'sorted'), default='coco80',
                    help='coco80: COCO 91 ids -> 80 YOLOv5 classes; sorted: categories by ascending id')
    ap.add_argument('--no-empty', action='store_true', help='do not write empty files for images without boxes')
    a = ap.parse_args(argv)
    if not Path(a.json).is_file():
        ap.error(f'{a.json} not found')
    try:
        stats = convert(a.json, a.out, a.classes, write_empty=not a.no_empty)
    except (ValueError, KeyError) as e:
        sys.exit(f'error: {a.json} is not a COCO instances file ({type(e).__name__}: {e})')
    print(f"{stats['images']} images, {stats['boxes']} boxes written to {a.out}; skipped: {stats['crowd']} crowd, "
          f"{stats['unknown_class']} unknown class, {stats['empty_box']} empty boxes, "
          f"{stats['no_image']} without image")


if __name__ == '__main__':
    main()
