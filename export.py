"""Export a YOLOv5 checkpoint to ONNX and/or TorchScript, then check the export against PyTorch.

Usage (YOLOv5 flags):
    python export.py --weights runs/train/exp/weights/best.pt --include onnx
    python export.py --weights best.pt --include onnx torchscript --imgsz 640 --dynamic
    python export.py --weights best.pt --include onnx --half --device 0     # FP16, CUDA only
The exported graph takes `images` [B, 3, H, W] float in 0..1 (RGB) and returns `output0`
[B, N, 5 + nc]: xywh in input pixels, objectness and class scores (apply NMS yourself). A segmentation
(-seg) model has YOLOv5 v7.0's two outputs: `output0` [B, N, 5 + nc + 32] (the 32 raw mask coefficients
last) and `output1` [B, 32, H/4, W/4], the mask prototypes.
Only the batch axis can be dynamic: the anchor grids are traced for one input size.
Files are written next to the weights (or to --project), e.g. best.onnx, best.torchscript.
"""
import argparse
import json
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from models.yolo import Detect
from utils.cli import UserError
from utils.sources import check_imgsz
from utils.torch_utils import select_device

ROOT = Path(__file__).resolve().parent
FORMATS = ('torchscript', 'onnx')
TOLERANCE = {torch.float32: 1e-3, torch.float16: 1e-2}  # max |diff| / max(|reference|, 1)


class ExportCheckError(RuntimeError):
    """The exported model's output differs from PyTorch's beyond the tolerance."""


@contextmanager
def quiet_deprecations():
    """Hide PyTorch's notices that jit/legacy ONNX will go away: nothing the user can act on."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        warnings.simplefilter('ignore', FutureWarning)
        yield


def check_options(include, half, dynamic, device):
    include = [x.lower() for x in include]
    unknown = [x for x in include if x not in FORMATS]
    if unknown:
        raise UserError(f'--include {unknown} not supported; choose from {list(FORMATS)}')
    if half and device.type == 'cpu':
        raise UserError('--half only works for a GPU export, i.e. use --device 0')
    if half and dynamic:
        raise UserError('--half is not compatible with --dynamic; use one or the other')
    return include


def prepare_model(weights, device, half):
    """Fused eval model whose Detect returns only the decoded tensor; frozen; FP16 with --half."""
    from models.checkpoint import load_model  # late import keeps `--help` fast

    model, meta = load_model(weights, device=device, fuse=True)
    if meta['source'] == 'yaml':
        print(f'WARNING: {weights} is a model config: exporting random weights (smoke test only)')
    for p in model.parameters():
        p.requires_grad = False
    for m in model.modules():
        if isinstance(m, Detect):
            m.export = True
    return (model.half() if half else model).eval()


def output_names(model):
    """v7.0's output names: a -seg model adds its mask prototypes as `output1`."""
    return ['output0', 'output1'] if model.task == 'segment' else ['output0']


def output_dir(weights, project):
    """--project when given; else next to a .pt file; a bare model config goes to runs/export."""
    if project:
        d = Path(project)
    elif Path(str(weights)).is_file() and not str(weights).endswith(('.yaml', '.yml')):
        d = Path(weights).resolve().parent
    else:
        d = ROOT / 'runs' / 'export'
    d.mkdir(parents=True, exist_ok=True)
    return d


def model_metadata(model, imgsz):
    return {'stride': int(model.stride.max()), 'names': {i: n for i, n in enumerate(model.names)},
            'imgsz': list(imgsz)}


def export_torchscript(model, im, file, meta):
    """Traced TorchScript with the YOLOv5-style config.txt (shape, stride, names) attached."""
    with quiet_deprecations():
        ts = torch.jit.trace(model, im, strict=False, check_trace=False)  # check_export compares later
        extra = {'config.txt': json.dumps({'shape': list(im.shape), **meta})}
        ts.save(str(file), _extra_files=extra)
    return file


def export_onnx(model, im, file, meta, opset, dynamic, simplify):
    """ONNX via the TorchScript-based exporter (no onnxscript needed); names/stride in metadata."""
    import onnx

    outputs = output_names(model)
    axes = {name: {0: 'batch'} for name in ['images', *outputs]} if dynamic else None
    with quiet_deprecations():
        torch.onnx.export(model, im, str(file), dynamo=False, opset_version=opset, do_constant_folding=True,
                          input_names=['images'], output_names=outputs, dynamic_axes=axes)
    model_onnx = onnx.load(str(file))
    onnx.checker.check_model(model_onnx)
    if simplify:
        model_onnx = simplify_onnx(model_onnx)
    for k, v in meta.items():  # str(dict) as YOLOv5 writes it, so its readers parse it too
        entry = model_onnx.metadata_props.add()
        entry.key, entry.value = k, str(v)
    onnx.save(model_onnx, str(file))
    return file


def simplify_onnx(model_onnx):
    try:
        import onnxsim
    except ImportError:
        print('ONNX: --simplify skipped: onnxsim is not installed (pip install onnxsim)')
        return model_onnx
    simplified, ok = onnxsim.simplify(model_onnx)
    if not ok:
        raise ExportCheckError('ONNX: onnxsim could not validate the simplified model')
    return simplified


def onnx_runner(file, device):
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    cuda = device.type == 'cuda' and 'CUDAExecutionProvider' in ort.get_available_providers()
    providers = ['CUDAExecutionProvider', 'CPUExecutionProvider'] if cuda else ['CPUExecutionProvider']
    session = ort.InferenceSession(str(file), providers=providers)
    return lambda x: session.run(None, {'images': x.cpu().numpy()})


def torchscript_runner(file, device):
    with quiet_deprecations():
        ts = torch.jit.load(str(file), map_location=device)
    return ts


