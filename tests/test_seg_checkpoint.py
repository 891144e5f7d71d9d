"""Segmentation checkpoints: own format, YOLOv5 v7.0 pickles (getattr allowed for Detect.forward only),
and the v7.0 reference outputs of yolov5n-seg (boxes, prototypes, NMS, masks)."""
import pickle
from pathlib import Path

import pytest
import torch

from models.checkpoint import (CheckpointError, RestrictedUnpickler, UnsafeCheckpointError, load_checkpoint,
                               load_model, model_checkpoint_fields, save_checkpoint)
from models.yolo import Detect, Model
from test_checkpoint import _op_global, _op_value, _torch_zip_with_pickle
from utils.boxes import non_max_suppression
from utils.masks import mask_iou, process_mask

SHARED = Path(__file__).resolve().parents[2] / 'shared'
V7_SEG = SHARED / 'weights' / 'yolov5n-seg_v7.0.pt'
V7_SEG_IO = SHARED / 'weights' / 'yolov5n-seg_reference_io.pt'


def _seg_model(nc=3, seed=0):
    torch.manual_seed(seed)
    model = Model('yolov5n-seg.yaml', nc=nc).eval()
    model.names = [f'class{i}' for i in range(nc)]
    return model


def _outputs(model, x):
    with torch.no_grad():
        decoded, (levels, proto) = model.eval()(x)
    return [decoded, proto, *levels]


def test_own_segmentation_checkpoint_round_trip(tmp_path):
    model = _seg_model()
    path = save_checkpoint(tmp_path / 'best.pt', model_checkpoint_fields(model))
    loaded, meta = load_model(path)
    x = torch.rand(1, 3, 64, 64)
    assert loaded.task == 'segment' and meta['nc'] == 3 and meta['names'] == model.names
    assert all(torch.equal(a, b) for a, b in zip(_outputs(model, x), _outputs(loaded, x)))
    tuned, meta = load_model(path, nc=5)  # new classes: everything but the head convs carries over
    done, total = meta['transferred']
    assert tuned.task == 'segment' and done == total - 6
    assert torch.equal(tuned.model[-1].proto.cv3.conv.weight, model.model[-1].proto.cv3.conv.weight)


def test_pickle_like_v7_with_detect_forward_attribute_loads(tmp_path):
    """v7.0's Segment holds `self.detect = Detect.forward`: torch.save writes getattr(Detect, 'forward')."""
    model = _seg_model(nc=4).half()
    model.model[-1].detect = Detect.forward
    path = tmp_path / 'v7_like.pt'
    torch.save({'epoch': -1, 'model': model, 'ema': None, 'optimizer': None}, path)
    assert b'getattr' in path.read_bytes()  # the pickle really calls it (uncompressed zip member)
    ckpt = load_checkpoint(path)
    assert ckpt['source'] == 'ultralytics' and ckpt['model_yaml']['nc'] == 4
    loaded, meta = load_model(path)
    expected = {k: v.float() for k, v in model.state_dict().items()}
    assert loaded.task == 'segment' and meta['names'] == model.names
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items() if v.is_floating_point())


def _getattr_pickle(obj_ops, *name_ops):
    """A protocol-2 data.pkl calling getattr(<obj_ops>, *name_ops), wrapped as {'model': result}."""
    call = _op_global('__builtin__', 'getattr') + obj_ops + b''.join(name_ops)
    call += {1: pickle.TUPLE2, 2: pickle.TUPLE3}[len(name_ops)] + pickle.REDUCE
    return pickle.PROTO + b'\x02' + pickle.EMPTY_DICT + _op_value('model') + call + pickle.SETITEM + pickle.STOP


@pytest.mark.parametrize('obj_ops, name_ops, named', [
    (_op_global('models.yolo', 'Detect'), [_op_value('__init__')], "getattr(models.yolo.Detect, '__init__')"),
    (_op_global('models.yolo', 'Detect'), [_op_value('__globals__')], "getattr(models.yolo.Detect, '__globals__')"),
    (_op_global('models.yolo', 'Segment'), [_op_value('forward')], "getattr(models.yolo.Segment, 'forward')"),
    (_op_global('models.common', 'Conv'), [_op_value('forward')], "getattr(models.common.Conv, 'forward')"),
    (_op_global('collections', 'OrderedDict'), [_op_value('fromkeys')],
     "getattr(collections.OrderedDict, 'fromkeys')"),
    (_op_global('torch._utils', '_rebuild_tensor_v2'), [_op_value('__globals__')],
     "getattr(torch._utils._rebuild_tensor_v2, '__globals__')"),
    (_op_global('__builtin__', 'getattr'), [_op_value('__self__')], "getattr(__builtin__.getattr, '__self__')"),
    (_op_value('os'), [_op_value('system')], "getattr('os', 'system')"),
    (_op_global('models.yolo', 'Detect'), [_op_value('forward'), _op_value(None)],
     "getattr(models.yolo.Detect, 'forward', None)"),
    (_op_global('models.yolo', 'Detect') + pickle.EMPTY_TUPLE + pickle.REDUCE, [_op_value('forward')],
     "getattr(a models.yolo.Detect object, 'forward')"),
])
def test_any_other_getattr_is_refused_and_named(tmp_path, obj_ops, name_ops, named):
    path = _torch_zip_with_pickle(tmp_path / 'evil.pt', _getattr_pickle(obj_ops, *name_ops))
    with pytest.raises(UnsafeCheckpointError, match='checkpoint refused') as info:
        load_checkpoint(path)
    assert named in str(info.value) and '\n' not in str(info.value)


