"""Segmentation models (YOLOv5 v7.0 `-seg`): sizes, forward contract, head priors, transfer from detection."""
import math
from pathlib import Path

import pytest
import torch

from models.common import Proto
from models.transfer import transferable_state
from models.yolo import Model, Segment, check_model_size, load_model_yaml, model_summary

SHARED = Path(__file__).resolve().parents[2] / 'shared'
OFFICIAL_DET = SHARED / 'weights' / 'yolov5n.pt'
SEG_REFERENCE_IO = SHARED / 'weights' / 'yolov5n-seg_reference_io.pt'

# Parameters of YOLOv5 v7.0's own models/segment/yolov5*-seg.yaml, counted by building them with the
# v7.0 code (../shared/peers) on CPU: unfused, then after fuse() ("YOLOv5n-seg summary: 225 layers,
# 1991549 parameters ... 7.2 GFLOPs" / "165 layers, 1986637 parameters ... 7.1 GFLOPs"). The published
# table lists 2.0 / 7.6 / 22.0 / 47.9 / 88.8 M parameters and 7.1 / 26.4 / 70.8 / 147.7 / 265.7 GFLOPs.
V7_SEG_PARAMS = {'n': (1991549, 1986637), 's': (7621277, 7611485), 'm': (21990397, 21971597),
                 'l': (47924957, 47894397), 'x': (88819517, 88774445)}
NANO_ROWS = 5 + 80 + 32


@pytest.fixture(scope='module')
def seg_nano():
    torch.manual_seed(0)
    return Model('yolov5n-seg.yaml')


@pytest.mark.parametrize('size', list(V7_SEG_PARAMS))
def test_params_equal_v7(size):
    cfg = load_model_yaml(f'yolov5{size}-seg.yaml')
    assert check_model_size(cfg, [3]) == V7_SEG_PARAMS[size][0]  # the size guard's arithmetic is exact
    model = Model(cfg)
    assert sum(p.numel() for p in model.parameters()) == V7_SEG_PARAMS[size][0]
    assert model.task == 'segment' and isinstance(model.model[-1], Segment)


def test_summary_of_nano_matches_v7_and_published_table(seg_nano):
    info = model_summary(seg_nano, imgsz=640)
    assert 'YOLOv5n-seg summary: 225 layers, 1991549 parameters' in info['text']
    assert round(info['gflops'], 1) == 7.1
    fused = Model('yolov5n-seg.yaml').fuse()
    info = model_summary(fused, imgsz=640)
    assert info['layers'] == 165 and info['params'] == V7_SEG_PARAMS['n'][1] and round(info['gflops'], 1) == 7.1


def test_head_layout_and_state_dict_keys(seg_nano):
    head = seg_nano.model[-1]
    assert (head.nc, head.nm, head.npr, head.no, head.na) == (80, 32, 64, NANO_ROWS, 3)  # npr = 256 x 0.25
    assert isinstance(head.proto, Proto) and head.proto.cv1.conv.in_channels == 64  # fed by P3 (layer 17)
    assert [m.out_channels for m in head.m] == [3 * NANO_ROWS] * 3
    keys = seg_nano.state_dict().keys()
    assert {'model.24.proto.cv1.conv.weight', 'model.24.proto.cv2.bn.running_var',
            'model.24.proto.cv3.conv.weight', 'model.24.m.0.weight', 'model.24.anchors'} <= keys
    assert Model('yolov5n.yaml').task == 'detect'


def test_train_mode_returns_levels_and_prototypes(seg_nano):
    seg_nano.train()
    levels, proto = seg_nano(torch.rand(2, 3, 64, 96))
    assert [tuple(o.shape) for o in levels] == [(2, 3, 8, 12, NANO_ROWS), (2, 3, 4, 6, NANO_ROWS),
                                                (2, 3, 2, 3, NANO_ROWS)]
    assert tuple(proto.shape) == (2, 32, 16, 24)  # 1/4 of the input
    (proto.mean() + sum(o.mean() for o in levels)).backward()
    assert seg_nano.model[-1].proto.cv1.conv.weight.grad is not None
    seg_nano.zero_grad(set_to_none=True)


