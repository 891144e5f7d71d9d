"""Find images and their YOLO label files, verify both, and cache the result.

Every image and label is checked once; the outcome is stored in a `.cache` file (plain numpy
arrays, never pickles) keyed by the paths, sizes and modification times of all files, so a
changed file re-triggers the scan. A label row is a box (`class xc yc w h`) or a YOLO-seg polygon
(`class x1 y1 ... xn yn`, n >= 3): a polygon row's box is the box of its points, and its points are
kept too (for segmentation). Bad images are dropped, bad label rows are dropped, and
everything dropped is reported. Class ids are kept as the files give them: whether they fit the
dataset's `nc` is decided afterwards (`check_class_ids`), so the cache does not depend on nc.
"""
import hashlib
import logging
import multiprocessing
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from utils.cli import UserError
from utils.files import write_atomically

LOGGER = logging.getLogger('yolov5')

IMG_FORMATS = ('bmp', 'dng', 'jpeg', 'jpg', 'mpo', 'png', 'tif', 'tiff', 'webp', 'pfm')
CACHE_VERSION = 'yolov5-distill-labels-3'  # 2: class ids >= nc kept (checked after the scan); 3: polygons kept
NUM_THREADS = min(8, max(1, os.cpu_count() or 1))
MIN_FILES_FOR_PROCESSES = 100  # below this, starting worker processes costs more than it saves
MIN_IMAGE_SIDE = 10  # pixels; smaller images are almost certainly broken
SHOWN_MESSAGES = 10  # how many offending files the summary lists


class DatasetError(UserError):
    """The dataset cannot be used (nothing found, nothing left after filtering, bad YAML)."""


@dataclass
class ScanRecord:
    """Outcome of verifying one image and its label file."""
    im_file: str
    status: str  # 'found' | 'missing' | 'empty' | 'corrupt' | 'unlabeled'
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0, 5), np.float32))
    shape: tuple = (0, 0)  # (w, h) after EXIF rotation
    dropped_rows: int = 0
    message: str = ''
    point_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # per row; 0: a box row
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))  # all polygons' xy

    def polygons(self):
        """Per label row its normalised polygon (k, 2), or None for a box row."""
        parts = np.split(self.points, np.cumsum(self.point_counts)[:-1]) if len(self.point_counts) else []
        return [p if k else None for p, k in zip(parts, self.point_counts)]


# ---------------------------------------------------------------- file lists
def img2label_paths(im_files):
    """Map `.../images/.../x.jpg` to `.../labels/.../x.txt` (last `/images/` only, as YOLOv5)."""
    sa, sb = f'{os.sep}images{os.sep}', f'{os.sep}labels{os.sep}'
    return [sb.join(x.rsplit(sa, 1)).rsplit('.', 1)[0] + '.txt' for x in im_files]


def is_image_file(name):
    return str(name).rsplit('.', 1)[-1].lower() in IMG_FORMATS


def _images_in_list_file(txt):
    """Image paths listed one per line in a txt file; relative entries are relative to its folder."""
    out = []
    for line in Path(txt).read_text(encoding='utf-8').splitlines():
        line = line.strip()
        if line:
            p = Path(line)
            out.append(str(p if p.is_absolute() else (Path(txt).parent / p).resolve()))
    return out


def list_image_files(path):
    """All image files named by `path`: a folder (recursive), a txt list, an image, or a list of these."""
    sources = path if isinstance(path, (list, tuple)) else [path]
    files = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            files += [str(f) for f in p.rglob('*') if f.is_file()]
        elif p.is_file() and p.suffix.lower() == '.txt':
            files += _images_in_list_file(p)
        elif p.is_file():
            files.append(str(p))
        else:
            raise FileNotFoundError(f'{src} does not exist (expected an image folder, a txt list or an image)')
    images = sorted(f for f in files if is_image_file(f))
    if not images:
        raise DatasetError(f'No images found in {path}. Supported formats: {", ".join(IMG_FORMATS)}')
    return images


# ---------------------------------------------------------------- verification
def exif_size(img):
    """(w, h) of a PIL image as displayed, i.e. after its EXIF orientation (what cv2.imread returns)."""
    w, h = img.size
    try:
        if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # 90 or 270 degree rotations
            return h, w
    except Exception:  # broken EXIF data is not a reason to drop the image
        pass
    return w, h


