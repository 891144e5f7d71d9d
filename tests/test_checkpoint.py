"""Checkpoints: own format round trip, atomic save, refusal of unsafe pickles, official weights."""
import collections
import functools
import hashlib
import io
import os
import pickle
import pickletools
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import models.common
from models.checkpoint import (OPAQUE_GLOBALS, SAFE_CALLABLES, YOLOV5_CLASSES, CheckpointError, ModuleRecord,
                               OpaqueValue, RestrictedUnpickler, UnsafeCheckpointError, load_checkpoint,
                               load_model, model_checkpoint_fields, save_checkpoint)
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


@functools.lru_cache(maxsize=1)
def _torch_zip_template():
    template = io.BytesIO()
    torch.save({'x': 1}, template)
    return template.getvalue()


def _torch_zip_with_pickle(path, payload):
    """A torch.save zip archive whose data.pkl is the given hand-written pickle."""
    template = io.BytesIO(_torch_zip_template())
    with zipfile.ZipFile(template) as src, zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as dst:
        for name in src.namelist():
            dst.writestr(name, payload if name.endswith('data.pkl') else src.read(name))
    return path


def test_hand_written_global_is_named_in_the_error(tmp_path):
    marker = tmp_path / 'pwned_marker'
    # Protocol-2 pickle: GLOBAL 'os system', the command string, TUPLE1, REDUCE, STOP.
    cmd = f'touch {marker}'.encode()
    payload = b'\x80\x02cos\nsystem\nX' + len(cmd).to_bytes(4, 'little') + cmd + b'\x85R.'
    path = _torch_zip_with_pickle(tmp_path / 'evil.pt', payload)
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
    # made per unpickler: a class one file sees is never the one another load gets
    conv = unpickler.find_class('models.common', 'Conv')
    assert unpickler.find_class('models.common', 'Conv') is conv  # one class per global within a load
    assert RestrictedUnpickler(io.BytesIO(b'')).find_class('models.common', 'Conv') is not conv


# --------------------------------------------------------------------------------------------
# A crafted pickle must not change anything that outlives its own load
# --------------------------------------------------------------------------------------------
# Everything the restricted unpickler can hand to a pickle (torch's storage types are resolved
# by torch.load itself and need no entry here).
WHITELISTED_GLOBALS = sorted({*SAFE_CALLABLES, *OPAQUE_GLOBALS, ('torch.nn.modules.conv', 'Conv2d'),
                              ('torch.nn.modules.batchnorm', 'BatchNorm2d'),
                              *((m, n) for m, names in YOLOV5_CLASSES.items() for n in names)})
REBUILD_FUNCTIONS = (torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter)
FUNCTION_ATTRS = ('__defaults__', '__kwdefaults__', '__qualname__', '__name__', '__module__', '__code__')


def _op_global(module, name):
    return pickle.GLOBAL + f'{module}\n{name}\n'.encode()


def _op_value(value):
    """Opcodes that push a plain value (a protocol-2 pickle without its PROTO and STOP)."""
    return pickletools.optimize(pickle.dumps(value, protocol=2))[2:-1]


# Writes a crafted file could try. Negative-bit defaults would negate every tensor loaded later
# in the process; a changed __qualname__ makes torch.save fail; the others rewire records.
ATTRIBUTE_WRITES = {
    '__defaults__': _op_value(({'neg': True},)),
    '__qualname__': _op_value('_rebuild_parameter'),
    'source': _op_value('models.common.Pwned'),
    '__setstate__': _op_global('collections', 'OrderedDict'),
}


def _attacks(module, name):
    """Hand-assembled pickles that try to modify one whitelisted global: {label: data.pkl}."""
    g = _op_global(module, name)
    attacks = {}
    for attr, value in ATTRIBUTE_WRITES.items():
        slot_state = pickle.NONE + pickle.EMPTY_DICT + _op_value(attr) + value + pickle.SETITEM + pickle.TUPLE2
        dict_state = pickle.EMPTY_DICT + _op_value(attr) + value + pickle.SETITEM
        attacks[f'BUILD setattr {attr}'] = g + slot_state + pickle.BUILD  # (None, {attr: v}) -> setattr
        attacks[f'BUILD __dict__ {attr}'] = g + dict_state + pickle.BUILD
        attacks[f'SETITEM {attr}'] = g + _op_value(attr) + value + pickle.SETITEM
        # An instance of it (REDUCE / NEWOBJ), then BUILD on the instance: must stay on the instance.
        attacks[f'instance BUILD {attr}'] = g + pickle.EMPTY_TUPLE + pickle.REDUCE + slot_state + pickle.BUILD
        attacks[f'NEWOBJ BUILD {attr}'] = g + pickle.EMPTY_TUPLE + pickle.NEWOBJ + slot_state + pickle.BUILD
    attacks['APPENDS'] = g + pickle.MARK + _op_value('pwned') + pickle.APPENDS
    attacks['ADDITEMS'] = g + pickle.MARK + _op_value('pwned') + pickle.ADDITEMS
    return {label: pickle.PROTO + b'\x02' + ops + pickle.POP + pickle.EMPTY_DICT + pickle.STOP
            for label, ops in attacks.items()}


