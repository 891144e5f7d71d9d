"""YOLOv5 model built from a model YAML: Detect and Segment heads, YAML parser, Model, summary.

Follows YOLOv5 v6/v7 conventions (layer order, `.i/.f/.type/.np` layer attributes, anchors stored
in stride units) so that official state dicts load key for key and give the same outputs.
"""
import copy
import logging
import math
from pathlib import Path

import torch
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from models.common import C3, SPP, SPPF, Bottleneck, Concat, Conv, Proto, make_divisible
from utils.cli import UserError

LOGGER = logging.getLogger('yolov5')
MODELS_DIR = Path(__file__).resolve().parent
REQUIRED_YAML_KEYS = ('nc', 'depth_multiple', 'width_multiple', 'anchors', 'backbone', 'head')
MAX_CACHED_GRIDS = 32  # rectangular validation uses many shapes; keep the grid cache bounded


class Detect(nn.Module):
    """Per-level 1x1 convs predicting (x, y, w, h, obj, classes) for each anchor, plus decoding.

    `nm` extra raw outputs per anchor follow the classes (Segment's mask coefficients; 0 here).
    """

    def __init__(self, nc=80, anchors=(), ch=(), nm=0):
        super().__init__()
        self.nc = nc
        self.nm = nm
        self.no = nc + 5 + nm
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        if any(len(a) != 2 * self.na for a in anchors):
            raise UserError(f'every detection level needs the same number of anchors, got {anchors}')
        if len(ch) != self.nl:
            raise UserError(f'Detect has {self.nl} anchor levels but {len(ch)} input layers')
        # Pixels here; Model divides by the stride once it is known (official checkpoints hold
        # stride units under `model.24.anchors`).
        self.register_buffer('anchors', torch.tensor(anchors, dtype=torch.float32).view(self.nl, -1, 2))
        # Non-persistent: follows .to()/.half() but stays out of the state dict, as in YOLOv5.
        self.register_buffer('stride', torch.zeros(self.nl), persistent=False)
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in ch)
        self.export = False  # True: eval forward returns only the decoded tensor (for trace/ONNX)
        self._grids = {}

    def forward(self, x):
        raw = self.levels(x)
        if self.training:
            return raw
        y = self.decode(raw)
        return y if self.export else (y, raw)

    def levels(self, x):
        """Raw predictions of each level, [B, na, ny, nx, no] logits."""
        raw = []
        for i in range(self.nl):
            p = self.m[i](x[i])
            bs, _, ny, nx = p.shape
            raw.append(p.view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous())
        return raw

    def decode(self, raw):
        """Raw levels [B, na, ny, nx, no] -> [B, N, no]: xywh in pixels, sigmoid scores, then the nm
        extra outputs as they are (v7.0 leaves mask coefficients raw)."""
        return torch.cat([self._decode(p, i) for i, p in enumerate(raw)], 1)

    def _decode(self, p, i):
        """v6/v7 decoding: xy = (2*sig - 0.5 + cell) * stride, wh = (2*sig)^2 * anchor."""
        bs, na, ny, nx, no = p.shape
        s = p[..., :5 + self.nc].sigmoid()
        grid = self._cell_grid(ny, nx, p.device, p.dtype)
        anchor_grid = (self.anchors[i] * self.stride[i]).view(1, na, 1, 1, 2).to(p.dtype)
        xy = (s[..., :2] * 2 + grid) * self.stride[i]
        wh = (s[..., 2:4] * 2) ** 2 * anchor_grid
        parts = (xy, wh, s[..., 4:], p[..., 5 + self.nc:]) if self.nm else (xy, wh, s[..., 4:])
        return torch.cat(parts, -1).view(bs, na * ny * nx, no)

    def _cell_grid(self, ny, nx, device, dtype):
        """Cell corner coordinates shifted by -0.5 ([1, 1, ny, nx, 2] as x, y), cached per shape."""
        key = (ny, nx, device, dtype)
        if key not in self._grids:
            if len(self._grids) >= MAX_CACHED_GRIDS:
                self._grids.clear()
            yv, xv = torch.meshgrid(torch.arange(ny, device=device, dtype=dtype),
                                    torch.arange(nx, device=device, dtype=dtype), indexing='ij')
            self._grids[key] = (torch.stack((xv, yv), 2) - 0.5).view(1, 1, ny, nx, 2)
        return self._grids[key]


