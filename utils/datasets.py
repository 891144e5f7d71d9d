"""The detection / segmentation Dataset and its DataLoader (YOLOv5 v7.0 semantics).

Batches are `(imgs uint8 [B,3,H,W] RGB, targets [n,6] (img_idx, cls, xc, yc, w, h), paths, shapes)`;
a segmentation dataset (`masks=True`, YOLO-seg polygon labels) adds the instance masks at 1/4 resolution
as a fifth element (layouts in utils/polygon_masks.py).
Augmentation randomness comes from a generator seeded by (seed, epoch, image index): the same seed
gives the same batches whatever the number of workers. The sampler hands the epoch and the mosaic
switch to the workers inside each sample key, so both work with persistent workers.
"""
import hashlib
import logging
import math
import os
import random
from multiprocessing.pool import ThreadPool
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from utils.augment import (apply_flips, augment_hsv, copy_paste_boxes, copy_paste_polygons, draw_flips, letterbox,
                           mixup, mixup_polygons, mosaic4, mosaic4_polygons, random_perspective,
                           random_perspective_polygons)
from utils.boxes import xyn2xy, xywhn2xyxy, xyxy2xywhn
from utils.dataset_yaml import as_list
from utils.files import write_atomically
from utils.label_cache import (NUM_THREADS, DatasetError, check_class_ids, check_polygon_rows, img2label_paths,
                               list_image_files, report, scan_with_cache, summarize, user_cache_dir,
                               writable_dir)
from utils.polygon_masks import flip_masks, sample_masks
from utils.sample_plan import check_device_augment, collate_plans, plan_sample

LOGGER = logging.getLogger('yolov5')
ROOT = Path(__file__).resolve().parents[1]
PIN_MEMORY = torch.cuda.is_available()  # pinning needs an accelerator; on CPU it only warns
MAX_LOAD_RETRIES = 10


# ================================================================ dataset
def default_hyp():
    """YOLOv5's default training hyperparameters (hyp.scratch-low.yaml), used when augment has no hyp."""
    return yaml.safe_load((ROOT / 'data' / 'hyps' / 'hyp.scratch-low.yaml').read_text())


class ImageLoadError(OSError):
    """An image that passed the scan could not be decoded at training time."""

    def __init__(self, msg, index):
        super().__init__(msg)
        self.index = index


def _save_npy(npy, im):
    npy.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(npy, lambda f: np.save(f, im))


def _npy_holds_image(npy, hw):
    """True when `npy` is a complete uint8 BGR image of (h, w) `hw`; reads only the header (memory map)."""
    try:
        im = np.load(npy, mmap_mode='r', allow_pickle=False)
    except (OSError, ValueError, EOFError):  # truncated, empty or not a .npy at all
        return False
    return im.dtype == np.uint8 and im.shape == (*hw, 3)


def _npy_path(im_file):
    """Where `--cache disk` keeps a decoded image: beside it, or in the user cache when read-only."""
    p = Path(im_file)
    if writable_dir(p.parent):
        return p.with_suffix('.npy')
    return user_cache_dir() / 'npy' / (hashlib.sha256(str(p.resolve()).encode()).hexdigest()[:24] + '.npy')


def _available_memory():
    try:
        return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    except (ValueError, OSError, AttributeError):
        return None


