"""Mask maths (utils/masks.py): masks from prototypes, cropping, scaling back, polygons, IoU."""
import cv2
import numpy as np
import pytest
import torch

from utils.augment import letterbox
from utils.boxes import letterbox_geometry
from utils.masks import (crop_mask, mask_iou, masks_to_polygons, process_mask, process_mask_native,
                         process_mask_upsample, scale_masks, scale_polygons)


def test_crop_mask_keeps_pixels_inside_half_open_boxes():
    masks = torch.ones(2, 6, 8)
    boxes = torch.tensor([[1.0, 2.0, 4.0, 5.0], [0.5, 0.0, 2.5, 1.5]])
    out = crop_mask(masks, boxes)
    expected = torch.zeros(2, 6, 8)
    expected[0, 2:5, 1:4] = 1  # cols 1..3, rows 2..4
    expected[1, 0:2, 1:3] = 1  # col >= 0.5 -> from 1; col < 2.5 -> up to 2; rows 0..1
    assert torch.equal(out, expected)
    assert crop_mask(torch.ones(2, 6, 8, dtype=torch.bool), boxes).dtype == torch.bool


def _brute_force_masks(protos, coeffs, boxes, shape):
    """Per detection and pixel: sigmoid(sum_k c_k * P_k) > 0.5 inside the box scaled to the prototypes."""
    nm, mh, mw = protos.shape
    out = torch.zeros(len(coeffs), mh, mw, dtype=torch.bool)
    for n, (c, box) in enumerate(zip(coeffs, boxes)):
        x1, y1, x2, y2 = (box * torch.tensor([mw / shape[1], mh / shape[0]] * 2)).tolist()
        for r in range(mh):
            for col in range(mw):
                if x1 <= col < x2 and y1 <= r < y2:
                    out[n, r, col] = torch.sigmoid((c * protos[:, r, col]).sum()) > 0.5
    return out


def test_process_mask_is_coefficients_times_prototypes_inside_the_box():
    g = torch.Generator().manual_seed(0)
    protos = torch.randn(4, 8, 12, generator=g)
    coeffs = torch.randn(3, 4, generator=g)
    boxes = torch.tensor([[0.0, 0.0, 48.0, 32.0], [8.0, 4.0, 30.0, 20.0], [40.0, 12.0, 47.0, 31.0]])
    masks = process_mask(protos, coeffs, boxes, (32, 48))  # input 32 x 48 -> prototypes at 1/4
    assert masks.dtype == torch.bool and masks.shape == (3, 8, 12)
    assert torch.equal(masks, _brute_force_masks(protos, coeffs, boxes, (32, 48)))
    assert masks.any() and not masks[1, :, :2].any()  # outside box 1 (x < 8 px = 2 prototype cells)


def test_upsampled_masks_are_bilinear_then_thresholded():
    protos = torch.zeros(1, 4, 4)
    protos[0, :, 2:] = 4.0  # right half strongly on, left half at sigmoid 0.5 (off: strict > 0.5)
    coeffs = torch.ones(1, 1)
    box = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    small = process_mask(protos, coeffs, box, (16, 16))
    big = process_mask(protos, coeffs, box, (16, 16), upsample=True)
    assert small[0, 0].tolist() == [False, False, True, True]
    assert big.shape == (1, 16, 16) and big[0, 0, :6].sum() == 0 and big[0, 0, 8:].all()
    fine = process_mask_upsample(protos, coeffs, torch.tensor([[0.0, 0.0, 12.0, 16.0]]), (16, 16))
    assert fine.shape == (1, 16, 16) and fine[0, :, 8:12].all() and not fine[0, :, 12:].any()  # cropped at 16 px


def test_no_detections_give_empty_masks():
    protos = torch.rand(32, 8, 8)
    none = torch.zeros(0, 32)
    assert process_mask(protos, none, torch.zeros(0, 4), (32, 32)).shape == (0, 8, 8)
    assert process_mask(protos, none, torch.zeros(0, 4), (32, 32), upsample=True).shape == (0, 32, 32)
    assert process_mask_upsample(protos, none, torch.zeros(0, 4), (32, 32)).shape == (0, 32, 32)
    assert scale_masks((32, 32), torch.zeros(0, 32, 32, dtype=torch.bool), (20, 40)).shape == (0, 20, 40)
    assert mask_iou(torch.zeros(0, 4, 4), torch.ones(2, 4, 4)).shape == (0, 2)


def _letterboxed(mask, size):
    """A bool mask [h0, w0] letterboxed into size x size as the loader does it; with its ratio_pad."""
    im = np.repeat(mask.numpy().astype(np.uint8)[..., None] * 255, 3, axis=2)
    im, ratio, pad = letterbox(im, size, auto=False)
    return torch.from_numpy(im[..., 0] > 127), (ratio, pad)


@pytest.mark.parametrize('shape0', [(120, 200), (200, 150)])
def test_scale_masks_returns_masks_to_the_original_image(shape0):
    original = torch.zeros(shape0, dtype=torch.bool)
    original[30:90, 40:110] = True
    original[10:30, 5:25] = True
    boxed, ratio_pad = _letterboxed(original, 128)
    for back in (scale_masks((128, 128), boxed[None], shape0), scale_masks((128, 128), boxed[None], shape0, ratio_pad)):
        assert back.shape == (1, *shape0) and back.dtype == torch.bool
        assert mask_iou(back, original[None]).item() > 0.95