def _global_state():
    """A snapshot of everything a crafted pickle might reach: torch's rebuild functions, the
    container types, the record base classes and what a fresh unpickler hands out."""
    state = {f.__name__: ({a: getattr(f, a) for a in FUNCTION_ATTRS}, dict(f.__dict__))
             for f in REBUILD_FUNCTIONS}
    for cls in (collections.OrderedDict, set, ModuleRecord, OpaqueValue):
        state[cls.__name__] = dict(vars(cls))
    unpickler = RestrictedUnpickler(io.BytesIO(b''))
    for module, name in WHITELISTED_GLOBALS:
        obj = unpickler.find_class(module, name)
        attrs = {a: getattr(obj, a, None) for a in (*FUNCTION_ATTRS, 'source', '__setstate__')}
        attrs['__setstate__'] = getattr(attrs['__setstate__'], '__func__', attrs['__setstate__'])
        state[f'{module}.{name}'] = (type(obj), attrs, dict(getattr(obj, '__dict__', {})))
    return state


@pytest.fixture
def restore_torch_rebuild_functions():
    """Undo a successful attack after the test, so a regression fails one test, not the session."""
    saved = [({a: getattr(f, a) for a in FUNCTION_ATTRS if a != '__code__'}, dict(f.__dict__))
             for f in REBUILD_FUNCTIONS]
    yield
    for f, (attrs, attr_dict) in zip(REBUILD_FUNCTIONS, saved):
        for a, v in attrs.items():
            setattr(f, a, v)
        f.__dict__.clear()
        f.__dict__.update(attr_dict)


def _run_attacks(tmp_path, module, name):
    for label, payload in _attacks(module, name).items():
        path = _torch_zip_with_pickle(tmp_path / f'attack_{module}.{name}.pt', payload)
        with pytest.raises(CheckpointError):  # refused, or a harmless result that is no checkpoint
            load_checkpoint(path)


@pytest.mark.parametrize('module, name', WHITELISTED_GLOBALS)
def test_crafted_pickle_cannot_modify_a_whitelisted_global(tmp_path, module, name,
                                                           restore_torch_rebuild_functions):
    before = _global_state()
    _run_attacks(tmp_path, module, name)
    after = _global_state()
    assert after == before, [k for k in before if after[k] != before[k]]


def test_refused_modification_names_the_target(tmp_path):
    g = _op_global('torch._utils', '_rebuild_tensor_v2')
    payload = (pickle.PROTO + b'\x02' + g + pickle.NONE + pickle.EMPTY_DICT + _op_value('__defaults__')
               + ATTRIBUTE_WRITES['__defaults__'] + pickle.SETITEM + pickle.TUPLE2 + pickle.BUILD + pickle.STOP)
    path = _torch_zip_with_pickle(tmp_path / 'evil.pt', payload)
    with pytest.raises(UnsafeCheckpointError, match=r'modify torch\._utils\._rebuild_tensor_v2'):
        load_checkpoint(path)


def test_checkpoints_load_bit_identical_after_every_attack(tmp_path, restore_torch_rebuild_functions):
    own = save_checkpoint(tmp_path / 'own.pt', model_checkpoint_fields(_small_model()))
    files = [own, OFFICIAL] if OFFICIAL.is_file() else [own]
    before = [load_checkpoint(f)['model'] for f in files]
    for module, name in WHITELISTED_GLOBALS:
        _run_attacks(tmp_path, module, name)
    for f, sd in zip(files, before):
        again = load_checkpoint(f)['model']
        assert again.keys() == sd.keys()
        assert all(torch.equal(again[k], v) and again[k].dtype == v.dtype and not again[k].is_neg()
                   for k, v in sd.items()), f
    # torch.save still works (a rebuild function with another __qualname__ cannot be pickled)
    resaved = torch.load(save_checkpoint(tmp_path / 'resaved.pt', {'model_yaml': {}, 'model': before[0]}),
                         weights_only=True)['model']
    assert all(torch.equal(resaved[k], v) for k, v in before[0].items())


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


def _one_line_error(exc_type, call):
    with pytest.raises(exc_type) as info:
        call()
    assert '\n' not in str(info.value) and 'Traceback' not in str(info.value)
    return str(info.value)