def verify_image(im_file):
    """Return (w, h) of a readable image, or raise ValueError saying why it is unusable."""
    try:
        with Image.open(im_file) as im:
            im.verify()  # structure and checksums, without a full decode
        with Image.open(im_file) as im:
            shape = exif_size(im)
            fmt = (im.format or '').lower()
    except Exception as e:
        raise ValueError(f'unreadable or corrupt image ({type(e).__name__}: {e})') from None
    if fmt not in IMG_FORMATS:
        raise ValueError(f'unsupported image format {fmt!r}')
    if min(shape) < MIN_IMAGE_SIDE:
        raise ValueError(f'image size {shape} is under {MIN_IMAGE_SIDE} pixels')
    if fmt in ('jpeg', 'jpg', 'mpo'):
        with open(im_file, 'rb') as f:
            f.seek(-2, 2)
            if f.read() != b'\xff\xd9':  # a JPEG always ends with the EOI marker
                raise ValueError('truncated JPEG (no end-of-image marker)')
    return shape


def _row_to_box(values):
    """Box (xc, yc, w, h) from 4 box values or from polygon points (x1 y1 x2 y2 ...)."""
    if len(values) == 4:
        return values
    xs, ys = values[0::2], values[1::2]
    x1, x2, y1, y2 = min(xs), max(xs), min(ys), max(ys)
    return [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]


def _check_column_count(n_coords):
    """A box has 4 coordinates, a polygon an even number >= 6 (3 points); anything else says why not."""
    if n_coords == 4:
        return
    if n_coords == 0:
        raise ValueError('no coordinates')
    if n_coords % 2:
        raise ValueError('odd number of coordinates')
    if n_coords < 6:
        raise ValueError('polygon with fewer than 3 points')


def parse_label_row(tokens, nc=None):
    """One label row -> ([cls, xc, yc, w, h], polygon (k, 2) or None for a box row), or raise ValueError
    naming the reason it is dropped.

    With `nc`, a class id >= nc is also a reason; the dataset scan passes None and checks class ids
    against nc for the whole dataset instead (a too-small nc is a YAML error, not a bad row)."""
    _check_column_count(len(tokens) - 1)
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        raise ValueError('non-numeric value') from None
    if not all(np.isfinite(values)):
        raise ValueError('non-finite value')
    cls, coords = values[0], values[1:]
    if not cls.is_integer() or cls < 0 or (nc is not None and cls >= nc):
        raise ValueError(f'class id outside 0..{nc - 1}' if nc else 'class id not a non-negative integer')
    if min(coords) < 0 or max(coords) > 1:
        raise ValueError('coordinates outside 0..1')
    box = _row_to_box(coords)
    if box[2] <= 0 or box[3] <= 0:
        raise ValueError('zero-size box')
    polygon = np.array(coords, np.float32).reshape(-1, 2) if len(coords) > 4 else None
    return [cls] + list(box), polygon


def read_label_file(lb_file, nc=None):
    """Parse a label file -> (labels [n, 5] float32, per row its polygon (k, 2) or None,
    {reason: [line numbers]} of dropped rows)."""
    text = Path(lb_file).read_text(encoding='utf-8')
    rows, polygons, problems, seen = [], [], {}, set()
    for k, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        try:
            row, polygon = parse_label_row(tokens, nc)
            key = tuple(np.float32(row))
            if key in seen:
                raise ValueError('duplicate row')
        except ValueError as e:
            problems.setdefault(str(e), []).append(k)
            continue
        seen.add(key)
        rows.append(row)
        polygons.append(polygon)
    return np.array(rows, np.float32).reshape(-1, 5), polygons, problems


def read_labels(lb_file, nc=None):
    """Parse a label file -> (labels [n, 5] float32, {reason: [line numbers]} of dropped rows)."""
    labels, _, problems = read_label_file(lb_file, nc)
    return labels, problems


def _pack_polygons(polygons):
    """Per-row polygons (or None) -> (point counts [n] int64, all points [m, 2] float32) for the cache."""
    counts = np.array([0 if p is None else len(p) for p in polygons], np.int64)
    points = [p for p in polygons if p is not None]
    return counts, np.concatenate(points) if points else np.zeros((0, 2), np.float32)


def _describe_problems(problems):
    """'reason (lines 2, 3), other reason (line 7)': every reason, at most 5 line numbers each."""
    parts = []
    for reason, lines in problems.items():
        shown = ', '.join(map(str, lines[:5])) + (', ...' if len(lines) > 5 else '')
        parts.append(f"{reason} (line{'s' if len(lines) > 1 else ''} {shown})")
    return '; '.join(parts)


