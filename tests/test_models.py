"""YOLOv5 architecture: sizes vs the published table, state-dict layout, forward contract, fuse."""
import math
import time

import pytest
import torch
import yaml

from models.common import Conv
from models.yolo import Model, ModelSizeError, check_model_size, load_model_yaml, model_summary

# Published YOLOv5 v7.0 figures: README table (fused params, GFLOPs at 640) and the
# "YOLOv5x summary: N layers, P parameters" lines printed at training start (unfused).
PUBLISHED = {  # name: (unfused params, fused params, GFLOPs@640)
    'n': (1872157, 1867405, 4.5),
    's': (7235389, 7225885, 16.5),
    'm': (21190557, 21172173, 49.0),
    'l': (46563709, 46533693, 109.1),
    'x': (86749405, 86705005, 205.7),
}


@pytest.fixture(scope='module')
def nano():
    torch.manual_seed(0)
    return Model('yolov5n.yaml')


def _randomize_bn(model, seed=0):
    """Give every BatchNorm non-trivial statistics so that fusing is a real test."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize('size', [
    'n', 's', 'm',
    pytest.param('l', marks=pytest.mark.slow), pytest.param('x', marks=pytest.mark.slow),
])
def test_params_and_gflops_match_published_table(size):
    unfused, fused, gflops = PUBLISHED[size]
    model = Model(f'yolov5{size}.yaml')
    info = model_summary(model, imgsz=640)
    assert info['params'] == unfused
    assert info['gradients'] == unfused
    assert round(info['gflops'], 1) == gflops
    info = model_summary(model.fuse(), imgsz=640)
    assert info['params'] == fused
    assert round(info['gflops'], 1) == gflops  # fusing must not change the compute figure


def test_summary_line_and_layer_counts(nano):
    info = model_summary(nano, imgsz=640, verbose=True)
    assert info['layers'] == 214  # what YOLOv5 v7.0 prints for yolov5n/s (modules, shared SiLU)
    assert 'YOLOv5n summary: 214 layers, 1872157 parameters, 1872157 gradients, 4.5 GFLOPs' in info['text']
    table = info['text'].splitlines()
    assert len(table) == 1 + len(nano.model) + 1  # header, one row per layer, summary
    assert 'models.common.SPPF' in table[1 + 9]


def test_gflops_scale_with_image_area(nano):
    at_640 = model_summary(nano, imgsz=640)['gflops']
    at_320 = model_summary(nano, imgsz=320)['gflops']
    rect = model_summary(nano, imgsz=(320, 640))['gflops']
    assert at_320 == pytest.approx(at_640 / 4)
    assert rect == pytest.approx(at_640 / 2)


def test_summary_does_not_touch_batchnorm_statistics(nano):
    before = {k: v.clone() for k, v in nano.state_dict().items()}
    nano.train()
    model_summary(nano, imgsz=64)
    assert nano.training
    for k, v in nano.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_state_dict_keys_follow_yolov5_names(nano):
    sd = nano.state_dict()
    for key in ('model.0.conv.weight', 'model.0.bn.running_mean', 'model.2.cv1.bn.running_mean',
                'model.2.m.0.cv2.conv.weight', 'model.9.cv2.conv.weight', 'model.24.m.0.weight',
                'model.24.m.2.bias', 'model.24.anchors'):
        assert key in sd, key
    assert not any('stride' in k for k in sd)
    assert sd['model.0.conv.weight'].shape == (16, 3, 6, 6)  # 6x6 stride-2 stem
    assert sd['model.24.m.0.weight'].shape == (255, 64, 1, 1)
    assert len(sd) == 349  # the official yolov5n.pt state dict has 349 entries too


def test_stride_and_anchors_in_stride_units(nano):
    assert nano.stride.tolist() == [8.0, 16.0, 32.0]
    detect = nano.model[-1]
    pixels = torch.tensor(load_model_yaml('yolov5n')['anchors'], dtype=torch.float32).view(3, 3, 2)
    assert torch.allclose(detect.anchors * nano.stride.view(-1, 1, 1), pixels)
    assert detect.anchors[0, 0].tolist() == [10 / 8, 13 / 8]


def test_reversed_anchor_levels_are_flipped():
    cfg = load_model_yaml('yolov5n')
    cfg['anchors'] = cfg['anchors'][::-1]  # largest anchors listed first
    model = Model(cfg, nc=2)
    pixels = model.model[-1].anchors * model.stride.view(-1, 1, 1)
    assert pixels[0, 0].tolist() == [10, 13]
    assert pixels[2, 2].tolist() == [373, 326]


def test_anchor_override_by_count_and_by_value():
    model = Model('yolov5n.yaml', nc=2, anchors=4)
    assert model.model[-1].na == 4
    assert model(torch.zeros(1, 3, 64, 64))[0].shape[1] == 4
    custom = [[5, 6, 7, 8], [20, 22, 30, 33], [80, 90, 100, 120]]
    model = Model('yolov5n.yaml', nc=2, anchors=custom)
    assert model.model[-1].na == 2
    pixels = model.model[-1].anchors * model.stride.view(-1, 1, 1)
    assert pixels.view(3, -1).tolist() == custom


def test_train_mode_returns_raw_levels(nano):
    nano.train()
    out = nano(torch.zeros(2, 3, 64, 96))
    assert [tuple(o.shape) for o in out] == [(2, 3, 8, 12, 85), (2, 3, 4, 6, 85), (2, 3, 2, 3, 85)]


def test_eval_mode_returns_decoded_and_raw(nano):
    nano.eval()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        decoded, raw = nano(x)
    assert decoded.shape == (2, 3 * (8 * 12 + 4 * 6 + 2 * 3), 85)
    assert [tuple(o.shape) for o in raw] == [(2, 3, 8, 12, 85), (2, 3, 4, 6, 85), (2, 3, 2, 3, 85)]
    # Independent re-derivation of the v6/v7 decoding for one cell of the P4 level.
    b, a, gy, gx = 1, 2, 3, 5
    s = raw[1][b, a, gy, gx].sigmoid()
    anchor = nano.model[-1].anchors[1, a] * 16
    expected_xy = (s[:2] * 2 - 0.5 + torch.tensor([gx, gy])) * 16
    expected_wh = (s[2:4] * 2) ** 2 * anchor
    row = decoded[b, 8 * 12 * 3 + (a * 4 + gy) * 6 + gx]
    assert torch.allclose(row[:2], expected_xy, atol=1e-5)
    assert torch.allclose(row[2:4], expected_wh, atol=1e-5)
    assert torch.allclose(row[4:], s[4:], atol=1e-6)


def test_grid_cache_handles_changing_shapes(nano):
    nano.eval()
    x1, x2 = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 96, 32)
    with torch.no_grad():
        first = nano(x1)[0]
        nano(x2)
        again = nano(x1)[0]
    assert torch.equal(first, again)
    assert first[0, -1, 0] > 32  # last P5 cell of a 64 px image sits right of centre


def test_feature_taps(nano):
    nano.eval()
    x = torch.rand(1, 3, 64, 64)
    assert nano.detect_input_layers() == [17, 20, 23]
    with torch.no_grad():
        plain = nano(x)
        out, feats = nano(x, feature_layers=[23, 3, 17])
        _, none = nano(x, feature_layers=[])
    assert torch.equal(out[0], plain[0])
    assert [tuple(f.shape) for f in feats] == [(1, 256, 2, 2), (1, 64, 8, 8), (1, 64, 8, 8)]
    assert none == []
    with pytest.raises(IndexError, match='out of range'):
        nano(x, feature_layers=[25])


def test_feature_taps_in_train_mode_keep_gradients(nano):
    nano.train()
    out, (p3,) = nano(torch.rand(1, 3, 64, 64), feature_layers=[17])
    assert isinstance(out, list) and p3.requires_grad
    p3.mean().backward()
    assert nano.model[0].conv.weight.grad is not None
    nano.zero_grad(set_to_none=True)


def test_fused_model_matches_unfused():
    torch.manual_seed(1)
    model = Model('yolov5n.yaml', nc=5).eval()
    _randomize_bn(model)
    x = torch.rand(2, 3, 96, 64)
    with torch.no_grad():
        decoded, raw = model(x)
        model.fuse()
        decoded_f, raw_f = model(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert all(m.bn is None and m.conv.bias is not None for m in model.modules() if isinstance(m, Conv))
    for r, rf in zip(raw, raw_f):
        assert (r - rf).abs().max() < 1e-4
    assert torch.allclose(decoded, decoded_f, rtol=1e-4, atol=1e-4)
    assert 'model.0.conv.bias' in model.state_dict() and 'model.0.bn.weight' not in model.state_dict()


@pytest.mark.parametrize('nc', [1, 3, 91])
def test_any_number_of_classes(nc):
    model = Model('yolov5n.yaml', nc=nc)
    assert model.nc == nc == model.yaml['nc'] == model.model[-1].nc
    assert model.names == [str(i) for i in range(nc)]
    model.eval()
    with torch.no_grad():
        decoded, raw = model(torch.rand(1, 3, 32, 32))
    assert decoded.shape == (1, 3 * (16 + 4 + 1), nc + 5)
    assert raw[0].shape[-1] == nc + 5


def test_detect_bias_priors():
    model = Model('yolov5n.yaml', nc=3)
    detect = model.model[-1]
    for conv, s in zip(detect.m, (8, 16, 32)):
        bound = 1 / math.sqrt(conv.in_channels)  # default Conv2d bias init is U(-bound, bound)
        b = conv.bias.detach().view(detect.na, -1)
        assert (b[:, 4] - math.log(8 / (640 / s) ** 2)).abs().max() <= bound
        assert (b[:, 5:] - math.log(0.6 / (3 - 0.99))).abs().max() <= bound


def test_detect_bias_from_class_counts():
    model = Model('yolov5n.yaml', nc=3)
    before = model.model[-1].m[0].bias.detach().clone().view(3, -1)
    model.initialize_biases(class_counts=[100, 10, 0])
    after = model.model[-1].m[0].bias.detach().view(3, -1)
    delta = after[:, 5:] - before[:, 5:]
    assert torch.allclose(delta[:, 0] - delta[:, 1], torch.full((3,), math.log(10.0)), atol=1e-5)
    assert torch.allclose(delta[:, 1] - delta[:, 2], torch.full((3,), math.log(10.0)), atol=1e-5)


def test_building_does_not_move_batchnorm_statistics():
    bn = Model('yolov5n.yaml').model[0].bn
    assert torch.all(bn.running_mean == 0) and torch.all(bn.running_var == 1)
    assert bn.eps == 1e-3 and bn.momentum == 0.03


def test_depth_and_width_scaling():
    cfg = Model('yolov5m.yaml').yaml
    model = Model(cfg)
    assert model.model[6].repeats == 6  # round(9 * 0.67)
    assert len(model.model[6].m) == 6
    assert model.model[0].conv.out_channels == 48  # 64 * 0.75
    assert model.model[9].cv2.conv.out_channels == 768


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_export_flag_and_jit_trace(nano):
    nano.eval()
    detect = nano.model[-1]
    x = torch.rand(1, 3, 64, 64)
    detect.export = True
    try:
        with torch.no_grad():
            y = nano(x)
            traced = torch.jit.trace(nano, x, check_trace=False)
            yt = traced(x)
    finally:
        detect.export = False
    assert isinstance(y, torch.Tensor) and y.shape == (1, 3 * (64 + 16 + 4), 85)
    assert torch.allclose(y, yt, atol=1e-5)


@pytest.mark.parametrize('mutate, message', [
    (lambda d: d['backbone'].__setitem__(0, [-1, 1, 'Focus', [64, 3]]), 'v5.0'),
    (lambda d: d['backbone'].__setitem__(1, [-1, 1, 'Transformer', [64]]), "unknown module 'Transformer'"),
    (lambda d: d['head'].__setitem__(2, [[-1, 30], 1, 'Concat', [1]]), 'bad "from" index 30'),
    (lambda d: d.pop('anchors'), "lacks keys ['anchors']"),
    (lambda d: d['head'].pop(), 'last layer of a detection model must be Detect'),
])
def test_bad_configs_give_clear_errors(mutate, message):
    cfg = load_model_yaml('yolov5n.yaml')
    mutate(cfg)
    with pytest.raises(ValueError, match=message.replace('[', r'\[').replace(']', r'\]')):
        Model(cfg)


def test_missing_config_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match='yolov5q.yaml'):
        Model('yolov5q.yaml')
    bad = tmp_path / 'list.yaml'
    bad.write_text('- 1\n- 2\n')
    with pytest.raises(ValueError, match='not a model config'):
        Model(str(bad))


def test_yaml_is_never_evaluated():
    cfg = load_model_yaml('yolov5n.yaml')
    cfg['backbone'][0] = [-1, 1, "__import__('os').system('true')", [64, 6, 2, 2]]
    with pytest.raises(ValueError, match='unknown module'):
        Model(cfg)


# --------------------------------------------------------------------------------------------
# Size guard: an absurd config is refused from arithmetic alone, before anything is allocated
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize('size', ['n', 's', 'm', 'l', 'x'])
def test_size_estimate_is_exact_for_every_official_model(size):
    assert check_model_size(load_model_yaml(f'yolov5{size}.yaml'), [3]) == PUBLISHED[size][0]


def test_size_estimate_matches_the_built_model():
    cfg = load_model_yaml('yolov5n.yaml')
    cfg.update(nc=7, width_multiple=0.375, depth_multiple=0.67)
    model = Model(cfg)
    assert check_model_size(model.yaml, [3]) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('key, value, message', [
    ('width_multiple', 64, r'yolov5n\.yaml: width_multiple 64 asks for a model of ~114\.5 billion parameters '
                           r'\(limit 1 billion'),
    ('depth_multiple', 50, r'yolov5n\.yaml: depth_multiple 50 asks for a model of 3338 convolutions '
                           r'\(limit 1500'),
    ('nc', 10 ** 7, r'nc 10000000 asks for a model of ~13\.5 billion parameters'),
])
def test_absurd_model_config_is_refused_before_allocating(tmp_path, key, value, message):
    cfg = load_model_yaml('yolov5n.yaml')
    cfg[key] = value
    path = tmp_path / 'yolov5n.yaml'
    path.write_text(yaml.safe_dump(cfg))
    start = time.perf_counter()
    with pytest.raises(ModelSizeError, match=message) as info:
        Model(str(path))
    assert time.perf_counter() - start < 1.0  # nothing was built (a real attempt takes minutes or OOMs)
    assert isinstance(info.value, ValueError) and '\n' not in str(info.value)
    assert str(info.value).endswith('check the YAML')


@pytest.mark.parametrize('key, value', [('width_multiple', 'wide'), ('depth_multiple', -1),
                                         ('width_multiple', float('inf'))])
def test_non_numeric_multiples_are_reported(key, value):
    cfg = load_model_yaml('yolov5n.yaml')
    cfg[key] = value
    with pytest.raises(ValueError, match=f'{key} must be a positive number'):
        Model(cfg)
