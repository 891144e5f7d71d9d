"""Training augmentation on the training device: the heavy half of what utils/datasets.py does per image.

With a small student the CPU loader bounds training: per image it pastes a 2s x 2s mosaic, warps it,
converts to HSV and back, flips. Here the workers only decode, letterbox and draw the random numbers
(utils/sample_plan.py); `DeviceAugment` applies a whole batch's plans at once:

    augment = DeviceAugment(device, hyp, imgsz)
    imgs, targets = augment(batch)  # batch from create_dataloader(..., device_augment=True)

imgs: uint8 [B, 3, H, W] RGB on `device`; targets: [n, 6] (image, class, xc, yc, w, h normalised), as the
CPU path's batches. Each step reproduces its OpenCV counterpart in utils/augment.py given the same plan
(tests/test_device_augment.py compares them), so training sees the same distribution.

Why plain torch (`torch.nn.functional.grid_sample`, tensor maths) rather than kornia or DALI: no new
dependency to install and pin; the very same code runs on CPU, which is what lets the tests compare it
pixel by pixel with the OpenCV path on a machine without a GPU; and the work is a handful of big
batched kernels (one grid_sample, some element-wise HSV maths), which is what those libraries would run
too. The only per-image Python work left is pasting the mosaic tiles (4 slice copies per image).
"""
import logging

import torch
import torch.nn.functional as F

from utils.augment import PAD_VALUE, box_candidates
from utils.boxes import xyxy2xywhn

LOGGER = logging.getLogger('yolov5')
HUE_RANGE = 180  # OpenCV's uint8 hue: 0..179, 30 per 60 degrees


class DeviceAugment:
    """Applies the sample plans of a device-augment batch on `device` (see the module docstring).

    `hyp` and `imgsz` are the loader's: every random draw already sits in the plans, so they only
    document which augmentation this object stands for."""

    def __init__(self, device, hyp=None, imgsz=None):
        self.device = torch.device(device)
        self.hyp, self.imgsz = dict(hyp or {}), imgsz
        if self.device.type == 'cpu':
            LOGGER.warning('WARNING: --device-augment on the CPU is much slower than the CPU loader path '
                           '(docs/BENCHMARKS.md); it is meant for GPU training')

    def __call__(self, batch):
        colour = bool((batch[0].hsv != 1).any())  # asked on the host: no device sync
        plan = batch[0].to(self.device, non_blocking=True)
        targets = batch[1].to(self.device, non_blocking=True)
        imgs = warp(paste_tiles(plan), batch[0].M, plan.out_hw)  # host M: a 3x3 inverse is no work for a GPU
        if colour:  # hyp hsv_* all 0: the CPU path skips the HSV round trip too
            imgs = augment_hsv(imgs, plan.hsv)
        imgs = flip(imgs, plan.flips)
        return imgs, transform_targets(targets, plan)


# ---------------------------------------------------------------- pixels
def paste_tiles(plan):
    """The canvases: uint8 [B, 3, Hc, Wc] RGB, PAD_VALUE where no tile lands (cv2's mosaic fill)."""
    tiles = plan.tiles.flip(-1).permute(0, 3, 1, 2)  # HWC BGR -> CHW RGB, a view
    canvas = torch.full((len(plan), 3, *plan.canvas_hw), PAD_VALUE, dtype=torch.uint8, device=tiles.device)
    for k, (i, (x1a, y1a, x2a, y2a, x1b, y1b, x2b, y2b)) in enumerate(zip(plan.owner, plan.slots)):
        canvas[i, :, y1a:y2a, x1a:x2a] = tiles[k, :, y1b:y2b, x1b:x2b]
    return canvas


def warp(canvas, M, out_hw):
    """cv2.warpAffine / warpPerspective (bilinear, constant PAD_VALUE border) of each canvas by its 3x3 `M`
    (canvas pixels -> output pixels) -> uint8 [B, 3, *out_hw]."""
    b, _, hc, wc = canvas.shape
    ho, wo = out_hw
    ys, xs = torch.meshgrid(torch.arange(ho, device=canvas.device), torch.arange(wo, device=canvas.device),
                            indexing='ij')
    # float32 is ample: 1e-4 px at 1280 px, where OpenCV itself interpolates at 1/32 px
    dst = torch.stack((xs, ys, torch.ones_like(xs)), -1).reshape(1, -1, 3).to(torch.float32)
    inverse = torch.linalg.inv(M.to(torch.float64)).to(canvas.device, torch.float32)  # output pixel -> its source
    xy = dst @ inverse.transpose(1, 2)
    xy = xy[..., :2] / xy[..., 2:]
    # align_corners=True puts -1 and 1 on the centres of the first and last pixels, as OpenCV's integer grid
    grid = xy * xy.new_tensor([2 / max(wc - 1, 1), 2 / max(hc - 1, 1)]) - 1
    # zeros padding around (canvas - PAD) is a constant PAD_VALUE border, blended exactly as OpenCV blends it
    out = F.grid_sample(canvas.float() - PAD_VALUE, grid.view(b, ho, wo, 2), mode='bilinear',
                        padding_mode='zeros', align_corners=True) + PAD_VALUE
    return out.round_().clamp_(0, 255).to(torch.uint8)