class LoadImagesAndLabels(Dataset):
    """Images + YOLO labels, verified and cached, with YOLOv5 training augmentation.

    `masks=True` makes it a segmentation dataset: every label row must be a polygon (`self.segments`
    holds them, normalised), the polygons follow the augmentation, and a sample gains its masks at
    1/`downsample_ratio` resolution (`overlap`: one instance-index map per image, as v7.0's default)."""

    def __init__(self, path, img_size=640, batch_size=16, augment=False, hyp=None, rect=False,
                 image_weights=False, cache_images=None, single_cls=False, stride=32, pad=0.0,
                 prefix='', seed=0, nc=None, unlabeled=None, masks=False, overlap=True, downsample_ratio=4,
                 device_augment=False):
        self.img_size, self.augment = img_size, augment
        self.device_augment = device_augment  # samples are plans for utils/device_augment.py, not images
        self.masks, self.overlap, self.downsample_ratio = masks, overlap, downsample_ratio
        self.segments = None  # segmentation only: per image, per label row its (k, 2) normalised polygon
        self.hyp = dict(hyp if hyp is not None else default_hyp() if augment else {})
        self.image_weights = image_weights
        if device_augment:
            check_device_augment(self.hyp, masks, augment)
        self.rect = False if image_weights else rect
        self.mosaic = self.augment and not self.rect  # mosaic makes square images; rect keeps shapes
        self.stride, self.seed, self.prefix, self.path = stride, seed, prefix, path
        self.sample_weights = None  # set by the trainer for --image-weights (read by the sampler)
        self._bad = set()
        self._load_labels(path, nc, single_cls)
        self.is_unlabeled = np.zeros(self.n, bool)  # per image: True = no labels (distillation only)
        if unlabeled:
            self._add_unlabeled(unlabeled)
        self.unlabeled_files = {f for f, u in zip(self.im_files, self.is_unlabeled) if u}
        self.indices = np.arange(self.n)
        self.batch = np.floor(np.arange(self.n) / batch_size).astype(int)
        self.batch_shapes = None
        if self.rect:
            self._sort_for_rect(batch_size, pad)
        # mosaic partners of an image come from its own pool (labelled / unlabeled); None: one pool
        self._pools = {flag: np.flatnonzero(self.is_unlabeled == flag) for flag in (False, True)} \
            if self.is_unlabeled.any() else None
        self.ims, self.im_hw0, self.im_hw = [None] * self.n, [None] * self.n, [None] * self.n
        self.npy_files = [None] * self.n
        if cache_images:
            self.cache_images('ram' if cache_images is True else cache_images)

    # ------------------------------------------------------------ labels
    def _load_labels(self, path, nc, single_cls):
        im_files = list_image_files(path)
        label_files = img2label_paths(im_files)
        p = Path(path) if isinstance(path, (str, Path)) else None
        cache_path = p.with_suffix('.cache') if p is not None and p.is_file() else \
            Path(label_files[0]).parent.with_suffix('.cache')
        records, self.from_cache, self.cache_path = scan_with_cache(im_files, label_files, cache_path)
        self.scan = summarize(records)
        report(self.scan, path, self.prefix, self.from_cache)
        kept = [r for r in records if r.status != 'corrupt']
        if not kept:
            raise DatasetError(f'{self.prefix}No usable images in {path}: all {len(records)} are corrupt or '
                               f'unreadable (see the warnings above)')
        if self.augment and not any(len(r.labels) for r in kept):
            raise DatasetError(f'{self.prefix}No labels left in {path} after filtering ({self.scan["missing"]} '
                               f'missing, {self.scan["empty"]} empty label files): cannot train')
        self.im_files = [r.im_file for r in kept]
        self.label_files = img2label_paths(self.im_files)
        self.labels = [r.labels.copy() for r in kept]
        if self.masks:
            check_polygon_rows(self.label_files, kept, where=f'{self.prefix}{path}')
            self.segments = [r.polygons() for r in kept]
        self.shapes = np.array([r.shape for r in kept], np.float64).reshape(-1, 2)  # (w, h)
        if single_cls:  # every class becomes 0; nc is not checked (callers pass nc=1 here)
            for lb in self.labels:
                lb[:, 0] = 0
        elif nc is not None:
            check_class_ids(self.label_files, self.labels, nc, where=f'{self.prefix}{path}')
        self.n = len(kept)

    def _add_unlabeled(self, path):
        """Append the images of `path` (folder, txt list, or a list of them) without labels.

        Their label files are never read: an unlabeled image is not a "missing label" background.
        Images already in the labelled set stay labelled (they are dropped from the unlabeled pool).
        """
        prefix = self.prefix.replace('train', 'unlabeled') if 'train' in self.prefix else 'unlabeled: '
        try:
            im_files = list_image_files(path)
        except FileNotFoundError as e:
            raise FileNotFoundError(f'{prefix}{e}') from None
        except DatasetError as e:
            raise DatasetError(f'{prefix}{e}') from None
        p = Path(path) if isinstance(path, (str, Path)) else None
        cache_path = p.with_suffix('.unlabeled.cache') if p is not None and p.is_file() else \
            Path(im_files[0]).parent.with_suffix('.unlabeled.cache')
        records, from_cache, _ = scan_with_cache(im_files, None, cache_path)
        report(summarize(records), ', '.join(map(str, as_list(path))), prefix, from_cache)
        labelled = set(self.im_files)
        kept = [r for r in records if r.status == 'unlabeled' and r.im_file not in labelled]
        if len(kept) < sum(r.status == 'unlabeled' for r in records):
            LOGGER.warning(f'{prefix}WARNING: {sum(r.status == "unlabeled" for r in records) - len(kept)} '
                           f'images are also in the labelled set; they stay labelled')
        if not kept:
            raise DatasetError(f'{prefix}No usable unlabeled images in {path} (see the report above)')
        self.im_files += [r.im_file for r in kept]
        self.label_files += [''] * len(kept)
        self.labels += [np.zeros((0, 5), np.float32) for _ in kept]
        if self.masks:
            self.segments += [[] for _ in kept]
        self.shapes = np.concatenate([self.shapes, np.array([r.shape for r in kept], np.float64).reshape(-1, 2)])
        self.is_unlabeled = np.concatenate([self.is_unlabeled, np.ones(len(kept), bool)])
        self.n += len(kept)

    @property
    def n_unlabeled(self):
        return int(self.is_unlabeled.sum())

    def _sort_for_rect(self, batch_size, pad):
        """Sort by aspect ratio and give each batch the smallest stride-multiple shape that fits it."""
        ar = self.shapes[:, 1] / self.shapes[:, 0]  # h / w
        order = ar.argsort()
        self.im_files = [self.im_files[i] for i in order]
        self.label_files = [self.label_files[i] for i in order]
        self.labels = [self.labels[i] for i in order]
        if self.masks:
            self.segments = [self.segments[i] for i in order]
        self.is_unlabeled = self.is_unlabeled[order]
        self.shapes, ar = self.shapes[order], ar[order]
        nb = self.batch[-1] + 1
        shapes = [[1, 1]] * nb
        for i in range(nb):
            ari = ar[self.batch == i]
            mini, maxi = ari.min(), ari.max()
            if maxi < 1:
                shapes[i] = [maxi, 1]
            elif mini > 1:
                shapes[i] = [1, 1 / mini]
        self.batch_shapes = np.ceil(np.array(shapes) * self.img_size / self.stride + pad).astype(int) * self.stride

    # ------------------------------------------------------------ images
    def _decode_image(self, i):
        f = self.im_files[i]
        im = cv2.imread(f, cv2.IMREAD_COLOR)  # grey / 1-channel PNG comes back as 3 channels
        if im is None:
            raise ImageLoadError(f'cannot decode {f}', i)
        return im

    def _read_image(self, i):
        """The BGR image, from its --cache disk file when there; a file gone bad is rebuilt, not fatal."""
        npy = self.npy_files[i]
        if npy is None:
            return self._decode_image(i)
        try:
            return np.load(npy, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            LOGGER.warning(f'{self.prefix}WARNING: bad --cache disk file {npy} ({e}); decoding the image again')
        im = self._decode_image(i)
        try:
            _save_npy(npy, im)
        except OSError:
            self.npy_files[i] = None  # cannot rewrite it: decode this image every time
        return im

    def load_image(self, i):
        """(image resized so its long side is img_size, (h0, w0), (h, w)), from the RAM cache when there."""
        if self.ims[i] is not None:
            return self.ims[i], self.im_hw0[i], self.im_hw[i]
        im = self._read_image(i)
        h0, w0 = im.shape[:2]
        r = self.img_size / max(h0, w0)
        if r != 1:
            # INTER_AREA keeps small objects when shrinking for validation; training is not that sensitive.
            # int() truncates as v7.0 does (later YOLOv5 rounds up): one pixel row more or less moves every
            # box of the image by a fraction of a pixel, enough to change mAP in the third decimal.
            interp = cv2.INTER_LINEAR if (self.augment or r > 1) else cv2.INTER_AREA
            im = cv2.resize(im, (int(w0 * r), int(h0 * r)), interpolation=interp)
        return im, (h0, w0), im.shape[:2]

    def cache_images(self, mode):
        """Decode all images once: 'ram' keeps the resized images, 'disk' writes decoded .npy files."""
        if mode not in ('ram', 'disk'):
            raise ValueError(f"cache must be 'ram', 'disk' or None, got {mode!r}")
        if mode == 'ram' and not self._ram_cache_fits():
            return
        fn = self._cache_one_to_disk if mode == 'disk' else self._cache_one_to_ram
        with ThreadPool(NUM_THREADS) as pool:
            ok = sum(pool.map(fn, range(self.n)))
        LOGGER.info(f'{self.prefix}Cached {ok}/{self.n} images ({mode})')

    def _cache_one_to_ram(self, i):
        try:
            self.ims[i], self.im_hw0[i], self.im_hw[i] = self.load_image(i)
            return True
        except ImageLoadError:
            return False  # reported and replaced when the sample is requested

    def _cache_one_to_disk(self, i):
        npy = _npy_path(self.im_files[i])
        try:
            if self._npy_needs_writing(npy, i):
                _save_npy(npy, self._decode_image(i))
            self.npy_files[i] = npy
            return True
        except (ImageLoadError, OSError):
            return False

    def _npy_needs_writing(self, npy, i):
        """Missing, older than its image, or unreadable / wrong shape (e.g. an interrupted earlier run)."""
        if not npy.exists() or npy.stat().st_mtime < os.stat(self.im_files[i]).st_mtime:
            return True
        w, h = self.shapes[i]
        if _npy_holds_image(npy, (int(h), int(w))):
            return False
        LOGGER.warning(f'{self.prefix}WARNING: bad --cache disk file {npy} (truncated or wrong shape); rebuilding it')
        return True

    def _ram_cache_fits(self):
        sample = [self.load_image(i)[0].nbytes for i in range(0, self.n, max(1, self.n // 30))]
        need = np.mean(sample) * self.n * 1.1
        avail = _available_memory()
        if avail is not None and need > 0.9 * avail:
            LOGGER.warning(f'{self.prefix}WARNING: --cache ram needs {need / 1e9:.1f} GB, only '
                           f'{avail / 1e9:.1f} GB free; not caching')
            return False
        return True

    # ------------------------------------------------------------ samples
    def __len__(self):
        return self.n

    def close_mosaic(self):
        """Switch mosaic off (e.g. for the final epochs); the sampler passes it on to the workers."""
        self.mosaic = False

    def _decode_key(self, key):
        if isinstance(key, (tuple, list)):
            index, epoch, mosaic = key
            return int(index), int(epoch), bool(mosaic)
        return int(key), 0, self.mosaic

    def __getitem__(self, key):
        index, epoch, use_mosaic = self._decode_key(key)
        rng = np.random.default_rng([self.seed, epoch, index])
        for _ in range(MAX_LOAD_RETRIES):
            if index in self._bad:
                index = (index + 1) % self.n  # deterministic replacement keeps the epoch going
                continue
            try:
                if self.device_augment:
                    return plan_sample(self, index, rng, use_mosaic)
                return self._get_sample(index, rng, use_mosaic)
            except ImageLoadError as e:
                self._bad.add(e.index)  # may be a mosaic partner rather than `index` itself
                LOGGER.warning(f'{self.prefix}WARNING: {e}; using another image instead')
        raise DatasetError(f'{self.prefix}{MAX_LOAD_RETRIES} images in a row failed to load near index {index}')

    def _random_index(self, rng, like=None):
        """A random usable image; with `like`, one of the same pool (labelled or unlabeled) as it."""
        pool = self._pools[bool(self.is_unlabeled[like])] if like is not None and self._pools else None
        for _ in range(MAX_LOAD_RETRIES):
            i = int(rng.integers(self.n)) if pool is None else int(pool[rng.integers(len(pool))])
            if i not in self._bad:
                return i
        return i

    def _get_sample(self, index, rng, use_mosaic):
        hyp = self.hyp
        img, labels, polygons, shapes = self._load_geometry(index, rng, use_mosaic)
        if len(labels):
            labels[:, 1:5] = xyxy2xywhn(labels[:, 1:5], w=img.shape[1], h=img.shape[0], clip=True, eps=1e-3)
        masks = None
        if self.masks:  # before the flips, which flip the masks with the image (as v7.0)
            labels, masks = sample_masks(img.shape[:2], labels, polygons, self.overlap, self.downsample_ratio)
        if self.augment:
            augment_hsv(img, rng, hgain=hyp.get('hsv_h', 0.0), sgain=hyp.get('hsv_s', 0.0),
                        vgain=hyp.get('hsv_v', 0.0))
            flips = draw_flips(rng, flipud=hyp.get('flipud', 0.0), fliplr=hyp.get('fliplr', 0.0))
            img, labels = apply_flips(img, labels, *flips)
            if masks is not None:
                masks = flip_masks(masks, *flips)
        labels_out = torch.zeros((len(labels), 6))
        if len(labels):
            labels_out[:, 1:] = torch.from_numpy(np.asarray(labels, np.float32))
        img = np.ascontiguousarray(img.transpose((2, 0, 1))[::-1])  # HWC BGR -> CHW RGB
        sample = torch.from_numpy(img), labels_out, self.im_files[index], shapes
        return sample if masks is None else (*sample, torch.from_numpy(masks))

    def _load_geometry(self, index, rng, use_mosaic):
        """Image, pixel-xyxy labels, their pixel polygons (None for detection) and val shapes, after
        mosaic / mixup or letterbox and the random perspective."""
        hyp = self.hyp
        if use_mosaic and rng.random() < hyp.get('mosaic', 1.0):
            img, labels, polygons = self.load_mosaic(index, rng)
            if rng.random() < hyp.get('mixup', 0.0):
                other = self.load_mosaic(self._random_index(rng, like=index), rng)
                if polygons is None:
                    img, labels = mixup(img, labels, *other[:2], rng)
                else:
                    img, labels, polygons = mixup_polygons(img, labels, polygons, *other, rng)
            return img, labels, polygons, None
        img, labels, polygons, shapes = self._load_letterboxed(index)
        if self.augment:
            img, labels, polygons = self._random_perspective(img, labels, polygons, rng)
        return img, labels, polygons, shapes

    def perspective_options(self, border=(0, 0)):
        """The random_perspective keywords of this dataset's hyp."""
        hyp = self.hyp
        return dict(degrees=hyp.get('degrees', 0.0), translate=hyp.get('translate', 0.0), scale=hyp.get('scale', 0.0),
                    shear=hyp.get('shear', 0.0), perspective=hyp.get('perspective', 0.0), border=border)

    def _random_perspective(self, img, labels, polygons, rng, border=(0, 0)):
        kw = self.perspective_options(border)
        if polygons is None:
            return (*random_perspective(img, labels, rng, **kw), None)
        return random_perspective_polygons(img, labels, polygons, rng, **kw)

    def _load_letterboxed(self, index):
        """One image letterboxed to img_size (or its rect batch shape) with pixel-xyxy labels, their pixel
        polygons (None for detection) and val shapes."""
        img, (h0, w0), (h, w) = self.load_image(index)
        shape = self.batch_shapes[self.batch[index]] if self.rect else self.img_size
        img, ratio, pad = letterbox(img, shape, auto=False, scaleup=self.augment)
        if img is self.ims[index]:
            img = img.copy()  # never let in-place augmentation touch the RAM cache
        shapes = (h0, w0), ((h / h0, w / w0), pad)  # what val needs to map boxes back to the original
        labels = self.labels[index].copy()
        if len(labels):
            labels[:, 1:] = xywhn2xyxy(labels[:, 1:], ratio[0] * w, ratio[1] * h, pad[0], pad[1])
        polygons = None
        if self.masks:
            polygons = [xyn2xy(p, ratio[0] * w, ratio[1] * h, pad[0], pad[1]) for p in self.segments[index]]
        return img, labels, polygons, shapes

    def mosaic_indices(self, index, rng):
        """`index` and 3 random partners from its pool, in random tile order."""
        return [int(i) for i in rng.permutation([index] + [self._random_index(rng, like=index) for _ in range(3)])]

    def load_mosaic(self, index, rng):
        """4-image mosaic around `index` (3 random partners), then copy-paste and random perspective
        -> (img, pixel-xyxy labels, pixel polygons or None for detection).

        Partners come from `index`'s own pool: a mosaic is all labelled or all unlabeled, so one flag per
        image says whether the detection loss may read its (missing) boxes."""
        hyp, s = self.hyp, self.img_size
        indices = self.mosaic_indices(index, rng)
        samples = [(self.load_image(i)[0], self.labels[i]) for i in indices]
        if self.masks:
            img4, labels4, polygons4 = mosaic4_polygons(samples, [self.segments[i] for i in indices], s, rng)
            img4, labels4, polygons4 = copy_paste_polygons(img4, labels4, polygons4, rng,
                                                           p=hyp.get('copy_paste', 0.0))
        else:
            img4, labels4 = mosaic4(samples, s, rng)
            img4, labels4 = copy_paste_boxes(img4, labels4, rng, p=hyp.get('copy_paste', 0.0))
            polygons4 = None
        return self._random_perspective(img4, labels4, polygons4, rng, border=(-s // 2, -s // 2))


# ================================================================ loader
def collate_fn(batch):
    """Stack images; concatenate targets with column 0 set to the image's index in the batch, and the
    masks of segmentation samples (overlap: [B, h, w] index maps; else [n, h, w], one per target row)."""
    im, label, path, shapes, *masks = zip(*batch)
    for i, lb in enumerate(label):
        lb[:, 0] = i
    out = torch.stack(im, 0), torch.cat(label, 0), path, shapes
    return (*out, torch.cat(masks[0], 0)) if masks else out


def _sample_keys(indices, epoch, mosaic):
    return [(int(i), epoch, mosaic) for i in indices]


class KeySampler(Sampler):
    """Yields (index, epoch, mosaic) keys; shuffles with a generator seeded by (seed, epoch)."""

    def __init__(self, dataset, shuffle=False, seed=0):
        self.dataset, self.shuffle, self.seed, self.epoch = dataset, shuffle, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.dataset)

    def __iter__(self):
        epoch, n = self.epoch, len(self.dataset)
        self.epoch += 1  # the next pass is the next epoch unless set_epoch says otherwise
        g = np.random.default_rng([self.seed, epoch, 0x5eed])
        w = self.dataset.sample_weights
        if w is not None:  # --image-weights: draw with replacement by weight
            w = np.asarray(w, np.float64)
            idx = g.choice(n, n, p=w / w.sum())
        else:
            idx = g.permutation(n) if self.shuffle else np.arange(n)
        return iter(_sample_keys(idx, epoch, self.dataset.mosaic))


class DistributedKeySampler(DistributedSampler):
    """DistributedSampler (same sharding and set_epoch) that yields (index, epoch, mosaic) keys."""

    def __iter__(self):
        epoch = self.epoch
        idx = list(super().__iter__())
        self.epoch += 1
        return iter(_sample_keys(idx, epoch, self.dataset.mosaic))


class DistributedRectSampler(DistributedKeySampler):
    """--rect under DDP: each rank takes whole rectangular batches, so every batch it makes has one shape.

    The dataset gave each batch of `batch_size` sorted images one shape (`dataset.batch`); batches go to the
    ranks in turn, a short last batch is filled up with its own images, and a rank with fewer batches
    repeats batches from the start, so every rank makes the same number of full batches (DDP steps together).
    """

    def __init__(self, dataset, batch_size, num_replicas=None, rank=None):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        groups = [np.flatnonzero(dataset.batch == b) for b in range(int(dataset.batch.max()) + 1)]
        full = [np.resize(g, batch_size) for g in groups]  # a short batch repeats its own images
        per_rank = math.ceil(len(full) / self.num_replicas)
        full += full[:per_rank * self.num_replicas - len(full)]  # every rank the same number of batches
        self.batches = full[self.rank::self.num_replicas]

    def __len__(self):
        return sum(len(b) for b in self.batches)

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        return iter(_sample_keys(np.concatenate(self.batches), epoch, self.dataset.mosaic))


def seed_worker(worker_id):
    """Seed the global RNGs of a worker from its torch seed (base seed + worker id)."""
    s = torch.initial_seed() % 2 ** 32
    np.random.seed(s)
    random.seed(s)
    cv2.setNumThreads(0)  # workers are the parallelism; OpenCV threads would oversubscribe the CPU


def create_dataloader(path, imgsz, batch_size, stride, hyp=None, augment=False, cache=None, rect=False,
                      rank=-1, workers=8, pad=0.0, shuffle=False, seed=0, single_cls=False, prefix='',
                      image_weights=False, nc=None, unlabeled=None, masks=False, overlap=True, downsample_ratio=4,
                      device_augment=False):
    """Build the dataset and its loader -> (loader, dataset). `nc` enables the class-id check;
    `unlabeled` (path or list) adds images without labels, flagged in `dataset.is_unlabeled`;
    `masks` makes batches carry instance masks (segmentation; `overlap` picks v7.0's layout);
    `device_augment` makes batches carry un-augmented tiles + sample plans for utils/device_augment.py."""
    if rect and shuffle:
        LOGGER.warning(f'{prefix}WARNING: --rect is incompatible with shuffling; shuffle=False')
        shuffle = False
    dataset = LoadImagesAndLabels(path, imgsz, batch_size, augment=augment, hyp=hyp, rect=rect,
                                  image_weights=image_weights, cache_images=cache, single_cls=single_cls,
                                  stride=int(stride), pad=pad, prefix=prefix, seed=seed, nc=nc,
                                  unlabeled=unlabeled, masks=masks, overlap=overlap,
                                  downsample_ratio=downsample_ratio, device_augment=device_augment)
    batch_size = min(batch_size, len(dataset))
    nd = max(torch.cuda.device_count(), 1)
    nw = min((os.cpu_count() or 1) // nd, batch_size if batch_size > 1 else 0, workers)
    if rank == -1:
        sampler = KeySampler(dataset, shuffle=shuffle, seed=seed)
    elif dataset.rect:
        sampler = DistributedRectSampler(dataset, batch_size)
    else:
        sampler = DistributedKeySampler(dataset, shuffle=shuffle, seed=seed)
    generator = torch.Generator()
    generator.manual_seed(6148914691236517205 + seed + max(rank, 0))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=nw,
                        pin_memory=PIN_MEMORY,
                        collate_fn=collate_plans if device_augment else collate_fn, worker_init_fn=seed_worker,
                        generator=generator, persistent_workers=nw > 0)
    return loader, dataset