def verify_image_label(im_file, lb_file):
    """Check one image and its labels; never raises (every failure becomes a ScanRecord).

    `lb_file` None: an unlabeled image (distillation only), whose label file is never read."""
    try:
        shape = verify_image(im_file)
    except (ValueError, OSError) as e:
        return ScanRecord(im_file, 'corrupt', message=f'{im_file}: {e}; image dropped')
    if lb_file is None:
        return ScanRecord(im_file, 'unlabeled', shape=shape)
    if not os.path.isfile(lb_file):
        return ScanRecord(im_file, 'missing', shape=shape)
    try:
        labels, polygons, problems = read_label_file(lb_file)
    except (OSError, UnicodeDecodeError) as e:
        return ScanRecord(im_file, 'corrupt', message=f'{lb_file}: unreadable label file ({e}); image dropped')
    dropped = sum(len(v) for v in problems.values())
    msg = f'{lb_file}: {dropped} row(s) dropped: {_describe_problems(problems)}' if problems else ''
    status = 'found' if len(labels) else 'empty'
    counts, points = _pack_polygons(polygons)
    return ScanRecord(im_file, status, labels, shape, dropped_rows=dropped, message=msg, point_counts=counts,
                      points=points)


def _process_context():
    """'fork' on Linux: workers start in milliseconds and need not re-import the calling script.
    Elsewhere the platform default. None when this process may not have children (a daemon)."""
    if multiprocessing.current_process().daemon:
        return None
    return multiprocessing.get_context('fork' if sys.platform.startswith('linux') else None)