def test_scale_masks_is_the_bilinear_resize_of_v7():
    """v7.0's scale_image: cut the padding at int() bounds, cv2.resize (bilinear) to the original size."""
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.randn(1, 3, 8, 8, generator=g), (128, 128), mode='bilinear')
    masks = smooth[0] > 0.2
    shape0 = (90, 160)
    _, (pad_w, pad_h) = letterbox_geometry((128, 128), shape0)
    cut = masks[:, int(pad_h):int(128 - pad_h), int(pad_w):int(128 - pad_w)].numpy()
    bilinear = np.stack([cv2.resize(m.astype(np.float32), (160, 90)) for m in cut])
    got = scale_masks((128, 128), masks, shape0).numpy()
    border = np.abs(bilinear - 0.5) < 1e-4  # float rounding may go either way at exactly 0.5
    assert np.array_equal(got[~border], bilinear[~border] > 0.5)
    # v7.0 resizes uint8 0/1 masks, where OpenCV's fixed-point arithmetic moves a few edge pixels
    v7 = np.stack([cv2.resize(m.astype(np.uint8), (160, 90)) for m in cut]).astype(bool)
    assert (got != v7).mean() < 0.01


def test_native_masks_map_each_image_pixel_through_the_letterbox():
    """A prototype ramp in input y whose mask edge lies midway between two prototype rows (y = 28 input px):
    linear interpolation puts it there exactly, so on a 96 x 160 image letterboxed into 64 x 96 (gain 0.6,
    3.2 px padding on top) it lies at image y = (28 - 3.2) / 0.6 = 41.3: rows 41 and down are on."""
    ys = torch.arange(16.0) * 4 + 2  # prototype row centres in input pixels
    protos = ((ys - 28) * 0.05).view(1, 16, 1).repeat(1, 1, 24)
    boxes0 = torch.tensor([[0.0, 0.0, 160.0, 96.0], [20.0, 0.0, 50.0, 60.0]])  # in image pixels
    masks = process_mask_native(protos, torch.ones(2, 1), boxes0, (64, 96), (96, 160))
    assert masks.shape == (2, 96, 160) and masks.dtype == torch.bool
    assert not masks[0, :41].any() and masks[0, 41:].all()
    assert masks[1, 41:60, 20:50].all() and masks[1].sum() == 19 * 30  # cropped by the image-pixel box
    assert process_mask_native(protos, torch.zeros(0, 1), torch.zeros(0, 4), (64, 96), (96, 160)).shape == (0, 96, 160)
    # same masks as v7.0's way (at the input size, integer padding cut, resized) up to its rounding
    v7 = scale_masks((64, 96), process_mask(protos, torch.ones(1, 1), boxes0[:1] * 0.6 + torch.tensor([0, 3.2] * 2),
                                            (64, 96), upsample=True), (96, 160))
    assert 0.9 < mask_iou(v7, masks[:1]).item() < 1


def test_scale_polygons_undoes_the_letterbox():
    # 40 x 80 image in a 64 x 64 input: gain 0.8, 16 px padding top and bottom
    polygon = np.array([[0.0, 16.0], [64.0, 16.0], [32.0, 48.0], [70.0, 60.0]])
    out, = scale_polygons((64, 64), [polygon], (40, 80))
    assert out.dtype == np.float32
    assert np.allclose(out, [[0, 0], [80, 0], [40, 40], [80, 40]])  # the last point is clipped
    norm, = scale_polygons((64, 64), [polygon], (40, 80), normalize=True)
    assert np.allclose(norm, [[0, 0], [1, 0], [0.5, 1], [1, 1]])
    ratio_pad = ((0.8, 0.8), (0.0, 16.0))
    assert np.allclose(scale_polygons((64, 64), [polygon], (40, 80), ratio_pad)[0], out)


def test_masks_to_polygons_outlines_the_contour_with_most_vertices():
    masks = torch.zeros(3, 20, 30, dtype=torch.bool)
    masks[0, 2:8, 3:10] = True  # rectangle: 4 corners
    masks[1, 1:3, 1:3] = True  # small square (4 vertices) ...
    yy, xx = torch.meshgrid(torch.arange(20), torch.arange(30), indexing='ij')
    masks[1] |= (yy - 12) ** 2 + (xx - 18) ** 2 <= 16  # ... and a disc with many more
    polygons = masks_to_polygons(masks)
    assert [p.dtype for p in polygons] == [np.float32] * 3
    assert sorted(map(tuple, polygons[0].tolist())) == [(3, 2), (3, 7), (9, 2), (9, 7)]
    assert len(polygons[1]) > 4 and np.allclose(polygons[1].mean(0), (18, 12), atol=0.5)
    assert polygons[2].shape == (0, 2)


def test_mask_iou_pairwise():
    a = torch.zeros(2, 4, 4, dtype=torch.bool)
    a[0, :2] = True  # 8 pixels
    a[1, :, :1] = True  # 4 pixels
    b = torch.zeros(3, 4, 4, dtype=torch.bool)
    b[0, :2] = True
    b[1, :1] = True  # 4 pixels inside a[0]
    iou = mask_iou(a, b)
    assert iou.shape == (2, 3)
    assert torch.allclose(iou, torch.tensor([[1.0, 0.5, 0.0], [2 / 10, 1 / 7, 0.0]]), atol=1e-6)
    assert torch.allclose(mask_iou(a.flatten(1).float(), b.flatten(1).float()), iou)  # flat 0/1 rows too