def augment_hsv(imgs, gains):
    """utils/augment.augment_hsv for a batch of uint8 RGB images with per-image gains [B, 3], through
    OpenCV's uint8 HSV (hue 0..179) and its lookup-table truncation, so results match to rounding."""
    hsv = torch.stack(rgb_to_hsv(imgs), 1).flatten(2).long()  # [B, 3, H * W]
    # augment_hsv's lookup tables, in float64 as numpy makes them: x * gain truncates at the same integers
    x = torch.arange(256, device=imgs.device, dtype=torch.float64)
    lut = x * gains.to(imgs.device, torch.float64).unsqueeze(-1)  # [B, 3, 256]
    lut = torch.cat((torch.remainder(lut[:, :1], HUE_RANGE), lut[:, 1:].clamp(0, 255)), 1).floor().float()
    hue, sat, val = lut.gather(2, hsv).view(*imgs.shape).unbind(1)
    return hsv_to_rgb(hue, sat / 255, val / 255)


def rgb_to_hsv(imgs):
    """OpenCV's uint8 BGR2HSV, in its 12-bit fixed point (so hue and saturation round as OpenCV's do)
    -> (hue 0..179, saturation, value) int [B, H, W]."""
    x = imgs.to(torch.int32)
    r, g, b = x.unbind(1)
    v, diff = x.amax(1), x.amax(1) - x.amin(1)
    shift, half = 12, 1 << 11
    n = torch.arange(256, device=x.device, dtype=torch.float64).clamp(min=1)
    sdiv = torch.round((255 << shift) / n).to(torch.int32)  # OpenCV's division tables, index 0 unused
    hdiv = torch.round((HUE_RANGE << shift) / (6 * n)).to(torch.int32)
    sat = torch.where(v > 0, (diff * sdiv[v] + half) >> shift, 0)
    raw = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    hue = torch.where(diff > 0, (raw * hdiv[diff] + half) >> shift, 0)
    hue = torch.where(hue < 0, hue + HUE_RANGE, hue)
    return hue, sat, v


def hsv_to_rgb(hue, sat, val):
    """OpenCV's HSV2RGB for uint8 (hue 0..179, sat/val given 0..1) -> uint8 [B, 3, H, W] RGB.

    Channel n (5: red, 3: green, 1: blue) is v - v s clamp(min(k, 4 - k), 0, 1) with k = (n + h) mod 6, h the
    hue in 60-degree sectors: OpenCV's (v, p, q, t) sector table in element-wise form, no gathers."""
    h = (hue * (6 / HUE_RANGE)).unsqueeze(1)
    k = torch.remainder(h + h.new_tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1), 6)
    vs = (val * sat).unsqueeze(1)
    rgb = val.unsqueeze(1) - vs * torch.minimum(k, 4 - k).clamp_(0, 1)
    # OpenCV 5 converts back in fixed point; flooring the float result matches it on ~95% of pixels (others +-1)
    return (rgb * 255 + 1e-4).floor_().clamp_(0, 255).to(torch.uint8)


def flip(imgs, flips):
    """Per image up-down (flips[:, 0]) and left-right (flips[:, 1]) flips."""
    ud, lr = flips[:, 0].view(-1, 1, 1, 1), flips[:, 1].view(-1, 1, 1, 1)
    imgs = torch.where(ud, imgs.flip(2), imgs)
    return torch.where(lr, imgs.flip(3), imgs)


# ---------------------------------------------------------------- boxes
def warp_points(points, M):
    """Points [n, k, 2] through each row's 3x3 `M` [n, 3, 3] (with the perspective divide)."""
    xy = torch.cat((points, torch.ones_like(points[..., :1])), -1) @ M.transpose(1, 2)
    return xy[..., :2] / xy[..., 2:]