def test_eval_mode_decodes_boxes_and_keeps_coefficients_raw(seg_nano):
    seg_nano.eval()
    with torch.no_grad():
        decoded, (levels, proto) = seg_nano(torch.rand(2, 3, 64, 96))
    assert decoded.shape == (2, 3 * (96 + 24 + 6), NANO_ROWS) and proto.shape == (2, 32, 16, 24)
    b, a, gy, gx = 1, 2, 3, 5  # one P4 cell, decoded independently (v6/v7 formulas)
    p = levels[1][b, a, gy, gx]
    s = p[:85].sigmoid()
    row = decoded[b, 96 * 3 + (a * 4 + gy) * 6 + gx]
    anchor = seg_nano.model[-1].anchors[1, a] * 16
    assert torch.allclose(row[:2], (s[:2] * 2 - 0.5 + torch.tensor([gx, gy])) * 16, atol=1e-5)
    assert torch.allclose(row[2:4], (s[2:4] * 2) ** 2 * anchor, atol=1e-5)
    assert torch.allclose(row[4:85], s[4:], atol=1e-6)
    assert torch.equal(row[85:], p[85:])  # mask coefficients: no sigmoid


def test_export_mode_and_trace(seg_nano):
    seg_nano.eval()
    head = seg_nano.model[-1]
    x = torch.rand(1, 3, 64, 64)
    head.export = True
    try:
        with torch.no_grad():
            decoded, proto = seg_nano(x)
            traced = torch.jit.trace(seg_nano, x, check_trace=False)
            decoded_t, proto_t = traced(x)
    finally:
        head.export = False
    assert decoded.shape == (1, 3 * (64 + 16 + 4), NANO_ROWS) and proto.shape == (1, 32, 16, 16)
    assert torch.allclose(decoded, decoded_t, atol=1e-5) and torch.allclose(proto, proto_t, atol=1e-5)


def test_feature_taps(seg_nano):
    seg_nano.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        plain = seg_nano(x)
        out, feats = seg_nano(x, feature_layers=seg_nano.detect_input_layers())
    assert torch.equal(out[0], plain[0]) and torch.equal(out[1][1], plain[1][1])
    assert [tuple(f.shape) for f in feats] == [(1, 64, 8, 8), (1, 128, 4, 4), (1, 256, 2, 2)]


def test_bias_priors_touch_only_box_objectness_and_class_rows():
    torch.manual_seed(0)
    model = Model('yolov5n-seg.yaml', nc=3)
    head = model.model[-1]
    before = [m.bias.detach().clone().view(3, -1) for m in head.m]
    model.initialize_biases(class_counts=[100, 10, 1])
    for conv, b0, s in zip(head.m, before, (8, 16, 32)):
        b = conv.bias.detach().view(3, -1)
        assert b.shape == (3, 5 + 3 + 32)
        assert torch.equal(b[:, :4], b0[:, :4]) and torch.equal(b[:, 8:], b0[:, 8:])  # xywh and masks
        assert torch.allclose(b[:, 4] - b0[:, 4], torch.full((3,), math.log(8 / (640 / s) ** 2)))
        assert torch.allclose((b - b0)[:, 5] - (b - b0)[:, 6], torch.full((3,), math.log(10.0)), atol=1e-5)
        bound = 1 / math.sqrt(conv.in_channels)  # from construction, mask rows keep Conv2d's init
        assert b[:, 8:].abs().max() <= bound


def test_fused_segmentation_model_matches_unfused():
    torch.manual_seed(1)
    model = Model('yolov5n-seg.yaml', nc=2).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        decoded, (_, proto) = model(x)
        decoded_f, (_, proto_f) = model.fuse()(x)
    assert torch.allclose(decoded, decoded_f, atol=1e-3) and torch.allclose(proto, proto_f, atol=1e-4)


@pytest.mark.parametrize('args, message', [
    ([80, 'anchors', 0, 256], r'Segment mask coefficients \(nm\) must be a positive integer, got 0'),
    ([80, 'anchors', 32, 'wide'], r'Segment prototype channels \(npr\) must be a positive integer'),
    ([80, 'anchors', 32, 256, True], r'Segment takes \[nc, anchors, nm, npr\]'),
])
def test_bad_segment_rows_are_reported(args, message):
    cfg = load_model_yaml('yolov5n-seg.yaml')
    cfg['head'][-1][3] = args
    with pytest.raises(ValueError, match=message):
        Model(cfg)


