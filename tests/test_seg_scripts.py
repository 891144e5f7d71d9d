"""A segmentation model in the scripts: detect.py draws and labels its masks; evaluate() scores its boxes."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import detect
from models.checkpoint import model_checkpoint_fields, save_checkpoint
from models.yolo import Model
from utils.boxes import non_max_suppression
from utils.masks import masks_to_polygons, scale_polygons
from utils.polygon_masks import polygon_mask

SHARED = Path(__file__).resolve().parents[2] / 'shared'
SEG_V7 = SHARED / 'weights' / 'yolov5n-seg_v7.0.pt'
SEG_REFERENCE_IO = SHARED / 'weights' / 'yolov5n-seg_reference_io.pt'


def _seg_model(nc):
    """Random yolov5n-seg with confident boxes (objectness ~1, classes ~0.5) and large mask coefficients:
    read as class scores, the coefficients would win."""
    torch.manual_seed(0)
    model = Model('yolov5n-seg.yaml', nc=nc)
    head = model.model[-1]
    with torch.no_grad():
        for conv in head.m:
            bias = conv.bias.view(head.na, head.no)
            bias[:, 4], bias[:, 5:5 + nc], bias[:, 5 + nc:] = 5.0, 0.0, 5.0
    return model


def _rows(file):
    return [[float(v) for v in line.split()] for line in Path(file).read_text().splitlines()]


def _raster(row, shape, supersample=1):
    """bool mask of a polygon label row (`cls x1 y1 ... conf`, normalised) on an image of `shape` (h, w);
    `supersample` > 1 draws it finer, so rounding in the 6 printed digits moves no whole pixel."""
    h, w = shape[0] * supersample, shape[1] * supersample
    xy = (np.asarray(row[1:-1]).reshape(-1, 2) * (w, h)).round()
    return polygon_mask((h, w), xy, downsample_ratio=1).astype(bool)


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.mark.parametrize('retina', [False, True])
def test_masks_become_polygon_labels_and_coloured_pixels(tmp_path, retina):
    """One prototype is a disc, so the expected mask on the original image is known without the pipeline."""
    h0, w0, input_shape = 96, 160, (64, 96)  # letterbox: gain 0.6, 3.2 px of padding above and below
    rows, cols = torch.meshgrid(torch.arange(16.0), torch.arange(24.0), indexing='ij')
    disc = ((rows + 0.5 - 8) ** 2 + (cols + 0.5 - 12) ** 2 < 5 ** 2).float()  # centre (48, 32) in input px, r 20
    protos = torch.stack((disc * 20 - 10, torch.randn(16, 24)))
    det = torch.tensor([[0.0, 0.0, 96.0, 64.0, 0.9, 1.0, 1.0, 0.0]])  # the second prototype is not used
    (tmp_path / 'labels').mkdir()
    out = detect.OutputOptions(tmp_path, ['cat', 'dog'], save_txt=True, save_conf=True, hide_labels=True,
                               retina_masks=retina)
    im0 = np.full((h0, w0, 3), 100, np.uint8)
    drawn = detect.handle_result(det, input_shape, im0, Path('a.jpg'), None, out, protos)
    (row,) = _rows(tmp_path / 'labels' / 'a.txt')
    assert row[0] == 1 and row[-1] == pytest.approx(0.9) and len(row) % 2 == 0 and len(row) >= 2 + 6
    assert all(0 <= v <= 1 for v in row[1:-1])
    yy, xx = np.mgrid[:h0, :w0] + 0.5
    cells = ((yy * 0.6 + 3.2) // 4).astype(int), (xx * 0.6 // 4).astype(int)  # image pixel -> prototype cell
    expected = disc.numpy()[cells] > 0  # the disc's cells mapped back to the image
    assert _iou(_raster(row, (h0, w0)), expected) > 0.9
    colour = np.array(detect.colors(1, True), np.float32)
    assert np.abs(drawn[48, 80] - (100 + colour) / 2).max() <= 1  # half mask colour, half image
    assert (drawn[48, 130] == 100).all()  # outside the mask (and away from the box outline) untouched


def test_detect_segments_with_a_segmentation_checkpoint(tmp_path):
    model = _seg_model(nc=3)
    model.names = ['cat', 'dog', 'bird']
    weights = save_checkpoint(tmp_path / 'seg.pt', model_checkpoint_fields(model))
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / 'a.jpg'), image)
    for retina in (False, True):
        save_dir = detect.run(weights=weights, source=str(tmp_path / 'a.jpg'), imgsz=64, conf_thres=0.0,
                              max_det=20, save_txt=True, save_crop=True, project=tmp_path, name='exp',
                              retina_masks=retina)
        rows = _rows(save_dir / 'labels' / 'a.txt')
        # the 32 coefficients must not be read as classes, and every row is a polygon of >= 3 points
        assert rows and all(r[0] in (0, 1, 2) and len(r) % 2 == 1 and len(r) >= 7 for r in rows)
        assert all(0 <= v <= 1 for r in rows for v in r[1:])
        assert list((save_dir / 'crops').glob('*/a*.jpg'))


def _official():
    if not (SEG_V7.is_file() and SEG_REFERENCE_IO.is_file() and (SHARED / 'images').is_dir()):
        pytest.skip('../shared (official yolov5n-seg and its v7.0 reference outputs) is absent')


def test_official_polygons_follow_v7_masks(tmp_path):
    """Our labels for the reference inputs against the outlines of v7.0's own masks (the largest
    contour, as v7.0 writes them), both mapped to the original images."""
    _official()
    from models.checkpoint import load_model
    model, _ = load_model(SEG_V7, fuse=True)
    ref = torch.load(SEG_REFERENCE_IO, weights_only=True)
    with torch.no_grad():
        pred = model.float().eval()(ref['input'])
    dets = non_max_suppression(pred, 0.25, 0.45, nm=32)
    (tmp_path / 'labels').mkdir()
    out = detect.OutputOptions(tmp_path, list(model.names), save_txt=True, save_conf=True)
    for i, stem in enumerate(('bus', 'zidane')):
        im0 = cv2.imread(str(SHARED / 'images' / f'{stem}.jpg'))
        detect.handle_result(dets[i], (320, 320), im0, Path(f'{stem}.jpg'), None, out, pred[1][1][i])
        v7_polygons = scale_polygons((320, 320), masks_to_polygons(ref['masks_upsampled'][i]), im0.shape,
                                     normalize=True)
        rows = _rows(tmp_path / 'labels' / f'{stem}.txt')
        assert len(rows) == len(v7_polygons) == len(ref['nms_conf0.25_iou0.45'][i])
        for row, polygon, v7 in zip(rows, v7_polygons, ref['nms_conf0.25_iou0.45'][i].tolist()):
            assert row[0] == v7[5] and row[-1] == pytest.approx(v7[4], abs=1e-3)
            v7_row = [v7[5], *polygon.reshape(-1).tolist(), v7[4]]
            assert _iou(_raster(row, im0.shape[:2], 4), _raster(v7_row, im0.shape[:2], 4)) > 0.98


def test_official_checkpoint_on_the_sample_images(tmp_path, capsys):
    _official()
    detect.main(detect.parse_opt(['--weights', str(SEG_V7), '--source', str(SHARED / 'images'), '--imgsz', '320',
                                  '--save-txt', '--save-conf', '--save-crop', '--project', str(tmp_path)]))
    assert '3 persons, 1 bus' in capsys.readouterr().out  # as v7.0's segment/predict.py prints at 320
    save_dir = tmp_path / 'exp'
    bus = _rows(save_dir / 'labels' / 'bus.txt')
    assert sorted(r[0] for r in bus) == [0, 0, 0, 5] and len(_rows(save_dir / 'labels' / 'zidane.txt')) == 2
    assert all(0 <= v <= 1 for r in bus for v in r[1:])
    assert (save_dir / 'crops' / 'bus' / 'bus.jpg').is_file()
    drawn, plain = cv2.imread(str(save_dir / 'bus.jpg')), cv2.imread(str(SHARED / 'images' / 'bus.jpg'))
    bus_mask = _raster(next(r for r in bus if r[0] == 5), plain.shape[:2])
    tinted = np.abs(drawn.astype(int) - plain).sum(2) > 30
    assert tinted[bus_mask].mean() > 0.8  # the bus's pixels got its mask colour


def test_evaluate_scores_the_boxes_of_a_segmentation_model(tiny_data, tmp_path):
    from utils.dataset_yaml import check_dataset
    from utils.evaluate import build_loader, evaluate
    loader = build_loader(check_dataset(str(tiny_data)), 'val', imgsz=64, batch_size=4, stride=32, workers=0)
    # the confusion matrix (plots) indexes by predicted class: a coefficient read as a class fails there
    result = evaluate(_seg_model(nc=8), loader, conf_thres=0.0, plots=True, save_dir=tmp_path)
    assert result.seen == 8
