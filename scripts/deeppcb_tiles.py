"""Cut a YOLO dataset (DeepPCB by default) into S x S tiles, deterministically, for the CPU protocol.

    python3 scripts/deeppcb_tiles.py                               # datasets/deeppcb_tiles320 + its YAML
    python3 scripts/deeppcb_tiles.py --labelled-fraction 0.5 --split-seed 0   # + issue 14 split
    python3 scripts/deeppcb_tiles.py --train-subset 1000                       # + a 1000-tile train list
    python3 scripts/deeppcb_tiles.py --tile 640 --out datasets/deeppcb_640     # 1 tile = the whole image

Why tiles: DeepPCB defects are 15-40 px on 640 px images. Training at 320 on the resized images would
halve them; 320 px tiles of the 640 images keep every defect at its native resolution at a quarter of
the pixels per sample.

Tiling rule: tiles start at 0, stride, 2*stride, ... and a last tile is aligned to the right/bottom edge
when the grid does not reach it (default stride = tile: 4 disjoint tiles per 640 image). A box is kept in
a tile when >= --min-visible (default 60%) of its area lies inside the tile; it is then clipped to the
tile. A box less visible than that is dropped from that tile (a defect cut in half is not a defect the
model should be asked to find, and not a background either, but the loss has no "ignore" region, so the
rare cut boxes are dropped). With disjoint tiles a box is kept in at most one tile, so
kept + dropped = the source boxes.

Split for issue 14 (--labelled-fraction F --split-seed K): a fixed fraction of the *source images*
(all tiles of one image go together) keeps its labels; the others become unlabelled. With
--train-subset N the split is of that subset's tiles, and <F%>_s<K> below reads sub<N>_s<seed>_f<F%>_s<K>.
Written as
  splits/labelled_f<F%>_s<K>.txt    list of the labelled tiles (in images/train, labels beside them)
  images/unlabelled_f<F%>_s<K>/     hard links (or copies) of the other tiles, with NO labels folder,
                                    so no loader can see their labels by accident
  splits/unlabelled_f<F%>_s<K>.txt  list of those files
  <name>_labelled_f<F%>_s<K>.yaml   dataset YAML: train = the labelled list, val = all val tiles

The output goes under datasets/ (git-ignored). Everything is written to a '.partial' folder first and
renamed when complete, so a re-run skips a finished tiling (same settings) and redoes an interrupted one.
The source (e.g. ../shared) is only read.
"""
import argparse
import json
import os
import random
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.dataset_yaml import check_dataset  # noqa: E402
from utils.label_cache import DatasetError, img2label_paths, list_image_files, read_labels  # noqa: E402

DEFAULT_DATA = ROOT.parent / 'shared' / 'datasets' / 'deeppcb' / 'deeppcb.yaml'
MARKER = 'tiling.json'


# ----------------------------------------------------------------------------- geometry
def tile_starts(size, tile, stride):
    """Start offsets along one side: a regular grid, plus one tile flush with the far edge if needed."""
    if size < tile:
        raise DatasetError(f'image side {size} px is smaller than the tile ({tile} px); use a smaller --tile')
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def clip_labels(labels, w, h, x0, y0, tile, min_visible):
    """Labels [n, 5] (cls, xc, yc, bw, bh normalised to the w x h image) -> (tile labels [m, 5]
    normalised to the tile, boolean mask [n] of the source boxes kept)."""
    if not len(labels):
        return np.zeros((0, 5), np.float32), np.zeros(0, bool)
    cls = labels[:, 0]
    xc, yc, bw, bh = labels[:, 1] * w, labels[:, 2] * h, labels[:, 3] * w, labels[:, 4] * h
    x1, y1, x2, y2 = xc - bw / 2, yc - bh / 2, xc + bw / 2, yc + bh / 2
    cx1, cy1 = np.clip(x1, x0, x0 + tile), np.clip(y1, y0, y0 + tile)
    cx2, cy2 = np.clip(x2, x0, x0 + tile), np.clip(y2, y0, y0 + tile)
    inside = (cx2 - cx1) * (cy2 - cy1)
    keep = inside >= min_visible * bw * bh
    keep &= inside > 0  # min_visible = 0 must still not keep boxes outside the tile
    out = np.stack([cls, (cx1 + cx2) / 2 - x0, (cy1 + cy2) / 2 - y0, cx2 - cx1, cy2 - cy1], 1)[keep]
    out[:, 1:] /= tile
    return out.astype(np.float32), keep


def label_text(rows):
    return ''.join(f'{int(r[0])} {r[1]:.6f} {r[2]:.6f} {r[3]:.6f} {r[4]:.6f}\n' for r in rows)


