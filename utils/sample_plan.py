"""The worker half of device augmentation (`create_dataloader(..., device_augment=True)`).

A worker decodes and resizes (or reads the RAM cache) and letterboxes, then draws every random number
the CPU path (utils/datasets.py `_get_sample`) would draw, in the same order from the same generator,
but applies none of them: it returns a `SamplePlan` (the un-augmented tiles, where they go on the
canvas, the perspective matrix, HSV gains and flips). utils/device_augment.py applies the plans of a
whole batch on the training device. Same seed, same plan: a sample's augmentation is the one the CPU
path would have made, up to interpolation rounding.

Batches keep the loader's 4-tuple layout `(PlannedBatch, targets, paths, shapes)`; targets are
`[n, 6]` = (image index, class, x1, y1, x2, y2) in pixels of the image's canvas, before the warp.
"""
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import get_worker_info

from utils.augment import draw_flips, draw_hsv_gains, draw_perspective, mosaic_labels, mosaic_slots
from utils.cli import UserError


def check_device_augment(hyp, masks, augment):
    """Refuse what the device path does not do yet, in one line naming the fix."""
    if not augment:
        raise ValueError('device_augment needs augment=True (it only moves training augmentation)')
    if masks:
        raise UserError('--device-augment does not handle segmentation masks yet: drop --device-augment '
                        'for -seg models')
    for key in ('mixup', 'copy_paste'):
        if hyp.get(key, 0.0):
            raise UserError(f'--device-augment does not do {key} yet: set {key}: 0.0 in --hyp or drop '
                            f'--device-augment')


@dataclass
class SamplePlan:
    """One training image's augmentation, drawn but not applied."""
    tiles: list  # HWC BGR uint8 images: 4 for a mosaic, else the letterboxed image
    slots: np.ndarray  # [tiles, 8] int: dst x1 y1 x2 y2 on the canvas, src x1 y1 x2 y2 in the tile
    canvas_hw: tuple  # the canvas the tiles are pasted on (mosaic: 2s x 2s)
    out_hw: tuple  # the warped image's size
    M: np.ndarray  # 3x3, canvas pixels -> output pixels
    scale: float  # the scale drawn (box_candidates compares areas with it)
    hsv: np.ndarray  # (hue, saturation, value) gains; ones = unchanged
    flips: tuple  # (up-down, left-right)


def plan_sample(ds, index, rng, use_mosaic):
    """The plan of `ds[index]` (a LoadImagesAndLabels) -> (plan, labels [n, 6], path, shapes); the draws are
    `_get_sample`'s, one for one."""
    hyp, s = ds.hyp, ds.img_size
    if use_mosaic and rng.random() < hyp.get('mosaic', 1.0):
        indices = ds.mosaic_indices(index, rng)
        tiles = [ds.load_image(i)[0] for i in indices]
        shapes_hw = [t.shape[:2] for t in tiles]
        slots = mosaic_slots(shapes_hw, s, rng)
        labels = mosaic_labels([ds.labels[i] for i in indices], shapes_hw, slots, s)
        canvas, border, shapes = (2 * s, 2 * s), (-s // 2, -s // 2), None
    else:
        img, labels, _, shapes = ds._load_letterboxed(index)
        tiles, (h, w) = [img], img.shape[:2]
        slots = [((0, 0, w, h), (0, 0, w, h))]
        canvas, border = (h, w), (0, 0)
    M, scale, width, height = draw_perspective(rng, canvas, **ds.perspective_options(border))
    if shapes is None:
        rng.random()  # the CPU path's mixup draw, after the mosaic's warp (mixup is refused: it never fires)
    hsv = draw_hsv_gains(rng, hgain=hyp.get('hsv_h', 0.0), sgain=hyp.get('hsv_s', 0.0), vgain=hyp.get('hsv_v', 0.0))
    flips = draw_flips(rng, flipud=hyp.get('flipud', 0.0), fliplr=hyp.get('fliplr', 0.0))
    plan = SamplePlan(tiles, np.array([(*a, *b) for a, b in slots], np.int64).reshape(-1, 8), canvas,
                      (height, width), M, float(scale), np.ones(3) if hsv is None else np.asarray(hsv), flips)
    labels_out = torch.zeros((len(labels), 6))
    if len(labels):
        labels_out[:, 1:] = torch.from_numpy(np.asarray(labels, np.float32))
    return plan, labels_out, ds.im_files[index], shapes


class PlannedBatch:
    """A batch of plans as tensors: what utils/device_augment.py needs, and nothing decoded twice.

    `tiles` uint8 [T, h, w, 3] BGR (each tile top-left, zero padded to the largest), `owner`/`slots` say
    which image each tile belongs to and where it goes (host lists: they drive slicing, not maths)."""

    def __init__(self, tiles, owner, slots, canvas_hw, out_hw, M, scale, hsv, flips):
        self.tiles, self.owner, self.slots = tiles, owner, slots
        self.canvas_hw, self.out_hw = canvas_hw, out_hw
        self.M, self.scale, self.hsv, self.flips = M, scale, hsv, flips

    def __len__(self):
        return len(self.M)

    def _map(self, fn):
        return PlannedBatch(fn(self.tiles), self.owner, self.slots, self.canvas_hw, self.out_hw,
                            *(fn(t) for t in (self.M, self.scale, self.hsv, self.flips)))

    def pin_memory(self):  # called by the DataLoader's pin-memory thread
        return self._map(lambda t: t.pin_memory())

    def to(self, device, non_blocking=False):
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))


def collate_plans(batch):
    """collate_fn of a device-augment loader -> (PlannedBatch, targets [n, 6], paths, shapes)."""
    plans, labels, paths, shapes = zip(*batch)
    for i, lb in enumerate(labels):
        lb[:, 0] = i
    out_hw = {p.out_hw for p in plans}
    if len(out_hw) != 1:
        raise ValueError(f'one batch must warp to one size, got {sorted(out_hw)}')
    tiles = [t for p in plans for t in p.tiles]
    stack = torch.zeros((len(tiles), max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles), 3),
                        dtype=torch.uint8)
    if get_worker_info() is not None:  # filled in shared memory: no copy on the way to the main process
        stack.share_memory_()
    view = stack.numpy()
    for k, t in enumerate(tiles):
        view[k, :t.shape[0], :t.shape[1]] = t
    canvas_hw = max(p.canvas_hw[0] for p in plans), max(p.canvas_hw[1] for p in plans)
    planned = PlannedBatch(stack, [i for i, p in enumerate(plans) for _ in p.tiles],
                           np.concatenate([p.slots for p in plans]).tolist(), canvas_hw, out_hw.pop(),
                           torch.from_numpy(np.stack([p.M for p in plans])),
                           torch.tensor([p.scale for p in plans], dtype=torch.float64),
                           torch.from_numpy(np.stack([p.hsv for p in plans])),
                           torch.tensor([p.flips for p in plans], dtype=torch.bool))
    return planned, torch.cat(labels, 0), paths, shapes