class Segment(Detect):
    """Detect plus instance masks (YOLOv5 v7.0): per anchor, nm mask coefficients after the
    classes; `proto` turns the first input level into nm prototype maps at twice its resolution.

    Train mode returns (levels, proto); eval mode (decoded, (levels, proto)); export mode
    (decoded, proto). A mask is sigmoid(coefficients @ prototypes) inside the box (utils/masks.py).
    """

    def __init__(self, nc=80, anchors=(), nm=32, npr=256, ch=()):
        super().__init__(nc, anchors, ch, nm=nm)
        self.npr = npr  # prototype channels inside Proto
        self.proto = Proto(ch[0], npr, nm)

    def forward(self, x):
        proto = self.proto(x[0])
        levels = self.levels(x)
        if self.training:
            return levels, proto
        decoded = self.decode(levels)
        return (decoded, proto) if self.export else (decoded, (levels, proto))


# Module names a model YAML may use, mapped to our classes. Strings never reach eval().
MODULES = {
    'Conv': Conv, 'Bottleneck': Bottleneck, 'C3': C3, 'SPPF': SPPF, 'SPP': SPP,
    'Concat': Concat, 'Detect': Detect, 'Segment': Segment, 'nn.Upsample': nn.Upsample,
    'Upsample': nn.Upsample,
}
SEGMENT_DEFAULTS = (32, 256)  # nm, npr when a Segment row gives only [nc, anchors]
CHANNEL_MODULES = (Conv, Bottleneck, C3, SPPF, SPP)  # first two args become (c_in, c_out)
LEGACY_MODULES = {
    'Focus': 'the Focus stem belongs to YOLOv5 v5.0 and older; this project supports v6.0+ models '
             '(6x6 Conv stem). Use a v6/v7 YAML or checkpoint',
    'BottleneckCSP': 'BottleneckCSP belongs to YOLOv5 v4.0 and older; use C3 (v6.0+ YAMLs)',
}


def resolve_cfg_path(cfg):
    """Find a model YAML: the path as given, else by name inside models/ ('yolov5n', 'yolov5n.yaml')."""
    path = Path(cfg)
    if path.is_file():
        return path
    name = path.name if path.suffix in ('.yaml', '.yml') else path.name + '.yaml'
    candidate = MODELS_DIR / name
    if candidate.is_file():
        return candidate
    available = ', '.join(sorted(p.name for p in MODELS_DIR.glob('*.yaml')))
    raise FileNotFoundError(f"model config '{cfg}' not found (looked for it as a path and in "
                            f"{MODELS_DIR}; available: {available})")


def load_model_yaml(cfg):
    """Return a validated copy of a model config given as a dict or a YAML path/name."""
    if isinstance(cfg, dict):
        d = copy.deepcopy(cfg)
    else:
        path = resolve_cfg_path(cfg)
        with open(path, encoding='utf-8', errors='ignore') as f:
            d = yaml.safe_load(f)
        if not isinstance(d, dict):
            raise UserError(f'{path} is not a model config (expected a YAML mapping)')
        d['yaml_file'] = path.name
    missing = [k for k in REQUIRED_YAML_KEYS if k not in d]
    if missing:
        raise UserError(f"model config {d.get('yaml_file', '<dict>')} lacks keys {missing}")
    if d.get('activation') not in (None, 'nn.SiLU()'):
        raise UserError(f"activation {d['activation']!r} is not supported (only the default SiLU)")
    return d


def yaml_task(d):
    """The task a model config builds: 'segment' when its last layer is a Segment head, else 'detect'."""
    head = (list(d.get('backbone') or []) + list(d.get('head') or []))[-1:]
    return 'segment' if head and len(head[0]) > 2 and head[0][2] == 'Segment' else 'detect'


def _resolve_arg(a, nc, anchors):
    """Replace the YAML placeholders YOLOv5 evaluates ('nc', 'anchors', 'None', ...) by values."""
    if not isinstance(a, str):
        return a
    return {'nc': nc, 'anchors': anchors, 'None': None, 'True': True, 'False': False}.get(a, a)


def _module_class(name, row):
    if name in LEGACY_MODULES:
        raise UserError(f'layer {row}: {LEGACY_MODULES[name]}')
    if name not in MODULES:
        raise UserError(f"layer {row}: unknown module '{name}' (supported: {', '.join(MODULES)})")
    return MODULES[name]