def test_segment_row_defaults():
    cfg = load_model_yaml('yolov5n-seg.yaml')
    cfg['head'][-1][3] = ['nc', 'anchors']
    head = Model(cfg).model[-1]
    assert (head.nm, head.npr) == (32, 64)


# --------------------------------------------------------------------------------------------
# Transfer from detection weights (--weights yolov5n.pt --cfg yolov5n-seg.yaml) and back
# --------------------------------------------------------------------------------------------
def _randomized(model, seed):
    """Non-default weights and BN statistics everywhere, so a tensor left untransferred shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for v in model.state_dict().values():
            if v.is_floating_point():
                v.copy_(torch.rand(v.shape, generator=g) * 0.2 + 0.9 if v.dim() == 1 else
                        torch.randn(v.shape, generator=g) * 0.05)
    return model.eval()


def _box_outputs_agree(det, seg, x, atol):
    with torch.no_grad():
        a, b = det(x)[0], seg(x)[0]
    return (a - b[..., :a.shape[-1]]).abs().max() < atol


def test_detection_weights_give_a_segmentation_model_the_same_boxes():
    det = _randomized(Model('yolov5n.yaml', nc=3), seed=1)
    torch.manual_seed(0)
    seg = Model('yolov5n-seg.yaml', nc=3).eval()
    init = seg.state_dict()
    mask_rows = {k: v.clone().view(3, 40, -1)[:, 8:] for k, v in init.items() if k.startswith('model.24.m.')}
    proto = {k: v.clone() for k, v in init.items() if '.proto.' in k}
    state = transferable_state(det, seg, keep_anchors=True)
    result = seg.load_state_dict(state, strict=False)
    assert all('.proto.' in k for k in result.missing_keys) and not result.unexpected_keys
    assert _box_outputs_agree(det, seg, torch.rand(2, 3, 64, 96), atol=1e-4)
    after = seg.state_dict()
    assert all(torch.equal(after[k].view(3, 40, -1)[:, 8:], v) for k, v in mask_rows.items())
    assert all(torch.equal(after[k], v) for k, v in proto.items())


def test_segmentation_weights_give_a_detection_model_the_same_boxes():
    seg = _randomized(Model('yolov5n-seg.yaml', nc=3), seed=2)
    det = Model('yolov5n.yaml', nc=3).eval()
    det.load_state_dict(transferable_state(seg, det), strict=False)
    assert _box_outputs_agree(det, seg, torch.rand(1, 3, 64, 64), atol=1e-4)


def test_transfer_between_same_tasks_matches_names_and_shapes():
    src = _randomized(Model('yolov5n-seg.yaml', nc=3), seed=3)
    dst = Model('yolov5n-seg.yaml', nc=5, anchors=[[5, 6, 7, 8, 9, 10]] * 3)
    state = transferable_state(src, dst, keep_anchors=False)
    assert 'model.24.anchors' not in state and 'model.24.proto.cv3.conv.weight' in state
    assert not any(k.startswith('model.24.m.') for k in state)  # 5 classes: head convs do not fit
    assert 'model.24.anchors' in transferable_state(src, Model('yolov5n-seg.yaml', nc=3), keep_anchors=True)
    other_classes = transferable_state(_randomized(Model('yolov5n.yaml', nc=3), 4), Model('yolov5n-seg.yaml'))
    assert not any(k.startswith('model.24.m.') for k in other_classes)  # 3 vs 80 classes: no rows taken


def test_official_yolov5n_transfers_into_yolov5n_seg():
    if not OFFICIAL_DET.is_file() or not SEG_REFERENCE_IO.is_file():
        pytest.skip('reference assets in ../shared are absent')
    from models.checkpoint import load_model
    det, _ = load_model(OFFICIAL_DET)
    seg = Model('yolov5n-seg.yaml').eval()
    seg.load_state_dict(transferable_state(det, seg), strict=False)
    ref = torch.load(SEG_REFERENCE_IO, weights_only=True)
    assert _box_outputs_agree(det, seg, ref['input'], atol=1e-3)
    # v7.0's yolov5n-seg checkpoint was made the same way: its box, objectness and class outputs agree
    with torch.no_grad():
        decoded = seg(ref['input'])[0]
    assert (decoded[..., :85] - ref['decoded'][..., :85]).abs().max() < 1e-3