# ----------------------------------------------------------------------------- tiling
def tile_split(im_files, out, split, nc, tile, stride, min_visible):
    """Write the tiles and labels of one split; return its counts."""
    counts = dict(images=0, tiles=0, boxes=0, kept=0, dropped=0, label_rows=0)
    (out / 'images' / split).mkdir(parents=True, exist_ok=True)
    (out / 'labels' / split).mkdir(parents=True, exist_ok=True)
    for im_file, lb_file in zip(im_files, img2label_paths(im_files)):
        img = cv2.imread(im_file, cv2.IMREAD_UNCHANGED)  # keeps 1-channel PNGs 1-channel
        if img is None:
            print(f'WARNING: {im_file}: unreadable image, skipped')
            continue
        h, w = img.shape[:2]
        labels = np.zeros((0, 5), np.float32)
        if os.path.isfile(lb_file):
            labels, problems = read_labels(lb_file, nc)
            if problems:
                print(f'WARNING: {lb_file}: rows dropped: {problems}')
        kept_any = np.zeros(len(labels), bool)
        stem = Path(im_file).stem
        for y0 in tile_starts(h, tile, stride):
            for x0 in tile_starts(w, tile, stride):
                rows, keep = clip_labels(labels, w, h, x0, y0, tile, min_visible)
                kept_any |= keep
                name = f'{stem}_x{x0}y{y0}'
                cv2.imwrite(str(out / 'images' / split / f'{name}.png'), img[y0:y0 + tile, x0:x0 + tile])
                (out / 'labels' / split / f'{name}.txt').write_text(label_text(rows))
                counts['tiles'] += 1
                counts['label_rows'] += len(rows)
        counts['images'] += 1
        counts['boxes'] += len(labels)
        counts['kept'] += int(kept_any.sum())
        counts['dropped'] += int((~kept_any).sum())
    return counts


def write_yaml(path, names, train, val):
    text = (f'# Written by scripts/deeppcb_tiles.py; relative paths start at the folder of this file\n'
            f'path: .\ntrain: {train}\nval: {val}\nnc: {len(names)}\nnames: {json.dumps(names)}\n')
    path.write_text(text)


def make_tiles(data, out, tile, stride, min_visible):
    """Tile train and val of `data` into `out` unless a tiling with the same settings is there."""
    settings = dict(source=str(Path(data).resolve()), tile=tile, stride=stride, min_visible=min_visible)
    marker = out / MARKER
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done['settings'] != settings:
            raise DatasetError(f'{out} holds a tiling with other settings ({done["settings"]}); '
                               f'delete it or choose another --out')
        print(f'{out}: complete, skipping')
        return done
    if out.exists():
        raise DatasetError(f'{out} exists but is not a finished tiling; delete it or choose another --out')
    d = check_dataset(data)
    partial = out.with_name(out.name + '.partial')
    shutil.rmtree(partial, ignore_errors=True)  # an interrupted earlier run
    counts = {s: tile_split(list_image_files(d[s]), partial, s, d['nc'], tile, stride, min_visible)
              for s in ('train', 'val')}
    write_yaml(partial / f'{out.name}.yaml', d['names'], 'images/train', 'images/val')
    done = dict(settings=settings, names=d['names'], counts=counts)
    (partial / MARKER).write_text(json.dumps(done, indent=1))
    os.replace(partial, out)
    return done


# ----------------------------------------------------------------------------- lists
def link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_list(path, files):
    """A list file with entries relative to its folder; rewritten only when its content changes."""
    text = ''.join(os.path.relpath(f, path.parent) + '\n' for f in files)
    if not (path.is_file() and path.read_text() == text):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix('.tmp')
        tmp.write_text(text)
        os.replace(tmp, path)


def source_image(tile_file):
    """'00041000_x320y0.png' -> '00041000' (all tiles of one source image share it)."""
    return Path(tile_file).stem.rsplit('_x', 1)[0]


def split_tag(fraction, seed, pool_tag=''):
    return f'{pool_tag}_' * bool(pool_tag) + f'f{round(fraction * 100)}_s{seed}'