def _check_from(f, i, row_count):
    for j in ([f] if isinstance(f, int) else f):
        if not isinstance(j, int) or not (j == -1 or 0 <= j < i):
            raise UserError(f'layer {i}: bad "from" index {j} (must be -1 or an earlier layer '
                             f'index, model has {row_count} layers)')


def _positive_number(d, key):
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
        raise UserError(f"model config {d.get('yaml_file', '<dict>')}: {key} must be a positive "
                         f'number, got {v!r}')
    return v


def _layer_specs(d, ch):
    """Walk the YAML rows resolving repeats and channels, without building anything.

    Yields (i, f, m, args, n, n_): layer index, from, module class, constructor args, modules in
    the layer's Sequential and the depth-scaled repeat count YOLOv5 prints.
    """
    nc, anchors = d['nc'], d['anchors']
    gd, gw = _positive_number(d, 'depth_multiple'), _positive_number(d, 'width_multiple')
    na = len(anchors[0]) // 2 if isinstance(anchors, (list, tuple)) else int(anchors)
    no = na * (nc + 5)
    rows = list(d['backbone']) + list(d['head'])
    c2 = ch[-1]
    for i, row in enumerate(rows):
        if not isinstance(row, (list, tuple)) or len(row) != 4:
            raise UserError(f'layer {i}: expected [from, number, module, args], got {row}')
        f, n, name, args = row
        _check_from(f, i, len(rows))
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UserError(f'layer {i}: "number" must be a positive integer, got {n!r}')
        m = _module_class(name, i)
        args = [_resolve_arg(a, nc, anchors) for a in args]
        n = n_ = max(round(n * gd), 1) if n > 1 else n  # depth scaling
        if m in CHANNEL_MODULES:
            c1, c2 = ch[f], args[0]
            if isinstance(c2, bool) or not isinstance(c2, int) or c2 < 1:
                raise UserError(f'layer {i}: output channels must be a positive integer, got {c2!r}')
            if c2 != no:  # width scaling, except for an explicit output conv
                c2 = make_divisible(c2 * gw, 8)
            args = [c1, c2, *args[1:]]
            if m is C3:  # repeats live inside C3 rather than as a Sequential of C3s
                args.insert(2, n)
                n = 1
        elif m is Concat:
            c2 = sum(ch[x] for x in f)
        elif issubclass(m, Detect):
            if m is Segment:
                args = _segment_args(args, gw, i)
            args.append([ch[x] for x in f])
            if isinstance(args[1], int):  # anchor count only: placeholders until autoanchor/weights
                args[1] = [list(range(args[1] * 2))] * len(f)
        else:
            c2 = ch[f]
        yield i, f, m, args, n, n_
        if i == 0:
            ch = []
        ch.append(c2)


def _segment_args(args, gw, row):
    """[nc, anchors, nm, npr] with defaults filled in; npr scales with the width as in v7.0."""
    if not 2 <= len(args) <= 4:
        raise UserError(f'layer {row}: Segment takes [nc, anchors, nm, npr], got {args}')
    args = [*args, *SEGMENT_DEFAULTS[len(args) - 2:]]
    for name, v in zip(('mask coefficients (nm)', 'prototype channels (npr)'), args[2:4]):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UserError(f'layer {row}: Segment {name} must be a positive integer, got {v!r}')
    args[3] = make_divisible(args[3] * gw, 8)
    return args


# A model YAML is data: a typo such as `width_multiple: 64` must not allocate hundreds of GB.
# Generous limits, so that every official variant and any sensible experiment builds: ~7x the
# parameters of the largest YOLOv5 (yolov5x6, 141 M) and ~12x the convolutions of yolov5x (126).
MAX_MODEL_PARAMS = 1_000_000_000
MAX_MODEL_CONVS = 1500
OFFICIAL_RANGES = {'width_multiple': 1.25, 'depth_multiple': 1.33}  # yolov5x


class ModelSizeError(UserError):
    """A model config asking for a model far larger than any YOLOv5 (refused before allocating)."""


def _conv_cost(c1, c2, k=1, g=1):
    """(parameters, convolutions) of a YOLOv5 Conv: bias-free Conv2d + BatchNorm weight and bias."""
    k = k if isinstance(k, int) else 1
    g = g if isinstance(g, int) and g > 0 else 1
    return c1 // g * c2 * k * k + 2 * c2, 1