def check_batch_sizes(batch_size, dynamic):
    """The export batch, plus another one when the batch axis is dynamic."""
    return [batch_size, batch_size + 1] if dynamic else [batch_size]


def as_arrays(y):
    """A model's or a runtime's output(s) as a list of float32 arrays (a -seg model has two)."""
    ys = y if isinstance(y, (list, tuple)) else [y]
    return [t.detach().float().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float32)
            for t in ys]


def compare_outputs(name, run_exported, model, im, batch_sizes):
    """Random inputs through the export and PyTorch, every output; raise ExportCheckError beyond the tolerance."""
    tol = TOLERANCE[im.dtype]
    for b in batch_sizes:
        x = torch.rand((b, *im.shape[1:]), device=im.device, dtype=im.dtype)
        refs, outs = as_arrays(model(x)), as_arrays(run_exported(x))
        if len(outs) != len(refs):
            raise ExportCheckError(f'{name}: {len(outs)} outputs != PyTorch {len(refs)}')
        for i, (out, ref) in enumerate(zip(outs, refs)):
            where = f'batch {b} output{i}' if len(refs) > 1 else f'batch {b}'
            compare_output(name, where, out, ref, tol)


def compare_output(name, where, out, ref, tol):
    if out.shape != ref.shape:
        raise ExportCheckError(f'{name}: output shape {out.shape} != PyTorch {ref.shape} at {where}')
    diff = np.abs(out - ref)
    rel = float((diff / np.maximum(np.abs(ref), 1)).max())
    print(f'{name}: check {where}: max abs diff {diff.max():.3g}, relative {rel:.3g} (tolerance {tol:g})')
    if rel > tol:
        raise ExportCheckError(f'{name}: exported output differs from PyTorch at {where} '
                               f'(relative {rel:.3g} > {tol:g})')


def check_export(fmt, file, model, im, dynamic, device):
    name = 'ONNX' if fmt == 'onnx' else 'TorchScript'
    runner = onnx_runner(file, device) if fmt == 'onnx' else torchscript_runner(file, device)
    if runner is None:
        print(f'{name}: check skipped: onnxruntime is not installed (pip install onnxruntime)')
        return False
    compare_outputs(name, runner, model, im, check_batch_sizes(im.shape[0], dynamic))
    return True


def _size_mb(file):
    return Path(file).stat().st_size / 1e6


@torch.no_grad()
def run(weights=ROOT / 'weights/demo_teacher_yolov5s.pt', imgsz=(640, 640), batch_size=1, device='cpu',
        include=('torchscript',), half=False, dynamic=False, opset=17, simplify=False, project=None, check=True):
    """Export `weights`; returns {format: file}. Arguments mirror the CLI flags."""
    if batch_size < 1:
        raise UserError(f'--batch-size must be >= 1, got {batch_size}')
    device = select_device(device)
    include = check_options(include, half, dynamic, device)
    model = prepare_model(weights, device, half)
    imgsz = check_imgsz(imgsz, int(model.stride.max()))
    im = torch.zeros(batch_size, 3, *imgsz, device=device, dtype=torch.float16 if half else torch.float32)
    for _ in range(2):  # dry runs build the cached anchor grids before tracing
        y = model(im)
    meta = model_metadata(model, imgsz)
    out_dir, stem = output_dir(weights, project), Path(str(weights)).stem
    shapes = ', '.join(str(tuple(t.shape)) for t in (y if isinstance(y, tuple) else (y,)))  # -seg: 2 outputs
    print(f'PyTorch: starting from {weights} with output shape {shapes}')
    files = {}
    for fmt in include:
        t = time.time()
        file = out_dir / f'{stem}.{fmt}'
        if fmt == 'onnx':
            export_onnx(model, im, file, meta, opset, dynamic, simplify)
        else:
            export_torchscript(model, im, file, meta)
        name = 'ONNX' if fmt == 'onnx' else 'TorchScript'
        print(f'{name}: export success {time.time() - t:.1f}s, saved as {file} ({_size_mb(file):.1f} MB)')
        if check:
            check_export(fmt, file, model, im, dynamic, device)
        files[fmt] = file
    print(f'Export complete. Results saved to {out_dir}')
    return files


def parse_opt(argv=None):
    p = argparse.ArgumentParser(description='Export YOLOv5 to ONNX / TorchScript',
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--weights', type=str, default=str(ROOT / 'weights/demo_teacher_yolov5s.pt'),
                   help='checkpoint (.pt, own or official YOLOv5) or a model YAML (random weights)')
    p.add_argument('--imgsz', '--img', '--img-size', nargs='+', type=int, default=[640], help='image (h, w)')
    p.add_argument('--batch-size', type=int, default=1, help='batch size')
    p.add_argument('--device', default='cpu', help='cuda device, i.e. 0 or cpu')
    p.add_argument('--half', action='store_true', help='FP16 half-precision export (CUDA only)')
    p.add_argument('--dynamic', action='store_true', help='ONNX/TorchScript: dynamic batch axis')
    p.add_argument('--simplify', action='store_true', help='ONNX: simplify with onnxsim (if installed)')
    p.add_argument('--opset', type=int, default=17, help='ONNX: opset version')
    p.add_argument('--include', nargs='+', default=['torchscript'], help=f'formats: {", ".join(FORMATS)}')
    p.add_argument('--project', default=None, help='output folder (default: next to the weights)')
    p.add_argument('--no-check', dest='check', action='store_false',
                   help='skip running the export against PyTorch')
    return p.parse_args(argv)


def main(opt):
    return run(**vars(opt))


if __name__ == '__main__':
    from utils.cli import run_cli
    run_cli(main, parse_opt, user_errors=(ExportCheckError,))