@pytest.mark.filterwarnings('ignore::FutureWarning')  # torch.jit is deprecated; exports still exist
def test_unusable_files_get_one_line_errors_naming_file_and_fix(tmp_path):
    good = save_checkpoint(tmp_path / 'good.pt', model_checkpoint_fields(_small_model()))
    run = tmp_path / 'exp'
    save_checkpoint(run / 'weights' / 'best.pt', model_checkpoint_fields(_small_model()))
    msg = _one_line_error(CheckpointError, lambda: load_model(run))
    assert 'is a directory' in msg and str(run / 'weights' / 'best.pt') in msg
    (tmp_path / 'empty.pt').write_bytes(b'')
    assert 'is empty (0 bytes)' in _one_line_error(CheckpointError, lambda: load_model(tmp_path / 'empty.pt'))
    data = good.read_bytes()
    for cut in (len(data) // 2, len(data) - 10):
        (tmp_path / 'cut.pt').write_bytes(data[:cut])
        msg = _one_line_error(CheckpointError, lambda: load_model(tmp_path / 'cut.pt'))
        assert str(tmp_path / 'cut.pt') in msg and 'truncated or corrupt' in msg and 'copy it again' in msg
    (tmp_path / 'best.onnx').write_bytes(b'\x08\x07\x12\x07pytorch' + bytes(100))
    msg = _one_line_error(CheckpointError, lambda: load_model(tmp_path / 'best.onnx'))
    assert 'exported model (.onnx)' in msg and '.pt file it was exported from' in msg
    torch.jit.save(torch.jit.script(nn.ReLU()), tmp_path / 'best.torchscript')
    msg = _one_line_error(CheckpointError, lambda: load_model(tmp_path / 'best.torchscript'))
    assert 'TorchScript export' in msg
    (tmp_path / 'labels.txt').write_text('0 0.5 0.5 0.1 0.1\n')
    assert 'not a PyTorch checkpoint' in _one_line_error(CheckpointError, lambda: load_model(tmp_path / 'labels.txt'))
    with zipfile.ZipFile(tmp_path / 'data.zip', 'w') as z:
        z.writestr('images/a.txt', 'x')
    assert 'not a PyTorch checkpoint' in _one_line_error(CheckpointError, lambda: load_model(tmp_path / 'data.zip'))


def test_checkpoint_whose_weights_or_config_do_not_fit_names_the_file(tmp_path):
    fields = model_checkpoint_fields(_small_model())
    fields['model']['model.0.conv.weight'] = torch.zeros(3, 3, 3, 3)
    path = save_checkpoint(tmp_path / 'bad_shape.pt', fields)
    msg = _one_line_error(CheckpointError, lambda: load_model(path))
    assert msg.startswith(str(path)) and 'do not fit' in msg
    fields = model_checkpoint_fields(_small_model())
    fields['model_yaml'] = {**fields['model_yaml'], 'width_multiple': 64}
    path = save_checkpoint(tmp_path / 'huge.pt', fields)
    msg = _one_line_error(CheckpointError, lambda: load_model(path))
    assert msg.startswith(str(path)) and 'width_multiple 64' in msg
    path = save_checkpoint(tmp_path / 'no_version.pt', {**fields, 'version': None})
    assert 'without a format version' in _one_line_error(CheckpointError, lambda: load_checkpoint(path))

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


def test_ctrl_c_during_save_finishes_the_file_then_interrupts(tmp_path, monkeypatch):
    """Ctrl-C inside torch.save used to surface as a RuntimeError from the zip writer's cleanup."""
    import os
    import signal as signal_module
    from models import checkpoint as ck
    real_save = torch.save

    def save_hit_by_ctrl_c(obj, f):
        os.kill(os.getpid(), signal_module.SIGINT)  # arrives mid-write
        real_save(obj, f)
    monkeypatch.setattr(ck.torch, "save", save_hit_by_ctrl_c)
    path = tmp_path / "last.pt"
    before = signal_module.signal(signal_module.SIGINT, signal_module.default_int_handler)  # as in a terminal
    try:
        with pytest.raises(KeyboardInterrupt):
            ck.save_checkpoint(path, {"model": {"w": torch.ones(3)}, "model_yaml": {}, "epoch": 0})
        assert torch.load(path, weights_only=True)["epoch"] == 0  # complete, not truncated
        assert not list(tmp_path.glob("*.tmp"))
        assert signal_module.getsignal(signal_module.SIGINT) is signal_module.default_int_handler
        # a process that ignores SIGINT (nohup, a background job) is not interrupted by the deferral
        signal_module.signal(signal_module.SIGINT, signal_module.SIG_IGN)
        ck.save_checkpoint(path, {"model": {"w": torch.ones(3)}, "model_yaml": {}, "epoch": 1})
        assert torch.load(path, weights_only=True)["epoch"] == 1
        assert signal_module.getsignal(signal_module.SIGINT) is signal_module.SIG_IGN
    finally:
        signal_module.signal(signal_module.SIGINT, before)


def test_save_gives_open_permissions_and_never_touches_the_umask(tmp_path, monkeypatch):
    """Issue 27: saving set the process umask to 0 for a moment (visible to every other thread)."""
    import os
    calls = []
    real_umask = os.umask
    monkeypatch.setattr(os, 'umask', lambda *a: calls.append(a) or real_umask(*a))
    path = save_checkpoint(tmp_path / 'last.pt', {'epoch': 0})
    assert calls == []
    mask = real_umask(0o022)
    real_umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ['last.pt']  # no temporary file left
