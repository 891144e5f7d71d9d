"""Instance masks for a training sample, rasterised from its polygons as YOLOv5 v7.0 does it.

Each polygon is filled at the network input's resolution, then the mask is resized to
1/downsample_ratio (the prototype resolution, 1/4 by default) so that a mask pixel matches what the
loss compares it with. Two layouts, as v7.0's `--overlap-mask` option:
- overlap (default): one int32 map `[1, h, w]` per image holding, per pixel, the 1-based index of the
  instance drawn there (0 = background); instances are drawn largest first so small ones stay on top,
  and the sample's label rows are reordered to that order (row i <-> index i + 1);
- non-overlap: one uint8 0/1 mask `[n, h, w]` per label row, in row order.
"""
import cv2
import numpy as np


def polygon_mask(shape, polygon, downsample_ratio=4):
    """uint8 0/1 mask of one pixel-xy polygon (k, 2) in an image of `shape` (h, w), at 1/downsample_ratio."""
    h, w = shape
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.asarray(polygon).astype(np.int32)], 1)  # truncated to int pixels, as v7.0
    return cv2.resize(mask, (w // downsample_ratio, h // downsample_ratio))


def instance_masks(shape, polygons, downsample_ratio=4):
    """uint8 [n, h / r, w / r]: one 0/1 mask per polygon, in order."""
    h, w = shape[0] // downsample_ratio, shape[1] // downsample_ratio
    masks = [polygon_mask(shape, p, downsample_ratio) for p in polygons]
    return np.stack(masks) if masks else np.zeros((0, h, w), np.uint8)


def overlap_mask(shape, polygons, downsample_ratio=4):
    """(int32 [h / r, w / r] instance-index map, order): instances sorted by mask area, largest first
    (ties keep their row order), drawn in that order so that smaller ones overwrite larger ones;
    pixel value i + 1 is the instance `order[i]`."""
    masks = instance_masks(shape, polygons, downsample_ratio)
    order = np.argsort(-masks.sum((1, 2)), kind='stable')
    index_map = np.zeros(masks.shape[1:], np.int32)
    for i, j in enumerate(order):
        index_map[masks[j] > 0] = i + 1
    return index_map, order


def sample_masks(shape, labels, polygons, overlap=True, downsample_ratio=4):
    """Masks of one sample -> (labels, masks): with `overlap` the labels come back reordered to match the
    index map `[1, h / r, w / r]`; without, masks are `[n, h / r, w / r]` in label order."""
    if not overlap:
        return labels, instance_masks(shape, polygons, downsample_ratio)
    if not len(labels):
        return labels, np.zeros((1, shape[0] // downsample_ratio, shape[1] // downsample_ratio), np.int32)
    index_map, order = overlap_mask(shape, polygons, downsample_ratio)
    return labels[order], index_map[None]


def flip_masks(masks, ud, lr):
    """Flip `[..., h, w]` masks up-down / left-right like the image they belong to."""
    if ud:
        masks = np.flip(masks, -2)
    if lr:
        masks = np.flip(masks, -1)
    return np.ascontiguousarray(masks)
