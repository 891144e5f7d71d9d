"""Checkpoints: own format round trip, atomic save, refusal of unsafe pickles, official weights."""
import hashlib
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import models.common
from models.checkpoint import (CheckpointError, ModuleRecord, RestrictedUnpickler, UnsafeCheckpointError,
                               load_checkpoint, load_model, model_checkpoint_fields, save_checkpoint)
from models.yolo import Model

SHARED = Path(__file__).resolve().parents[2] / 'shared'
OFFICIAL = SHARED / 'weights' / 'yolov5n.pt'
REFERENCE_IO = SHARED / 'weights' / 'yolov5n_reference_io.pt'
OFFICIAL_SHA256 = '4f180cf23ba0717ada0badd6c685026d73d48f184d00fc159c2641284b2ac0a3'


def _small_model(nc=3, seed=0):
    torch.manual_seed(seed)
    model = Model('yolov5n.yaml', nc=nc)
    with torch.no_grad():  # non-default statistics, so a lost buffer would show in the outputs
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    model.names = [f'class{i}' for i in range(nc)]
    return model.eval()


def _outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_own_checkpoint_round_trip_is_bit_identical(tmp_path):
    model = _small_model()
    path = save_checkpoint(tmp_path / 'best.pt', {**model_checkpoint_fields(model), 'epoch': 7})
    raw = torch.load(path, weights_only=True)  # plain containers only
    assert raw['format'] == 'yolov5-distill' and raw['epoch'] == 7
    loaded, meta = load_model(path)
    x = torch.rand(2, 3, 64, 96)
    (y0, raw0), (y1, raw1) = _outputs(model, x), _outputs(loaded, x)
    assert torch.equal(y0, y1) and all(torch.equal(a, b) for a, b in zip(raw0, raw1))
    assert meta['names'] == loaded.names == ['class0', 'class1', 'class2']
    assert meta['source'] == 'yolov5-distill' and meta['epoch'] == 7 and meta['nc'] == 3
    assert not loaded.training and next(loaded.parameters()).dtype == torch.float32


def test_fused_model_checkpoint_loads_fused(tmp_path):
    model = _small_model().fuse()
    path = save_checkpoint(tmp_path / 'fused.pt', model_checkpoint_fields(model))
    loaded, _ = load_model(path)
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(_outputs(model, x)[0], _outputs(loaded, x)[0])


def test_content_weights_only_cannot_read_is_refused(tmp_path):
    path = tmp_path / 'last.pt'
    save_checkpoint(path, {**model_checkpoint_fields(_small_model()), 'epoch': 1})
    before = path.read_bytes()
    with pytest.raises(TypeError, match=r"ckpt\['opt'\]\['save_dir'\] is a pathlib.PosixPath"):
        save_checkpoint(path, {'model_yaml': {}, 'model': {}, 'opt': {'save_dir': Path('runs')}})
    with pytest.raises(TypeError, match=r"ckpt\['best_fitness'\] is a numpy.float64"):
        save_checkpoint(path, {'model_yaml': {}, 'model': {}, 'best_fitness': np.float64(0.5)})
    assert path.read_bytes() == before
    assert load_checkpoint(path)['epoch'] == 1