def split_labelled(out, fraction, seed, pool=None, pool_tag=''):
    """Fixed labelled/unlabelled split by source image of the train tiles (or of `pool`, a subset of
    them named `pool_tag`); returns (labelled tiles, unlabelled files)."""
    if not 0 < fraction < 1:
        raise ValueError(f'--labelled-fraction must be between 0 and 1 (exclusive), got {fraction}')
    tiles = sorted(pool or (str(p) for p in (out / 'images' / 'train').glob('*.png')))
    sources = sorted({source_image(t) for t in tiles})
    random.Random(seed).shuffle(sources)
    labelled_sources = set(sources[:round(fraction * len(sources))])
    tag = split_tag(fraction, seed, pool_tag)
    labelled = [t for t in tiles if source_image(t) in labelled_sources]
    unl_dir = out / 'images' / f'unlabelled_{tag}'
    unl_dir.mkdir(exist_ok=True)
    unlabelled = []
    for t in tiles:
        if source_image(t) not in labelled_sources:
            dst = unl_dir / Path(t).name
            if not dst.exists():
                link_or_copy(t, dst)
            unlabelled.append(str(dst))
    write_list(out / 'splits' / f'labelled_{tag}.txt', labelled)
    write_list(out / 'splits' / f'unlabelled_{tag}.txt', unlabelled)
    names = json.loads((out / MARKER).read_text())['names']
    write_yaml(out / f'{out.name}_labelled_{tag}.yaml', names, f'splits/labelled_{tag}.txt', 'images/val')
    print(f'split {tag}: {len(labelled_sources)}/{len(sources)} source images labelled -> '
          f'{len(labelled)} labelled tiles (splits/labelled_{tag}.txt), {len(unlabelled)} unlabelled '
          f'(images/unlabelled_{tag}/, no labels)')
    return labelled, unlabelled


def train_subset(out, n, seed):
    """A fixed random subset of n training tiles, as a list file and a dataset YAML."""
    tiles = sorted(str(p) for p in (out / 'images' / 'train').glob('*.png'))
    if not 0 < n <= len(tiles):
        raise ValueError(f'--train-subset must be 1..{len(tiles)}, got {n}')
    subset = sorted(random.Random(seed).sample(tiles, n))
    tag = f'sub{n}_s{seed}'
    write_list(out / 'splits' / f'train_{tag}.txt', subset)
    names = json.loads((out / MARKER).read_text())['names']
    write_yaml(out / f'{out.name}_{tag}.yaml', names, f'splits/train_{tag}.txt', 'images/val')
    print(f'subset {tag}: {n} of {len(tiles)} train tiles -> {out.name}_{tag}.yaml')
    return subset


# ----------------------------------------------------------------------------- CLI
def parse_opt(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--data', default=str(DEFAULT_DATA), help='source dataset YAML (read only)')
    p.add_argument('--out', default='', help='output folder (default: datasets/deeppcb_tiles<tile>)')
    p.add_argument('--tile', type=int, default=320, help='tile side S in pixels')
    p.add_argument('--stride', type=int, default=0, help='tile stride in pixels (default: S, disjoint tiles)')
    p.add_argument('--min-visible', type=float, default=0.6, help='keep a box if this share of its area is inside')
    p.add_argument('--labelled-fraction', type=float, help='issue 14: share of train images that keep labels')
    p.add_argument('--split-seed', type=int, default=0, help='seed of the labelled/unlabelled split')
    p.add_argument('--train-subset', type=int, help='also write a list of this many random train tiles')
    p.add_argument('--subset-seed', type=int, default=0, help='seed of --train-subset')
    opt = p.parse_args(argv)
    opt.stride = opt.stride or opt.tile
    if opt.tile < 32 or not 0 < opt.stride <= opt.tile:
        p.error(f'need --tile >= 32 and 0 < --stride <= --tile, got {opt.tile} and {opt.stride}')
    if not 0 <= opt.min_visible <= 1:
        p.error(f'--min-visible must be in 0..1, got {opt.min_visible}')
    return opt


def main(opt):
    out = Path(opt.out or ROOT / 'datasets' / f'deeppcb_tiles{opt.tile}').resolve()
    shared = (ROOT.parent / 'shared').resolve()
    if out == shared or shared in out.parents:
        raise ValueError(f'--out {out} is inside {shared}, which is read-only; write under datasets/')
    done = make_tiles(opt.data, out, opt.tile, opt.stride, opt.min_visible)
    for split, c in done['counts'].items():
        print(f'{split}: {c["images"]} images -> {c["tiles"]} tiles; boxes {c["boxes"]}: kept {c["kept"]}, '
              f'dropped {c["dropped"]} (<{opt.min_visible:.0%} inside any tile); {c["label_rows"]} label rows')
    print(f'dataset YAML: {out / (out.name + ".yaml")}')
    pool, pool_tag = None, ''
    if opt.train_subset:  # with --labelled-fraction: split this subset
        pool = train_subset(out, opt.train_subset, opt.subset_seed)
        pool_tag = f'sub{opt.train_subset}_s{opt.subset_seed}'
    if opt.labelled_fraction is not None:
        split_labelled(out, opt.labelled_fraction, opt.split_seed, pool, pool_tag)
    return out


if __name__ == '__main__':
    try:
        main(parse_opt())
    except (ValueError, FileNotFoundError) as e:  # user errors: one line, no traceback
        sys.exit(f'deeppcb_tiles.py: error: {e}')