def scan_files(im_files, label_files):
    """Verify all pairs, keeping the order. Decoding headers and parsing text is CPU-bound Python,
    so large sets use worker processes (threads would share one GIL); small ones stay in-process."""
    workers = min(NUM_THREADS, len(im_files) // MIN_FILES_FOR_PROCESSES)
    ctx = _process_context() if workers > 1 else None
    if ctx is None:
        return list(map(verify_image_label, im_files, label_files))
    Image.init()  # load PIL's format plugins once here rather than in every worker
    chunksize = max(1, min(64, len(im_files) // (4 * workers)))
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        return list(pool.map(verify_image_label, im_files, label_files, chunksize=chunksize))


# ---------------------------------------------------------------- cache
def files_hash(paths):
    """Hash of the paths, sizes and modification times of all files."""
    h = hashlib.sha256(CACHE_VERSION.encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f'{p}|{st.st_size}|{st.st_mtime_ns}\n'.encode())
        except OSError:
            h.update(f'{p}|absent\n'.encode())
    return h.hexdigest()


def writable_dir(d):
    """True for an existing folder we may write to. Permission bits count even for root, so a
    read-only dataset folder (mode r-x) is respected when running as root."""
    try:
        return Path(d).is_dir() and os.access(d, os.W_OK) and bool(os.stat(d).st_mode & 0o222)
    except OSError:
        return False


def user_cache_dir():
    """Writable folder for caches when the dataset folder is read-only."""
    d = Path(os.environ.get('YOLOV5_DISTILL_CACHE_DIR') or Path.home() / '.cache' / 'yolov5-distill')
    try:
        d.mkdir(parents=True, exist_ok=True)
        if os.access(d, os.W_OK):
            return d
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / 'yolov5-distill-cache'


def cache_candidates(preferred):
    """The cache path beside the labels, then the fallback in the user cache folder."""
    preferred = Path(preferred).resolve()
    tag = hashlib.sha256(str(preferred).encode()).hexdigest()[:16]
    return [preferred, user_cache_dir() / 'labels' / f'{preferred.stem}-{tag}.cache']


def save_cache(path, records, hash_):
    """Write the scan results as plain arrays (loadable with allow_pickle=False), atomically."""
    lengths = np.array([len(r.labels) for r in records], np.int64)
    arrays = dict(
        version=np.array(CACHE_VERSION), hash=np.array(hash_),
        im_files=np.array([r.im_file for r in records], dtype=str),
        status=np.array([r.status for r in records], dtype=str),
        messages=np.array([r.message for r in records], dtype=str),
        shapes=np.array([r.shape for r in records], np.int64).reshape(-1, 2),
        dropped=np.array([r.dropped_rows for r in records], np.int64),
        lengths=lengths,
        labels=np.concatenate([r.labels for r in records]) if records else np.zeros((0, 5), np.float32),
        point_counts=np.concatenate([r.point_counts for r in records]) if records else np.zeros(0, np.int64),
        points=np.concatenate([r.points for r in records]) if records else np.zeros((0, 2), np.float32))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda f: np.savez(f, **arrays))


def _split(array, lengths):
    """Consecutive pieces of `array` with the given lengths."""
    return np.split(array, np.cumsum(lengths)[:-1]) if len(lengths) else []


def load_cache(path, hash_):
    """Records from a cache file when it exists and matches `hash_`; None otherwise."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z['version']) != CACHE_VERSION or str(z['hash']) != hash_:
                return None
            labels, counts = _split(z['labels'], z['lengths']), _split(z['point_counts'], z['lengths'])
            points = _split(z['points'], [c.sum() for c in counts])
            return [ScanRecord(str(f), str(s), lb.astype(np.float32), tuple(int(v) for v in sh), int(d), str(m),
                               c.astype(np.int64), p.astype(np.float32))
                    for f, s, lb, sh, d, m, c, p in zip(z['im_files'], z['status'], labels, z['shapes'],
                                                         z['dropped'], z['messages'], counts, points)]
    except Exception:  # missing, unreadable, or from another version: rescan
        return None


def _try_save(paths, records, hash_):
    for i, p in enumerate(paths):
        if i == 0 and not writable_dir(Path(p).parent):
            continue  # never write next to read-only data
        try:
            save_cache(p, records, hash_)
            return p
        except OSError:
            continue
    LOGGER.warning('WARNING: label cache not written: no writable location (tried %s)', ', '.join(map(str, paths)))
    return None


def scan_with_cache(im_files, label_files, cache_path):
    """Records for all images, from the cache when valid, else scanned and cached.

    `label_files` None scans unlabeled images (images only). Returns (records, from_cache, cache
    path or None when no cache could be written).
    """
    if label_files is None:
        label_files = [None] * len(im_files)
    hash_ = files_hash(list(im_files) + [f for f in label_files if f is not None])
    paths = cache_candidates(cache_path)
    for p in paths:
        records = load_cache(p, hash_)
        if records is not None and len(records) == len(im_files):
            return records, True, p
    records = scan_files(im_files, label_files)
    return records, False, _try_save(paths, records, hash_)


# ---------------------------------------------------------------- class ids
def _short_file_list(files, shown=3):
    """'/abs/dir/a.txt, b.txt, c.txt, ... (12 files)': the first in full, the others by name."""
    names = [str(files[0])] + [Path(f).name for f in files[1:shown]]
    more = f', ... ({len(files)} files)' if len(files) > shown else ''
    return ', '.join(names) + more


def check_class_ids(label_files, labels, nc, where):
    """Raise DatasetError when any label class id is >= nc: training on the rest would silently
    lose those objects (YOLOv5 stops too). `labels` are [n, 5] arrays parallel to `label_files`."""
    bad = [(f, int(lb[:, 0].max())) for f, lb in zip(label_files, labels) if len(lb) and lb[:, 0].max() >= nc]
    if bad:
        top = max(c for _, c in bad)
        files = _short_file_list([f for f, _ in bad])
        raise DatasetError(f'{where}: labels have class {top} but nc={nc}: {files}; '
                           f'set nc/names in the dataset YAML to cover every class id (0..{top})')


def check_polygon_rows(label_files, records, where):
    """Raise DatasetError when a label file of a segmentation dataset has box-only rows: they have no
    mask to learn from, and v7.0 would silently turn them into two-point 'polygons'."""
    bad = [f for f, r in zip(label_files, records) if (r.point_counts == 0).any()]
    if bad:
        raise DatasetError(f'{where}: box-only label rows (class xc yc w h) in a segmentation dataset: '
                           f'{_short_file_list(bad)}; every row needs a polygon (class x1 y1 x2 y2 ... xn yn, '
                           f'normalised): add polygons, or train a detection model (not -seg) on this data')


# ---------------------------------------------------------------- report
def summarize(records):
    """Counts as YOLOv5 reports them, plus the number of dropped label rows."""
    counts = {k: 0 for k in ('found', 'missing', 'empty', 'corrupt', 'unlabeled')}
    for r in records:
        counts[r.status] += 1
    counts['dropped_rows'] = sum(r.dropped_rows for r in records)
    counts['messages'] = [r.message for r in records if r.message]
    return counts


def report(summary, where, prefix='', from_cache=False):
    """Log the summary line and the first offending files."""
    s = summary
    verb = 'Cached' if from_cache else 'Scanned'
    if s['unlabeled'] and not (s['found'] or s['missing'] or s['empty']):  # an unlabeled pool: no labels read
        line = f"{prefix}{verb} unlabeled images in {where}: {s['unlabeled']} usable, {s['corrupt']} corrupt"
    else:
        line = (f"{prefix}{verb} images and labels in {where}: {s['found']} found, {s['missing']} missing, "
                f"{s['empty']} empty, {s['corrupt']} corrupt, {s['dropped_rows']} label rows dropped")
    msgs = s['messages']
    (LOGGER.warning if msgs else LOGGER.info)(line)
    for m in msgs[:SHOWN_MESSAGES]:
        LOGGER.warning(f'{prefix}WARNING: {m}')
    if len(msgs) > SHOWN_MESSAGES:
        LOGGER.warning(f'{prefix}WARNING: ... and {len(msgs) - SHOWN_MESSAGES} more files with problems')
    return line