def test_failed_write_of_bytes_leaves_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / 'last.pt'
    save_checkpoint(path, {'model_yaml': {}, 'model': {}, 'epoch': 1})
    before = path.read_bytes()

    def half_write_then_fail(obj, f, *args, **kwargs):
        f.write(b'PK\x03\x04 partial')
        raise OSError('disk full')

    monkeypatch.setattr(torch, 'save', half_write_then_fail)
    with pytest.raises(OSError, match='disk full'):
        save_checkpoint(path, {'model_yaml': {}, 'model': {}, 'epoch': 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ['last.pt']


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def test_pickle_calling_os_system_is_refused(tmp_path):
    marker = tmp_path / 'pwned_marker'
    path = tmp_path / 'evil.pt'
    torch.save({'model': _RunsShell(marker), 'epoch': 0}, path)  # a torch zip archive
    with pytest.raises(UnsafeCheckpointError, match=r'os\.system'):
        load_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError, match=r'os\.system'):
        load_model(path)
    assert not marker.exists()


def test_hand_written_global_is_named_in_the_error(tmp_path):
    marker = tmp_path / 'pwned_marker'
    # Protocol-2 pickle: GLOBAL 'os system', the command string, TUPLE1, REDUCE, STOP.
    cmd = f'touch {marker}'.encode()
    payload = b'\x80\x02cos\nsystem\nX' + len(cmd).to_bytes(4, 'little') + cmd + b'\x85R.'
    template = io.BytesIO()
    torch.save({'x': 1}, template)
    path = tmp_path / 'evil.pt'
    with zipfile.ZipFile(template) as src, zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as dst:
        for name in src.namelist():
            dst.writestr(name, payload if name.endswith('data.pkl') else src.read(name))
    with pytest.raises(UnsafeCheckpointError, match=r"'os\.system'"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize('module, name', [
    ('builtins', 'eval'), ('builtins', 'getattr'), ('subprocess', 'Popen'), ('torch', 'load'),
    ('models.yolo', 'attempt_load'), ('models.common', 'DetectMultiBackend'),
])
def test_unpickler_refuses_globals_outside_whitelist(module, name):
    with pytest.raises(UnsafeCheckpointError, match=f'{module}.{name}'):
        RestrictedUnpickler(io.BytesIO(b'')).find_class(module, name)


def test_unpickler_maps_yolov5_classes_to_inert_records():
    unpickler = RestrictedUnpickler(io.BytesIO(b''))
    for module, name in [('models.common', 'Conv'), ('models.yolo', 'Detect'),
                         ('torch.nn.modules.conv', 'Conv2d')]:
        cls = unpickler.find_class(module, name)
        assert issubclass(cls, ModuleRecord) and cls.source == f'{module}.{name}'
    assert unpickler.find_class('models.common', 'Conv') is not models.common.Conv


def _save_like_ultralytics(path, model, ema=None):
    """Pickle whole modules the way YOLOv5 does; our classes share its module paths."""
    ckpt = {'epoch': -1, 'best_fitness': None, 'model': model.half(), 'ema': ema,
            'updates': None, 'optimizer': None, 'date': '2022-02-08T18:24:20'}
    torch.save(ckpt, path)


def test_pickled_model_loads_through_records(tmp_path):
    model = _small_model(nc=4)
    expected_sd = {k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    _save_like_ultralytics(tmp_path / 'official_like.pt', model)
    ckpt = load_checkpoint(tmp_path / 'official_like.pt')
    assert ckpt['source'] == 'ultralytics' and ckpt['names'] == [f'class{i}' for i in range(4)]
    assert ckpt['model'].keys() == expected_sd.keys()
    assert all(torch.equal(ckpt['model'][k], v) and ckpt['model'][k].dtype == v.dtype
               for k, v in expected_sd.items())
    loaded, meta = load_model(tmp_path / 'official_like.pt')
    assert meta['nc'] == 4 and loaded.yaml['nc'] == 4


def test_ema_is_preferred_over_model(tmp_path):
    model, ema = _small_model(seed=1), _small_model(seed=2)
    ema_weight = ema.model[0].conv.weight.detach().half().float()
    _save_like_ultralytics(tmp_path / 'last.pt', model, ema=ema.half())
    loaded, _ = load_model(tmp_path / 'last.pt')
    assert torch.equal(loaded.model[0].conv.weight, ema_weight)


def test_v5_focus_checkpoint_gets_a_clear_message(tmp_path, monkeypatch):
    class Focus(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(12, 16, 3)

    Focus.__module__, Focus.__qualname__ = 'models.common', 'Focus'
    monkeypatch.setattr(models.common, 'Focus', Focus, raising=False)
    model = _small_model()
    model.model[0] = Focus()
    _save_like_ultralytics(tmp_path / 'v5.pt', model)
    with pytest.raises(CheckpointError, match=r'v5\.0'):
        load_model(tmp_path / 'v5.pt')


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='never downloads'):
        load_model(tmp_path / 'yolov5n.pt')
    (tmp_path / 'junk.pt').write_bytes(b'not a checkpoint at all' * 10)
    with pytest.raises(CheckpointError, match='not a PyTorch checkpoint'):
        load_model(tmp_path / 'junk.pt')
    torch.save({'model.0.conv.weight': torch.zeros(1)}, tmp_path / 'state_dict.pt')
    with pytest.raises(CheckpointError, match='neither'):
        load_model(tmp_path / 'state_dict.pt')


def test_load_model_from_yaml_name_and_new_class_count(tmp_path):
    model, meta = load_model('yolov5n.yaml', nc=2)
    assert meta['source'] == 'yaml' and model.nc == 2 and not model.training
    fused, _ = load_model('yolov5n', fuse=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    path = save_checkpoint(tmp_path / 'w.pt', model_checkpoint_fields(_small_model(nc=3)))
    tuned, meta = load_model(path, nc=5)
    done, total = meta['transferred']
    assert tuned.nc == 5 and done == total - 6  # only the 3 Detect convs' weight+bias change shape
    assert torch.equal(tuned.model[0].conv.weight, _small_model(nc=3).model[0].conv.weight)


# --------------------------------------------------------------------------------------------
# Official ultralytics checkpoint (reference assets; skipped when absent)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def official():
    if not OFFICIAL.is_file() or not REFERENCE_IO.is_file():
        pytest.skip('reference assets in ../shared are absent')
    return OFFICIAL


def test_official_file_is_the_documented_one(official):
    assert hashlib.sha256(official.read_bytes()).hexdigest() == OFFICIAL_SHA256


def test_official_yolov5n_matches_reference_output(official):
    model, meta = load_model(official)
    ref = torch.load(REFERENCE_IO, weights_only=True)
    with torch.no_grad():
        decoded, raw = model(ref['input'])
    assert decoded.dtype == torch.float32 and decoded.shape == ref['decoded'].shape
    assert (decoded - ref['decoded']).abs().max() < 1e-3
    assert meta['source'] == 'ultralytics' and meta['names'][0] == 'person' and meta['nc'] == 80
    assert meta['stride'] == [8.0, 16.0, 32.0]


def test_official_state_dict_maps_key_for_key(official):
    ckpt = load_checkpoint(official)
    ours = Model('yolov5n.yaml').state_dict()
    assert ckpt['model'].keys() == ours.keys()
    assert all(ckpt['model'][k].shape == v.shape for k, v in ours.items())
    assert all(v.dtype == torch.float32 for v in ckpt['model'].values() if v.is_floating_point())


def test_official_converted_to_own_format_keeps_outputs(official, tmp_path):
    ckpt = load_checkpoint(official)
    own = save_checkpoint(tmp_path / 'yolov5n_own.pt', ckpt)
    a, _ = load_model(official)
    b, _ = load_model(own)
    x = torch.load(REFERENCE_IO, weights_only=True)['input'][:1]
    assert torch.equal(_outputs(a, x)[0], _outputs(b, x)[0])


def test_strip_checkpoint_keeps_outputs_and_drops_training_state(tmp_path):
    from models.checkpoint import strip_checkpoint
    torch.manual_seed(0)
    model = Model('yolov5n.yaml', nc=3).eval()
    fields = model_checkpoint_fields(model)
    big = tmp_path / 'full.pt'
    save_checkpoint(big, {**fields, 'nc': 3, 'optimizer': {'state': {}, 'lr': torch.zeros(1000)},
                          'train_model': {k: v.clone() for k, v in fields['model'].items()}})
    x = torch.rand(1, 3, 64, 64)
    want = model(x)[0]
    path, size_mb = strip_checkpoint(big, tmp_path / 'small.pt', half=True)
    ckpt = torch.load(path, weights_only=True)
    assert 'optimizer' not in ckpt and 'train_model' not in ckpt
    assert all(v.dtype == torch.float16 for v in ckpt['model'].values() if v.is_floating_point())
    assert size_mb < big.stat().st_size / 1e6 / 3
    got = load_model(path)[0].eval()(x)[0]
    assert next(load_model(path)[0].parameters()).dtype == torch.float32
    assert (got - want).abs().max() < 0.05 * want.abs().max()  # fp16 rounding only
