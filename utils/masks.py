"""Instance-mask maths on tensors, with YOLOv5 v7.0's semantics.

A segmentation model predicts, per box, nm mask coefficients and, per image, nm prototype maps at
1/4 of the input size; a mask is sigmoid(coefficients @ prototypes) > 0.5 inside its box. Masks
come out as bool tensors [n, h, w]; the functions below crop, scale, compare and outline them.
"""
import cv2
import numpy as np
import torch
import torch.nn.functional as F

from utils.boxes import letterbox_geometry


def crop_mask(masks, boxes):
    """Zero masks [n, h, w] outside their xyxy boxes [n, 4] (in the masks' pixels): pixel (col, row)
    stays when x1 <= col < x2 and y1 <= row < y2."""
    _, h, w = masks.shape
    x1, y1, x2, y2 = boxes[:, :, None, None].unbind(1)  # each [n, 1, 1]
    cols = torch.arange(w, device=masks.device, dtype=boxes.dtype).view(1, 1, w)
    rows = torch.arange(h, device=masks.device, dtype=boxes.dtype).view(1, h, 1)
    return masks * ((cols >= x1) & (cols < x2) & (rows >= y1) & (rows < y2))


def mask_probabilities(protos, coeffs):
    """sigmoid(coeffs [n, nm] @ protos [nm, mh, mw]) -> [n, mh, mw], in float32."""
    nm, mh, mw = protos.shape
    return (coeffs.float() @ protos.float().view(nm, -1)).sigmoid().view(-1, mh, mw)


def _upsample(masks, shape):
    """Bilinear resize of [n, h, w] to shape (h, w), as v7.0 (align_corners=False, no antialias)."""
    return F.interpolate(masks[None].float(), tuple(shape), mode='bilinear', align_corners=False)[0]


def _empty(protos, shape):
    return torch.zeros((0, *shape), dtype=torch.bool, device=protos.device)


def process_mask(protos, coeffs, boxes, shape, upsample=False):
    """Masks of n detections: protos [nm, mh, mw] of their image, coeffs [n, nm], xyxy boxes [n, 4]
    in pixels of the network input of size shape (h, w).

    Cropped to the box at prototype resolution; `upsample` then resizes them to `shape` (v7.0's
    process_mask). Returns bool [n, mh, mw], or [n, h, w] when upsampled.
    """
    _, mh, mw = protos.shape
    if not len(coeffs):
        return _empty(protos, shape if upsample else (mh, mw))
    ih, iw = shape
    masks = mask_probabilities(protos, coeffs)
    masks = crop_mask(masks, boxes.float() * boxes.new_tensor([mw / iw, mh / ih, mw / iw, mh / ih]).float())
    if upsample:
        masks = _upsample(masks, shape)
    return masks > 0.5


def process_mask_upsample(protos, coeffs, boxes, shape):
    """As process_mask, but resized to `shape` first and cropped there (v7.0's finer variant, which
    its val.py uses for --save-json). Returns bool [n, h, w]."""
    if not len(coeffs):
        return _empty(protos, shape)
    masks = _upsample(mask_probabilities(protos, coeffs), shape)
    return crop_mask(masks, boxes.float()) > 0.5


def scale_masks(img1_shape, masks, img0_shape, ratio_pad=None):
    """Masks [n, h1, w1] made on the letterboxed input img1 (h, w) -> bool [n, h0, w0] on the
    original image: padding cut off (v7.0's integer bounds), then a bilinear resize (`ratio_pad`:
    see utils.boxes.letterbox_geometry)."""
    h0, w0 = img0_shape[:2]
    if not len(masks):
        return torch.zeros((0, h0, w0), dtype=torch.bool, device=masks.device)
    h1, w1 = img1_shape[:2]
    _, (pad_w, pad_h) = letterbox_geometry(img1_shape, img0_shape, ratio_pad)
    top, left, bottom, right = int(pad_h), int(pad_w), int(h1 - pad_h), int(w1 - pad_w)
    return _upsample(masks[:, top:bottom, left:right], (h0, w0)) > 0.5


def _sample_on_image(masks, input_shape, img0_shape, ratio_pad=None):
    """Float masks [n, h, w] covering the whole letterboxed input (h, w any resolution) -> [n, h0, w0]:
    each original-image pixel centre is mapped exactly through the letterbox and sampled bilinearly
    (no integer padding bounds, which at 1/4 resolution would shift masks by up to 4 input pixels)."""
    gain, (pad_w, pad_h) = letterbox_geometry(input_shape, img0_shape, ratio_pad)
    (ih, iw), (h0, w0) = input_shape[:2], img0_shape[:2]
    dev = masks.device
    xs = ((torch.arange(w0, device=dev) + 0.5) * gain + pad_w) / iw * 2 - 1  # grid_sample's [-1, 1] span
    ys = ((torch.arange(h0, device=dev) + 0.5) * gain + pad_h) / ih * 2 - 1
    grid = torch.stack((xs.view(1, w0).expand(h0, w0), ys.view(h0, 1).expand(h0, w0)), -1)[None]
    return F.grid_sample(masks[None].float(), grid, mode='bilinear', padding_mode='border', align_corners=False)[0]


def process_mask_native(protos, coeffs, boxes, input_shape, img0_shape, ratio_pad=None):
    """Masks at the original image's resolution (v7.0's --retina-masks idea, done at the source):
    probabilities at prototype resolution sampled straight onto img0 (h0, w0), then cropped by the
    xyxy `boxes` given in img0 pixels. Returns bool [n, h0, w0]."""
    if not len(coeffs):
        return _empty(protos, img0_shape[:2])
    masks = _sample_on_image(mask_probabilities(protos, coeffs), input_shape, img0_shape, ratio_pad)
    return crop_mask(masks, boxes.float()) > 0.5


def scale_polygons(img1_shape, polygons, img0_shape, ratio_pad=None, normalize=False):
    """Polygons (list of float [k, 2] arrays, x y in img1 pixels) -> img0 pixels, clipped to it;
    `normalize` divides by img0's width and height (YOLO-seg label coordinates)."""
    gain, (pad_w, pad_h) = letterbox_geometry(img1_shape, img0_shape, ratio_pad)
    h0, w0 = img0_shape[:2]
    out = []
    for p in polygons:
        p = (np.asarray(p, dtype=np.float32).reshape(-1, 2) - (pad_w, pad_h)) / gain
        p = p.clip(0, (w0, h0))
        out.append((p / (w0, h0) if normalize else p).astype(np.float32))
    return out


def masks_to_polygons(masks):
    """One outline per mask [n, h, w]: float32 [k, 2] (x, y) pixel vertices of its outer contour with
    the most vertices (v7.0's 'largest'); [0, 2] for an empty mask."""
    polygons = []
    for m in masks.to('cpu', torch.uint8).numpy():
        contours = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
        best = max(contours, key=len).reshape(-1, 2) if contours else np.zeros((0, 2))
        polygons.append(best.astype(np.float32))
    return polygons


def mask_iou(masks1, masks2, eps=1e-7):
    """Pairwise IoU of masks [N, ...] and [M, ...] of the same size (bool or 0/1) -> [N, M]."""
    a, b = masks1.flatten(1).float(), masks2.flatten(1).float()
    inter = a @ b.T
    return inter / (a.sum(1)[:, None] + b.sum(1)[None] - inter + eps)