def clipped_quad_box(quad, width, height):
    """xyxy box of each convex quadrilateral [n, 4, 2] clipped to the width x height image (zeros if none
    of it is inside): the box of its vertices inside the image, its edges' crossings of the image border
    and the image corners inside it, which are the vertices of the clipped polygon (utils/augment.py
    clips with Sutherland-Hodgman; this is the same polygon without a loop)."""
    limits = float(width), float(height)  # host numbers: no device sync
    points = [quad]
    valid = [((quad >= 0) & (quad <= quad.new_tensor(limits))).all(-1)]
    p, d = quad, quad.roll(-1, 1) - quad  # edge i runs from vertex i to vertex i + 1
    for axis in (0, 1):
        other = 1 - axis
        for limit in (0.0, limits[axis]):
            t = (limit - p[..., axis]) / d[..., axis]  # inf / nan for edges parallel to the line: never valid
            at = p[..., other] + t * d[..., other]
            valid.append((t >= 0) & (t <= 1) & (at >= 0) & (at <= limits[other]))
            crossing = torch.empty_like(quad)
            crossing[..., axis], crossing[..., other] = limit, at
            points.append(crossing)
    corners = quad.new_tensor([[0, 0], [width, 0], [width, height], [0, height]])
    rel = corners.view(1, 1, 4, 2) - p.unsqueeze(2)  # [n, edge, corner, 2]
    cross = d[..., None, 0] * rel[..., 1] - d[..., None, 1] * rel[..., 0]
    area = (p[..., 0] * d[..., 1] - p[..., 1] * d[..., 0]).sum(1)  # twice the signed area (shoelace)
    # a corner is inside when it is on the same side of every edge; a flat quad (zero area) holds none
    inside = ((cross >= 0).all(1) | (cross <= 0).all(1)) & (area.abs() > 1e-9).unsqueeze(1)
    points.append(corners.expand(len(quad), 4, 2))
    valid.append(inside)
    points, valid = torch.cat(points, 1), torch.cat(valid, 1).unsqueeze(-1)
    lo = torch.where(valid, points, torch.full_like(points, float('inf'))).amin(1)
    hi = torch.where(valid, points, torch.full_like(points, -float('inf'))).amax(1)
    box = torch.cat((lo, hi), 1)
    return torch.where(valid.any(1), box, torch.zeros_like(box))


def transform_boxes(boxes, M, width, height):
    """utils/augment.transform_boxes with one matrix per box: xyxy [n, 4] through M [n, 3, 3] -> the boxes
    enclosing the warped boxes clipped to the width x height image."""
    quad = warp_points(boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].view(-1, 4, 2), M)
    aligned = (M[:, 0, 1] == 0) & (M[:, 1, 0] == 0) & (M[:, 2, 0] == 0) & (M[:, 2, 1] == 0)
    # an axis-aligned warp keeps a rectangle: clip its box (as the CPU path does, even when wholly outside)
    new = torch.where(aligned.unsqueeze(1), torch.cat((quad.amin(1), quad.amax(1)), 1),
                      clipped_quad_box(quad, width, height))
    new[:, [0, 2]] = new[:, [0, 2]].clamp(0, width)
    new[:, [1, 3]] = new[:, [1, 3]].clamp(0, height)
    return new


def transform_targets(targets, plan):
    """Canvas-pixel targets (image, class, xyxy) -> warped, filtered, normalised xywh, flipped targets, as
    utils/augment.transform_boxes + box_candidates + the dataset's normalisation + apply_flips."""
    if not len(targets):
        return targets.new_zeros((0, 6))
    ho, wo = plan.out_hw
    i = targets[:, 0].long()
    boxes, M = targets[:, 2:6].to(torch.float64), plan.M[i].to(torch.float64)
    new = transform_boxes(boxes, M, wo, ho)
    keep = box_candidates((boxes * plan.scale[i].unsqueeze(1)).T, new.T, area_thr=0.10)
    i, xywh = i[keep], xyxy2xywhn(new[keep].float(), w=wo, h=ho, clip=True, eps=1e-3)
    ud, lr = plan.flips[i, 0], plan.flips[i, 1]
    xywh[:, 1] = torch.where(ud, 1 - xywh[:, 1], xywh[:, 1])
    xywh[:, 0] = torch.where(lr, 1 - xywh[:, 0], xywh[:, 0])
    return torch.cat((i.unsqueeze(1).to(xywh.dtype), targets[keep, 1:2], xywh), 1)