def test_getattr_chain_to_os_system_runs_nothing(tmp_path):
    """The classic escape: getattr(getattr(Detect, 'forward'), '__globals__')['os'].system(cmd)."""
    marker = tmp_path / 'pwned_marker'
    getattr_op = _op_global('__builtin__', 'getattr')
    forward = getattr_op + _op_global('models.yolo', 'Detect') + _op_value('forward') + pickle.TUPLE2 + pickle.REDUCE
    globals_ = getattr_op + forward + _op_value('__globals__') + pickle.TUPLE2 + pickle.REDUCE
    os_module = getattr_op + globals_ + _op_value('get') + pickle.TUPLE2 + pickle.REDUCE
    os_module += _op_value('os') + pickle.TUPLE1 + pickle.REDUCE
    system = getattr_op + os_module + _op_value('system') + pickle.TUPLE2 + pickle.REDUCE
    run = system + _op_value(f'touch {marker}') + pickle.TUPLE1 + pickle.REDUCE
    path = _torch_zip_with_pickle(tmp_path / 'evil.pt', pickle.PROTO + b'\x02' + run + pickle.STOP)
    with pytest.raises(UnsafeCheckpointError, match=r"getattr\(a models\.yolo\.Detect\.forward object, '__globals__'\)"):
        load_model(path)
    assert not marker.exists()


def test_only_the_protocol_2_spelling_of_getattr_is_known():
    unpickler = RestrictedUnpickler(__import__('io').BytesIO(b''))
    assert callable(unpickler.find_class('__builtin__', 'getattr'))
    with pytest.raises(UnsafeCheckpointError, match='builtins.getattr'):
        unpickler.find_class('builtins', 'getattr')


def test_allowed_getattr_alone_is_not_a_checkpoint(tmp_path):
    payload = _getattr_pickle(_op_global('models.yolo', 'Detect'), _op_value('forward'))
    path = _torch_zip_with_pickle(tmp_path / 'odd.pt', payload)
    with pytest.raises(CheckpointError, match='neither'):
        load_checkpoint(path)


# --------------------------------------------------------------------------------------------
# YOLOv5 v7.0's own yolov5n-seg checkpoint and its reference outputs (skipped when absent)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def v7_seg():
    if not V7_SEG.is_file() or not V7_SEG_IO.is_file():
        pytest.skip('reference assets in ../shared are absent')
    model, meta = load_model(V7_SEG)
    reference = torch.load(V7_SEG_IO, weights_only=True)
    with torch.no_grad():
        decoded, (_, proto) = model(reference['input'])
    return model, meta, reference, decoded, proto


def test_v7_checkpoint_loads_key_for_key(v7_seg):
    model, meta, *_ = v7_seg
    assert model.task == 'segment' and meta['source'] == 'ultralytics' and meta['nc'] == 80
    assert meta['names'][0] == 'person' and meta['stride'] == [8.0, 16.0, 32.0]
    ckpt = load_checkpoint(V7_SEG)
    ours = Model('yolov5n-seg.yaml').state_dict()
    assert ckpt['model'].keys() == ours.keys()
    assert all(ckpt['model'][k].shape == v.shape for k, v in ours.items())


def test_v7_decoded_and_prototypes_match_reference(v7_seg):
    _, _, reference, decoded, proto = v7_seg
    assert decoded.shape == reference['decoded'].shape == (2, 6300, 117)
    assert proto.shape == reference['proto'].shape == (2, 32, 80, 80)
    assert (decoded - reference['decoded']).abs().max() < 1e-3
    assert (proto - reference['proto']).abs().max() < 1e-3


def test_v7_nms_and_masks_match_reference(v7_seg):
    _, _, reference, decoded, proto = v7_seg
    detections = non_max_suppression(decoded, 0.25, 0.45, nm=32)
    shape = reference['input'].shape[2:]
    for i, (det, want, want_masks) in enumerate(zip(detections, reference['nms_conf0.25_iou0.45'],
                                                    reference['masks_upsampled'])):
        assert det.shape == want.shape and len(det)
        assert (det - want).abs().max() < 1e-3  # boxes, scores, classes and the 32 coefficients
        masks = process_mask(proto[i], det[:, 6:], det[:, :4], shape, upsample=True)
        assert masks.dtype == torch.bool and masks.shape == want_masks.shape
        assert (mask_iou(masks, want_masks).diagonal() > 0.99).all()
