"""export.py: ONNX and TorchScript files, dynamic batch, metadata, and agreement with PyTorch."""
import ast
import json

import numpy as np
import pytest
import torch

import export
from models.checkpoint import load_model, model_checkpoint_fields, save_checkpoint
from models.yolo import Model

NAMES = ['cat', 'dog', 'bird']
IMGSZ = (64, 96)  # h != w catches swapped axes


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    model = Model('yolov5n.yaml', nc=3)
    model.names = list(NAMES)
    return save_checkpoint(tmp_path_factory.mktemp('w') / 'tiny.pt', model_checkpoint_fields(model))


@pytest.fixture(scope='module')
def exported(weights, tmp_path_factory):
    out = tmp_path_factory.mktemp('export')
    files = export.run(weights=weights, imgsz=IMGSZ, include=('onnx', 'torchscript'), dynamic=True,
                       device='cpu', project=out)
    return files


@pytest.fixture(scope='module')
def reference(weights):
    """The unfused PyTorch model: its decoded output is what every export must reproduce."""
    model, _ = load_model(weights)
    for p in model.parameters():
        p.requires_grad = False
    return lambda x: model(x)[0].numpy()


def _close(a, b):
    return np.abs(a - b).max() <= 1e-3 * max(1.0, np.abs(b).max())


def test_onnx_file_metadata_and_dynamic_batch(exported, reference):
    ort = pytest.importorskip('onnxruntime')
    import onnx

    file = exported['onnx']
    assert file.name == 'tiny.onnx' and file.stat().st_size > 100_000
    model = onnx.load(str(file))
    meta = {p.key: p.value for p in model.metadata_props}
    assert ast.literal_eval(meta['names']) == {0: 'cat', 1: 'dog', 2: 'bird'}
    assert int(meta['stride']) == 32
    session = ort.InferenceSession(str(file), providers=['CPUExecutionProvider'])
    x = torch.rand(2, 3, *IMGSZ)  # exported at batch 1
    out = session.run(None, {'images': x.numpy()})[0]
    n_anchors = 3 * sum((IMGSZ[0] // s) * (IMGSZ[1] // s) for s in (8, 16, 32))
    assert out.shape == (2, n_anchors, 8)
    assert _close(out, reference(x))


def test_torchscript_file_config_and_output(exported, reference):
    extra = {'config.txt': ''}
    with export.quiet_deprecations():
        ts = torch.jit.load(str(exported['torchscript']), _extra_files=extra)
    config = json.loads(extra['config.txt'])
    assert config['shape'] == [1, 3, *IMGSZ] and config['names'] == {'0': 'cat', '1': 'dog', '2': 'bird'}
    x = torch.rand(2, 3, *IMGSZ)
    assert _close(ts(x).numpy(), reference(x))


def test_check_catches_a_wrong_export(weights):
    model = export.prepare_model(weights, torch.device('cpu'), half=False)
    im = torch.zeros(1, 3, 64, 64)
    good = lambda x: model(x).numpy()  # noqa: E731
    export.compare_outputs('ok', good, model, im, [1, 2])
    shifted = lambda x: model(x).numpy() + np.float32(0.05)  # noqa: E731  e.g. a broken score
    with pytest.raises(export.ExportCheckError, match='differs'):
        export.compare_outputs('bad', shifted, model, im, [1])
    fixed_batch = lambda x: model(x[:1]).numpy()  # noqa: E731  a static-batch export
    with pytest.raises(export.ExportCheckError, match='shape'):
        export.compare_outputs('static', fixed_batch, model, im, [2])


def test_writes_next_to_the_weights(weights):
    files = export.run(weights=weights, imgsz=64, include=['onnx'], check=False)
    assert files['onnx'] == weights.parent / 'tiny.onnx' and files['onnx'].is_file()


@pytest.mark.parametrize('kwargs, match', [
    (dict(include=['tflite']), 'not supported'),
    (dict(include=['onnx'], half=True), 'GPU'),
    (dict(batch_size=0), 'batch-size'),
])
def test_bad_options(weights, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        export.run(weights=weights, imgsz=64, device='cpu', project=tmp_path, **kwargs)


# ------------------------------------------------------------------ segmentation (-seg) models: two outputs
@pytest.fixture(scope='module')
def seg_weights(tmp_path_factory):
    torch.manual_seed(0)
    model = Model('yolov5n-seg.yaml', nc=3)
    model.names = list(NAMES)
    return save_checkpoint(tmp_path_factory.mktemp('w') / 'tiny-seg.pt', model_checkpoint_fields(model))


@pytest.fixture(scope='module')
def seg_exported(seg_weights, tmp_path_factory):
    return export.run(weights=seg_weights, imgsz=IMGSZ, include=('onnx', 'torchscript'), dynamic=True,
                      device='cpu', project=tmp_path_factory.mktemp('export'))


@pytest.fixture(scope='module')
def seg_reference(seg_weights):
    """The unfused eval model's (decoded predictions, prototypes), as v7.0 exports them."""
    model, _ = load_model(seg_weights)
    for p in model.parameters():
        p.requires_grad = False

    def run(x):
        decoded, (_, protos) = model(x)
        return decoded.numpy(), protos.numpy()
    return run


def test_seg_onnx_has_predictions_and_prototypes(seg_exported, seg_reference):
    ort = pytest.importorskip('onnxruntime')
    session = ort.InferenceSession(str(seg_exported['onnx']), providers=['CPUExecutionProvider'])
    assert [o.name for o in session.get_outputs()] == ['output0', 'output1']
    x = torch.rand(2, 3, *IMGSZ)  # exported at batch 1
    decoded, protos = session.run(None, {'images': x.numpy()})
    n_anchors = 3 * sum((IMGSZ[0] // s) * (IMGSZ[1] // s) for s in (8, 16, 32))
    assert decoded.shape == (2, n_anchors, 5 + 3 + 32) and protos.shape == (2, 32, IMGSZ[0] // 4, IMGSZ[1] // 4)
    ref_decoded, ref_protos = seg_reference(x)
    assert _close(decoded, ref_decoded) and _close(protos, ref_protos)


def test_seg_torchscript_has_predictions_and_prototypes(seg_exported, seg_reference):
    with export.quiet_deprecations():
        ts = torch.jit.load(str(seg_exported['torchscript']))
    x = torch.rand(2, 3, *IMGSZ)
    decoded, protos = ts(x)
    ref_decoded, ref_protos = seg_reference(x)
    assert _close(decoded.numpy(), ref_decoded) and _close(protos.numpy(), ref_protos)


def test_check_compares_every_output(seg_weights):
    model = export.prepare_model(seg_weights, torch.device('cpu'), half=False)
    im = torch.zeros(1, 3, 64, 64)
    export.compare_outputs('ok', lambda x: [t.numpy() for t in model(x)], model, im, [1, 2])
    bad_protos = lambda x: [model(x)[0].numpy(), model(x)[1].numpy() + np.float32(0.05)]  # noqa: E731
    with pytest.raises(export.ExportCheckError, match='output1'):
        export.compare_outputs('bad', bad_protos, model, im, [1])
    with pytest.raises(export.ExportCheckError, match='1 outputs != PyTorch 2'):
        export.compare_outputs('boxes only', lambda x: model(x)[0].numpy(), model, im, [1])