def _module_cost(m, args):
    """(parameters, convolutions) of one module built with args, from arithmetic alone."""
    def arg(j, default):
        return args[j] if len(args) > j else default

    if m is Conv:
        return _conv_cost(args[0], args[1], arg(2, 1), arg(5, 1))
    if m in (Bottleneck, C3):
        c1, c2 = args[:2]
        e, g = (arg(4, 0.5), arg(3, 1)) if m is Bottleneck else (arg(5, 0.5), arg(4, 1))
        c_ = int(c2 * e) if isinstance(e, (int, float)) else c2
        if m is Bottleneck:
            parts = [_conv_cost(c1, c_), _conv_cost(c_, c2, 3, g)]
        else:
            n = arg(2, 1)
            parts = [_conv_cost(c1, c_), _conv_cost(c1, c_), _conv_cost(2 * c_, c2)]
            parts += [(n * p, n * c) for p, c in (_conv_cost(c_, c_), _conv_cost(c_, c_, 3, g))]
        return tuple(map(sum, zip(*parts)))
    if m in (SPPF, SPP):
        c1, c2 = args[:2]
        branches = 4 if m is SPPF else len(arg(2, (5, 9, 13))) + 1
        return tuple(map(sum, zip(_conv_cost(c1, c1 // 2), _conv_cost(c1 // 2 * branches, c2))))
    if issubclass(m, Detect):  # malformed anchors cost nothing here: Detect itself reports them
        nc, anchors, chs = args[0], args[1], args[-1]
        na = len(anchors[0]) // 2 if isinstance(anchors, list) and isinstance(anchors[0], list) else 0
        nm, npr = args[2:4] if m is Segment else (0, 0)
        convs = (sum((c + 1) * (nc + 5 + nm) * na for c in chs), len(chs))
        if m is not Segment:
            return convs
        proto = (_conv_cost(chs[0], npr, 3), _conv_cost(npr, npr, 3), _conv_cost(npr, nm))
        return tuple(map(sum, zip(convs, *proto)))
    return 0, 0


def check_model_size(d, ch):
    """Raise ModelSizeError when the config asks for an absurd model; arithmetic only."""
    params = convs = 0
    for _, _, m, args, n, _ in _layer_specs(d, ch):
        p, c = _module_cost(m, args)
        params, convs = params + n * p, convs + n * c
    if params <= MAX_MODEL_PARAMS and convs <= MAX_MODEL_CONVS:
        return params
    culprits = [f'{key} {d[key]}' for key, official in OFFICIAL_RANGES.items() if d[key] > official]
    culprits += [f"nc {d['nc']}"] if isinstance(d['nc'], int) and d['nc'] > 1000 else []
    asks = ' and '.join(culprits) + (' ask' if len(culprits) > 1 else ' asks') if culprits else 'its layers ask'
    size = f'~{params / 1e9:.1f} billion parameters' if params > MAX_MODEL_PARAMS else f'{convs} convolutions'
    limit = f'{MAX_MODEL_PARAMS / 1e9:.0f} billion' if params > MAX_MODEL_PARAMS else f'{MAX_MODEL_CONVS}'
    raise ModelSizeError(f"{d.get('yaml_file', 'model config')}: {asks} for a model of {size} "
                         f'(limit {limit}; the largest YOLOv5, yolov5x, has 87 M parameters and 126 '
                         'convolutions): check the YAML')


def parse_model(d, ch):
    """Build nn.Sequential from a YOLOv5 model dict; return (model, sorted indices to keep)."""
    check_model_size(d, ch)  # before anything is allocated
    layers, save = [], []
    for i, f, m, args, n, n_ in _layer_specs(d, ch):
        module = nn.Sequential(*(m(*args) for _ in range(n))) if n > 1 else m(*args)
        module.i, module.f = i, f
        module.type = f'{m.__module__}.{m.__name__}'
        module.np = sum(p.numel() for p in module.parameters())
        module.repeats, module.yaml_args = n_, args
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(module)
    return nn.Sequential(*layers), sorted(set(save))


class Model(nn.Module):
    """YOLOv5 detection or segmentation model (the head decides: `task`); see docs/ARCHITECTURE.md
    for the forward contract."""

    def __init__(self, cfg='yolov5s.yaml', ch=3, nc=None, anchors=None):
        super().__init__()
        self.yaml = load_model_yaml(cfg)
        self.yaml_file = self.yaml.get('yaml_file', '')
        ch = self.yaml['ch'] = self.yaml.get('ch', ch)
        if nc and nc != self.yaml['nc']:
            self.yaml['nc'] = int(nc)
        if anchors:  # an int (anchors per level, from hyp) or pixel anchors per level
            self.yaml['anchors'] = round(anchors) if isinstance(anchors, (int, float)) else anchors
        self.model, self.save = parse_model(copy.deepcopy(self.yaml), ch=[ch])
        if not isinstance(self.model[-1], Detect):
            raise UserError('the last layer of a detection model must be Detect')
        self.nc = self.yaml['nc']
        self.names = [str(i) for i in range(self.nc)]
        self.hyp = {}  # filled by the trainer before the loss is built
        self._init_detect_head(ch)

    @property
    def task(self):
        """'segment' when the head is a Segment (masks), else 'detect'."""
        return 'segment' if isinstance(self.model[-1], Segment) else 'detect'

    @property
    def stride(self):
        """Stride of each detection level, tensor [nl] (lives on Detect)."""
        return self.model[-1].stride

    def forward(self, x, feature_layers=None):
        """Run the model; with feature_layers also return those layers' outputs, in order."""
        if feature_layers is None:
            return self._run(x, set(self.save))[0]
        feature_layers = [int(i) for i in feature_layers]
        bad = [i for i in feature_layers if not 0 <= i < len(self.model)]
        if bad:
            raise IndexError(f'feature layers {bad} out of range (model has {len(self.model)} layers)')
        out, kept = self._run(x, set(self.save) | set(feature_layers))
        return out, [kept[i] for i in feature_layers]

    def _run(self, x, keep, layers=None):
        """Forward through layers, keeping outputs of indices in keep; return (last, kept)."""
        kept = {}
        for m in self.model if layers is None else layers:
            if m.f != -1:
                x = kept[m.f] if isinstance(m.f, int) else [x if j == -1 else kept[j] for j in m.f]
            x = m(x)
            if m.i in keep:
                kept[m.i] = x
        return x, kept

    def detect_input_layers(self):
        """Indices of the layers that feed Detect (the neck outputs, e.g. [17, 20, 23])."""
        f = self.model[-1].f
        return [f] if isinstance(f, int) else list(f)

    def _init_detect_head(self, ch):
        detect = self.model[-1]
        detect.stride.copy_(self._probe_strides(ch))
        _check_anchor_order(detect)
        detect.anchors /= detect.stride.view(-1, 1, 1)  # pixels -> stride units
        self.initialize_biases()

    @torch.no_grad()
    def _probe_strides(self, ch, size=128):
        """Strides from a dummy pass through the layers before Detect (BN kept in eval mode).

        128 px resolves strides up to 128 exactly and costs a quarter of YOLOv5's 256 px probe.
        """
        was_training = self.training
        self.eval()  # a dummy batch must not move the BatchNorm running statistics
        try:
            taps = self.detect_input_layers()
            _, kept = self._run(torch.zeros(1, ch, size, size), set(self.save) | set(taps),
                                layers=self.model[:-1])
        finally:
            self.train(was_training)
        return torch.tensor([size / kept[i].shape[-2] for i in taps], dtype=torch.float32)

    @torch.no_grad()
    def initialize_biases(self, class_counts=None):
        """Set Detect biases from priors (YOLOv5): ~8 objects per 640 image; classes from counts.
        Only the objectness and class rows change (a Segment's mask rows keep their init, as in v7.0)."""
        detect = self.model[-1]
        for conv, s in zip(detect.m, detect.stride.tolist()):
            b = conv.bias.view(detect.na, -1)
            b[:, 4] += math.log(8 / (640 / s) ** 2)
            if class_counts is None:
                b[:, 5:5 + detect.nc] += math.log(0.6 / (detect.nc - 0.99))
            else:  # classes never seen are treated as seen once, to keep the log finite
                cf = torch.as_tensor(class_counts, dtype=torch.float32).clamp(min=1).to(b.device)
                b[:, 5:5 + detect.nc] += torch.log(cf / cf.sum())

    def fuse(self):
        """Fold every BatchNorm into its conv (inference speed-up); returns self."""
        for m in [m for m in self.modules() if isinstance(m, Conv)]:
            m.fuse_bn()
        return self


def _check_anchor_order(detect):
    """Make anchor sizes grow with stride (flip the level order if the YAML lists them reversed)."""
    area = detect.anchors.prod(-1).mean(-1).view(-1)
    da, ds = float(area[-1] - area[0]), float(detect.stride[-1] - detect.stride[0])
    if da and (da > 0) != (ds > 0):
        LOGGER.info('Reversing anchor order')
        detect.anchors[:] = detect.anchors.flip(0)


def _model_name(model):
    stem = Path(getattr(model, 'yaml_file', '') or '').stem
    return stem.replace('yolov5', 'YOLOv5') if stem else 'Model'


def _conv_flops_with_bias(x_shape, w_shape, bias, *args, out_shape=None, **kwargs):
    """Conv FLOPs plus one multiply-add per output element for the bias."""
    flops = conv_flop_count(x_shape, w_shape, out_shape, transposed=args[3] if len(args) > 3 else False)
    return flops + (2 * math.prod(out_shape) if bias is not None else 0)


def _batch_norm_flops(x_shape, *args, out_shape=None, **kwargs):
    """Inference BatchNorm is one multiply-add per element (what it costs once folded as a bias)."""
    return 2 * math.prod(x_shape)


# The published YOLOv5 GFLOPs (thop on fused models) count each conv bias addition as a
# multiply-add; FlopCounterMode counts convolutions only. These formulas add the bias (and the
# BatchNorm that becomes that bias when fused), so fused and unfused models report the same
# figure and it matches the published table (e.g. yolov5s 16.5 GFLOPs at 640).
_FLOP_FORMULAS = {
    **{op: _conv_flops_with_bias for op in (torch.ops.aten.convolution, torch.ops.aten._convolution)},
    **{op: _batch_norm_flops for op in (torch.ops.aten.native_batch_norm,
                                         torch.ops.aten._native_batch_norm_legit_no_training)},
}


@torch.no_grad()
def _count_flops(model, imgsz):
    """FLOPs (2 per multiply-add) at imgsz, counted at the max stride and scaled like YOLOv5."""
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    s = max(int(model.stride.max()), 32)
    p = next(model.parameters())
    was_training = model.training
    model.eval()  # a profiling pass must not update BatchNorm statistics
    try:
        with FlopCounterMode(display=False, custom_mapping=_FLOP_FORMULAS) as counter:
            model(torch.zeros(1, model.yaml.get('ch', 3), s, s, device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
    scale = (h / s) * (w / s)  # exact: every feature map scales with the input side
    per_layer = {}
    for name, counts in counter.get_flop_counts().items():
        parts = name.split('.')  # e.g. 'Model.model.17' -> layer 17
        if len(parts) == 3 and parts[1] == 'model' and parts[2].isdigit():
            per_layer[int(parts[2])] = sum(counts.values()) * scale
    return counter.get_total_flops() * scale, per_layer


def model_summary(model, imgsz=640, verbose=False):
    """Log a YOLOv5-style summary; return dict(layers, params, gradients, gflops, text)."""
    params = sum(p.numel() for p in model.parameters())
    grads = sum(p.numel() for p in model.parameters() if p.requires_grad)
    flops, per_layer = _count_flops(model, imgsz)
    layers = len(list(model.modules()))
    lines = []
    if verbose:
        lines.append(f"{'':>3}{'from':>18}{'n':>3}{'params':>10}{'GFLOPs':>8}  "
                     f"{'module':<40}{'arguments':<30}")
        for m in model.model:
            lines.append(f'{m.i:>3}{str(m.f):>18}{m.repeats:>3}{m.np:10.0f}'
                         f'{per_layer.get(m.i, 0) / 1e9:8.2f}  {m.type:<40}{str(m.yaml_args):<30}')
    lines.append(f'{_model_name(model)} summary: {layers} layers, {params} parameters, '
                 f'{grads} gradients, {flops / 1e9:.1f} GFLOPs')
    text = '\n'.join(lines)
    LOGGER.info(text)
    return dict(layers=layers, params=params, gradients=grads, gflops=flops / 1e9, text=text)
