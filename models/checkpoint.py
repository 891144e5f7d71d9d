"""Checkpoints: the project's own format (plain tensors/containers, read with weights_only=True)
and official ultralytics YOLOv5 pickles, read through a restricted unpickler that rebuilds
whitelisted classes as inert records. No code from a checkpoint file is ever executed.
"""
import collections
import contextlib
import datetime
import logging
import pickle
import signal
import threading
import types
import zipfile
from pathlib import Path

import torch

from models.yolo import Model, load_model_yaml
from utils.files import write_atomically

LOGGER = logging.getLogger('yolov5')
FORMAT = 'yolov5-distill'
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A file that cannot be used as a checkpoint (missing, corrupt, unsupported)."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle references a global outside the whitelist; the global is named in the message."""


# ---------------------------------------------------------------------------------------------
# Restricted unpickling of official YOLOv5 checkpoints
# ---------------------------------------------------------------------------------------------
# Why nothing a pickle touches can outlive its load: besides calling what find_class returns
# (REDUCE, NEWOBJ, OBJ, INST), pickle's BUILD sets attributes on any object on its stack and
# SETITEM/APPENDS/ADDITEMS call methods on it. Handing out the real torch._utils functions let a
# crafted file set e.g. `_rebuild_tensor_v2.__defaults__ = ({'neg': True},)`, which negates every
# tensor loaded afterwards in the process (torch's own weights_only loader included). So
# find_class never returns a shared object: per unpickler it returns
#   - frozen wrappers (`_FrozenCallable`) around the few functions/types a checkpoint calls:
#     no __dict__, no settable slot, and __setstate__ refuses, so BUILD cannot change them;
#   - record classes created for this unpickler only, whose metaclass refuses attribute writes
#     (BUILD on the class itself already fails: its __setstate__ needs an instance).
# Storage types are resolved by torch.load's own wrapper before find_class: it returns a fresh
# torch.serialization.StorageType instance per reference, so those are per-load as well.
def _refuse_change(what):
    raise UnsafeCheckpointError(f'checkpoint refused: its pickle tries to modify {what} (nothing '
                                'from the file was run; use a checkpoint saved by YOLOv5 or this project)')


class _FrozenRecordType(type):
    """Metaclass of the record classes: a class is never changed after it is made."""

    def __setattr__(cls, name, value):
        _refuse_change(f'the class {cls.source}')

    def __delattr__(cls, name):
        _refuse_change(f'the class {cls.source}')


class ModuleRecord(metaclass=_FrozenRecordType):
    """Inert stand-in for a pickled nn.Module: keeps its pickled __dict__, runs nothing."""

    source = '?'  # dotted name of the class the pickle asked for
    state = types.MappingProxyType({})  # replaced by the pickled __dict__ when there is one

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {}

    def __repr__(self):
        return f'ModuleRecord({self.source})'


class OpaqueValue(metaclass=_FrozenRecordType):
    """Inert stand-in for harmless non-tensor values (numpy scalars/arrays, paths) in metadata."""

    source = '?'

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f'OpaqueValue({self.source})'


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    """torch._utils._rebuild_tensor_v2 without the file's backward hooks (callables that would run
    in a later backward pass; torch.save always writes an empty OrderedDict there)."""
    return torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
                                           collections.OrderedDict(), metadata)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    """torch._utils._rebuild_parameter without the file's backward hooks (see _rebuild_tensor)."""
    return torch._utils._rebuild_parameter(data, requires_grad, collections.OrderedDict())


class _FrozenCallable:
    """What find_class hands out for a whitelisted function or container type: calling it calls
    the target; nothing about it can be changed by the pickle (see the comment above)."""

    __slots__ = ('_target', '_name')

    def __init__(self, target, name):
        object.__setattr__(self, '_target', target)
        object.__setattr__(self, '_name', name)

    def __call__(self, *args):
        return self._target(*args)

    def __setstate__(self, state):
        _refuse_change(self._name)

    def __setattr__(self, name, value):
        _refuse_change(self._name)

    def __delattr__(self, name):
        _refuse_change(self._name)

    def __repr__(self):
        return f'_FrozenCallable({self._name})'


class FunctionReference(OpaqueValue):
    """Inert stand-in for the one function a YOLOv5 pickle references: v7.0's Segment keeps
    `Detect.forward` as an attribute, pickled as getattr(Detect, 'forward'). Nothing reads it."""

    source = 'models.yolo.Detect.forward'


ALLOWED_GETATTR = ('models.yolo.Detect', 'forward')


def _describe_pickled(obj):
    """How an object built by the pickle is named in an error message (never its own repr)."""
    if isinstance(obj, _FrozenRecordType):
        return obj.source
    if isinstance(obj, _FrozenCallable):
        return obj._name
    if isinstance(obj, (ModuleRecord, OpaqueValue)):
        return f'a {type(obj).source} object'
    if type(obj) in (str, int, float, bool, type(None)):
        return repr(obj)[:80]
    return f'a {type(obj).__name__}'


def _guarded_getattr(*args):
    """getattr as a pickle may call it: only getattr(<the Detect record class>, 'forward').

    getattr is the classic pickle attack primitive (getattr(x, '__globals__'), getattr on a module,
    ...). Record classes exist only through find_class and cannot be changed, so `source` names
    the global the pickle asked for. The answer is an inert marker: no real attribute is read.
    """
    if (len(args) == 2 and isinstance(args[0], _FrozenRecordType) and type(args[1]) is str
            and (args[0].source, args[1]) == ALLOWED_GETATTR):
        return FunctionReference()
    call = f"getattr({', '.join(map(_describe_pickled, args))})"
    raise UnsafeCheckpointError(
        f"checkpoint refused: its pickle calls {call}; the only getattr a YOLOv5 checkpoint needs is "
        f"getattr({ALLOWED_GETATTR[0]}, '{ALLOWED_GETATTR[1]}') (nothing from the file was run)")


YOLOV5_CLASSES = {
    'models.yolo': {'Model', 'DetectionModel', 'SegmentationModel', 'BaseModel', 'Detect', 'Segment'},
    'models.common': {'Conv', 'DWConv', 'Bottleneck', 'BottleneckCSP', 'C3', 'SPP', 'SPPF',
                      'Focus', 'Concat', 'Proto'},
}
SAFE_CALLABLES = {  # (module, name) in the pickle -> what the wrapper handed out for it calls
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('builtins', 'set'): set,
    ('__builtin__', 'set'): set,  # protocol-2 pickles spell builtins this way
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    # Only the protocol-2 spelling, which torch.save writes (YOLOv5 checkpoints never use another).
    ('__builtin__', 'getattr'): _guarded_getattr,
}
OPAQUE_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
    ('numpy', 'ndarray'), ('numpy', 'dtype'), ('pathlib', 'PosixPath'), ('pathlib', 'WindowsPath'),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose find_class only hands out inert objects made for this unpickler alone."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._made = {}  # (module, name) -> what find_class returned; one object per global

    def find_class(self, module, name):
        key = (module, name)
        if key not in self._made:
            self._made[key] = self._inert_global(module, name)
        return self._made[key]

    @staticmethod
    def _inert_global(module, name):
        if (module in YOLOV5_CLASSES and name in YOLOV5_CLASSES[module]) or module.startswith('torch.nn.modules.'):
            return _FrozenRecordType(name, (ModuleRecord,), {'source': f'{module}.{name}'})
        if (module, name) in SAFE_CALLABLES:
            return _FrozenCallable(SAFE_CALLABLES[(module, name)], f'{module}.{name}')
        if (module, name) in OPAQUE_GLOBALS:
            return _FrozenRecordType(name, (OpaqueValue,), {'source': f'{module}.{name}'})
        raise UnsafeCheckpointError(
            f"checkpoint refused: it references the global '{_display_name(module, name)}', which is "
            f'not on the whitelist of what a YOLOv5 checkpoint needs (nothing from the file was run)')


def _display_name(module, name):
    """Dotted name of a global; os functions pickle as posix./nt. and are named as users know them."""
    if module in ('posix', 'nt'):
        return f'os.{name} ({module}.{name})'
    return f'{module}.{name}'


def _restricted_load(file, **kwargs):
    return RestrictedUnpickler(file, **kwargs).load()


# torch.load wants a module-like object exposing Unpickler/load; its own wrapper resolves
# storage types (torch.HalfStorage, ...) before our find_class is consulted.
restricted_pickle = types.ModuleType('restricted_pickle')
restricted_pickle.Unpickler = RestrictedUnpickler
restricted_pickle.load = _restricted_load
restricted_pickle.UnpicklingError = pickle.UnpicklingError


def _record_state_dict(record, prefix=''):
    """Flatten a module record tree into a state dict (parameters + persistent buffers)."""
    state = record.state
    sd = {}
    for name, p in (state.get('_parameters') or {}).items():
        if p is not None:
            sd[prefix + name] = p.detach()
    skip = state.get('_non_persistent_buffers_set') or set()
    for name, b in (state.get('_buffers') or {}).items():
        if b is not None and name not in skip:
            sd[prefix + name] = b
    for name, child in (state.get('_modules') or {}).items():
        if isinstance(child, ModuleRecord):
            sd.update(_record_state_dict(child, f'{prefix}{name}.'))
    return sd


def _find_records(record, cls_name):
    found = [record] if record.source.endswith('.' + cls_name) else []
    for child in (record.state.get('_modules') or {}).values():
        if isinstance(child, ModuleRecord):
            found += _find_records(child, cls_name)
    return found


def _names_list(names, nc):
    if isinstance(names, dict):  # v7.0 stores {0: 'person', ...}
        names = [names[k] for k in sorted(names)]
    if not isinstance(names, (list, tuple)) or len(names) != nc:
        return [str(i) for i in range(nc)]
    return [str(n) for n in names]


def _to_float32(sd):
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def convert_official(ckpt, path):
    """Turn an unpickled ultralytics checkpoint dict into the own-format dict."""
    record = ckpt.get('ema') if isinstance(ckpt.get('ema'), ModuleRecord) else ckpt.get('model')
    if not isinstance(record, ModuleRecord):
        raise CheckpointError(f'{path}: no model found under the "ema" or "model" keys')
    if _find_records(record, 'Focus'):
        raise CheckpointError(f'{path} is a YOLOv5 v5.0 (or older) checkpoint (Focus stem layer); '
                              'only v6.0+ checkpoints are supported: use weights from YOLOv5 v6/v7')
    state = record.state
    cfg = state.get('yaml')
    if not isinstance(cfg, dict):
        raise CheckpointError(f'{path}: the pickled model has no "yaml" config dict')
    cfg = dict(cfg)
    if state.get('yaml_file') and 'yaml_file' not in cfg:
        cfg['yaml_file'] = Path(str(state['yaml_file'])).name
    detect = _find_records(record, 'Detect') or _find_records(record, 'Segment')
    nc = int(detect[-1].state.get('nc', cfg['nc'])) if detect else int(cfg['nc'])
    cfg['nc'] = nc
    return {
        'format': FORMAT, 'version': FORMAT_VERSION, 'source': 'ultralytics',
        'model_yaml': cfg,
        'names': _names_list(state.get('names'), nc),
        'model': _to_float32(_record_state_dict(record)),
        'epoch': ckpt.get('epoch', -1) if isinstance(ckpt.get('epoch'), int) else -1,
        'date': ckpt.get('date') if isinstance(ckpt.get('date'), str) else None,
    }


# ---------------------------------------------------------------------------------------------
# Save / load
# ---------------------------------------------------------------------------------------------
# Exact types for scalars: numpy.float64 subclasses float but pickles as a numpy global.
PLAIN_SCALARS = (type(None), bool, int, float, str)
TORCH_TYPES = (torch.Tensor, torch.Size, torch.dtype)


def _check_plain(obj, where='ckpt'):
    """Refuse anything torch.load(weights_only=True) could not read back, naming where it is."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, f'{where} key {k!r}')
            _check_plain(v, f'{where}[{k!r}]')
    elif type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            _check_plain(v, f'{where}[{i}]')
    elif type(obj) not in PLAIN_SCALARS and not isinstance(obj, TORCH_TYPES):
        raise TypeError(f'{where} is a {type(obj).__module__}.{type(obj).__qualname__}; checkpoints '
                        'hold only tensors, numbers, strings, lists and dicts (convert it first)')



@contextlib.contextmanager
def _ctrl_c_deferred():
    """Hold a Ctrl-C (SIGINT) until the block ends, then raise it.

    A KeyboardInterrupt inside torch.save's zip writer surfaces as a RuntimeError from its cleanup
    (the interrupt is lost); a checkpoint write takes well under a second, so it finishes first.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield  # SIGINT ignored (nohup, background jobs) or handled by the caller: leave it so
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def save_checkpoint(path, ckpt):
    """Write ckpt to path atomically (temp file in the same folder, fsync, os.replace); a Ctrl-C
    during the write takes effect once the file is complete."""
    _check_plain(ckpt)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {'format': FORMAT, 'version': FORMAT_VERSION,
            'date': datetime.datetime.now().isoformat(), **ckpt}
    with _ctrl_c_deferred():
        return write_atomically(path, lambda f: torch.save(ckpt, f))


EXPORT_SUFFIXES = ('.onnx', '.engine', '.tflite', '.pb', '.mlmodel', '.xml', '.bin')  # not zips
ZIP_MAGIC = b'PK\x03\x04'
USE_A_CHECKPOINT = 'pass a .pt file saved by YOLOv5 v6.0+ or by this project'


def _first_line(e, limit=200):
    """Torch's error texts run over several lines and sentences; a user error is reported on one."""
    text = str(e).strip().splitlines()[0].split('. ')[0] if str(e).strip() else ''
    return f'{type(e).__name__}: {text[:limit]}'


def _dir_hint(path):
    """For a run folder passed as --weights, name the checkpoint inside it."""
    for candidate in (path / 'weights' / 'best.pt', path / 'best.pt', *sorted(path.glob('*.pt'))[:1]):
        if candidate.is_file():
            return f'pass the checkpoint inside it, e.g. {candidate}'
    return USE_A_CHECKPOINT


def _zip_names(f):
    """Member names of a zip archive, or None when its directory is missing or broken."""
    try:
        return zipfile.ZipFile(f).namelist() if zipfile.is_zipfile(f) else None
    except (zipfile.BadZipFile, ValueError):
        return None


def _check_file(path):
    """Refuse, with the fix, whatever is not a torch.save zip archive before torch reads a byte."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f'checkpoint not found: {path} (this project never downloads '
                                'weights; pass the path of a local .pt file)')
    if path.is_dir():
        raise CheckpointError(f'{path} is a directory, not a checkpoint file: {_dir_hint(path)}')
    if not path.is_file():
        raise CheckpointError(f'{path} is not a regular file: {USE_A_CHECKPOINT}')
    try:
        with open(path, 'rb') as f:
            head = f.read(len(ZIP_MAGIC))
            names = _zip_names(f)
    except OSError as e:
        raise CheckpointError(f'{path} cannot be read ({e.strerror or e}): check its permissions') from e
    if not head:
        raise CheckpointError(f'{path} is empty (0 bytes): it was not written completely; copy it '
                              'again or use another checkpoint (e.g. the run\'s last.pt)')
    if head != ZIP_MAGIC and path.suffix.lower() in EXPORT_SUFFIXES:
        raise CheckpointError(f'{path} is an exported model ({path.suffix}), not a checkpoint: pass the '
                              '.pt file it was exported from')
    if head != ZIP_MAGIC:  # torch.save writes zip archives since torch 1.6 (YOLOv5 v6.0+ needs 1.7)
        raise CheckpointError(f'{path} is not a PyTorch checkpoint (not a torch.save zip archive): '
                              f'{USE_A_CHECKPOINT}')
    if names is None:
        raise CheckpointError(f'{path} is truncated or corrupt (its zip directory is missing, the copy '
                              'or download was cut short): copy it again or use another checkpoint')
    if any(n.endswith('/constants.pkl') for n in names):
        raise CheckpointError(f'{path} is a TorchScript export, not a checkpoint: pass the .pt file it '
                              'was exported from')
    if not any(n.endswith('/data.pkl') for n in names):
        raise CheckpointError(f'{path} is a zip archive but not a PyTorch checkpoint: {USE_A_CHECKPOINT}')
    return path


def load_checkpoint(path):
    """Read an own-format or official YOLOv5 checkpoint; return the own-format dict."""
    path = _check_file(path)
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError:  # holds globals weights_only refuses: maybe an official YOLOv5 pickle
        ckpt = _load_official(path)
    except Exception as e:
        raise CheckpointError(f'{path} is corrupt (torch cannot read it: {_first_line(e)}): copy it '
                              'again or use another checkpoint') from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f'{path} does not hold a checkpoint dict (got {type(ckpt).__name__}): '
                              f'{USE_A_CHECKPOINT}')
    if ckpt.get('format') == FORMAT:
        return _check_own(ckpt, path)
    if isinstance(ckpt.get('model'), ModuleRecord) or isinstance(ckpt.get('ema'), ModuleRecord):
        try:
            return convert_official(ckpt, path)
        except (AttributeError, TypeError, KeyError, ValueError, RecursionError) as e:
            raise CheckpointError(f'{path}: malformed YOLOv5 checkpoint ({_first_line(e)})') from e
    raise CheckpointError(f'{path} is neither a {FORMAT} checkpoint nor a YOLOv5 checkpoint '
                          f'(top-level keys: {sorted(map(str, ckpt))[:10]}; a bare state_dict lacks '
                          f'the model config): {USE_A_CHECKPOINT}')


def _load_official(path):
    try:
        return torch.load(path, map_location='cpu', pickle_module=restricted_pickle,
                          weights_only=False)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f'{path} is not a readable YOLOv5 checkpoint: its pickle failed '
                              f'({_first_line(e)}); nothing from it was run. {USE_A_CHECKPOINT}') from e


def _check_own(ckpt, path):
    version = ckpt.get('version')
    if not isinstance(version, int):
        raise CheckpointError(f'{path}: {FORMAT} checkpoint without a format version (corrupt): '
                              'use another checkpoint')
    if version > FORMAT_VERSION:
        raise CheckpointError(f'{path}: {FORMAT} checkpoint version {version} is newer than this '
                              f'code supports ({FORMAT_VERSION}): update this project')
    for key in ('model_yaml', 'model'):
        if not isinstance(ckpt.get(key), dict):
            raise CheckpointError(f'{path}: {FORMAT} checkpoint lacks "{key}" (corrupt): use another '
                                  'checkpoint')
    return ckpt


def model_checkpoint_fields(model):
    """The model part of an own-format checkpoint: model_yaml, names and a float32 CPU state dict."""
    model = getattr(model, 'module', model)  # unwrap DataParallel / DDP
    sd = {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu()
          for k, v in model.state_dict().items()}
    return {'model_yaml': model.yaml, 'names': list(model.names), 'model': sd}


# ---------------------------------------------------------------------------------------------
# Building a ready model
# ---------------------------------------------------------------------------------------------
def _is_fused_state_dict(sd):
    """True when convs carry biases and no BatchNorm is left (a model saved after fuse())."""
    return any(k.endswith('.conv.bias') for k in sd) and not any('.bn.' in k for k in sd)


def build_from_checkpoint(ckpt, nc=None, source='checkpoint'):
    """Build our Model from an own-format dict; with a different nc, transfer matching weights.

    Returns (model, (transferred, total)) where the pair counts state-dict entries; `source`
    (the file) names the checkpoint in error messages.
    """
    cfg, sd = ckpt['model_yaml'], ckpt['model']
    try:
        model = Model(cfg, ch=cfg.get('ch', 3), nc=nc)
    except (ValueError, TypeError, KeyError, IndexError) as e:
        # The config is data from the file (even its size may be absurd): a bad file, not a bug here.
        raise CheckpointError(f'{source}: its model config cannot be built ({_first_line(e, 400)}); '
                              'the file is corrupt or was not written by YOLOv5 or this project') from e
    if model.nc == int(cfg['nc']):
        if _is_fused_state_dict(sd):
            model.fuse()
        try:
            result = model.load_state_dict(sd, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise CheckpointError(f'{source}: its weights do not fit its model config '
                                  f'({_first_line(e)}); the file is corrupt') from e
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(f'{source}: checkpoint weights do not fit its model config: missing '
                                  f'{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}')
        model.names = _names_list(ckpt.get('names'), model.nc)
        return model, (len(sd), len(sd))
    # New class count (fine-tuning on another dataset): keep every tensor whose shape still fits.
    own = model.state_dict()
    fits = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fits, strict=False)
    LOGGER.info(f'Transferred {len(fits)}/{len(own)} items from pretrained weights')
    return model, (len(fits), len(own))


def _looks_like_config(x):
    if isinstance(x, dict):
        return True
    p = Path(str(x))
    if p.suffix.lower() in ('.yaml', '.yml'):
        return True
    return not p.suffix and not p.exists()  # a bare name such as 'yolov5n' -> models/yolov5n.yaml


def _device(device):
    device = str(device).strip().lower()
    return torch.device(f'cuda:{device}' if device.isdigit() else device)


def load_model(weights_or_cfg, device='cpu', nc=None, fuse=False):
    """Return (float32 model in eval mode, meta) from an own/official checkpoint or a model YAML."""
    if _looks_like_config(weights_or_cfg):
        model = Model(load_model_yaml(weights_or_cfg), nc=nc)
        meta = {'source': 'yaml', 'epoch': -1, 'date': None, 'transferred': None, 'imgsz': None}
    else:
        ckpt = load_checkpoint(weights_or_cfg)
        model, transferred = build_from_checkpoint(ckpt, nc=nc, source=weights_or_cfg)
        meta = {'source': ckpt.get('source', FORMAT), 'epoch': ckpt.get('epoch', -1),
                'date': ckpt.get('date'), 'transferred': transferred,
                'imgsz': (ckpt.get('opt') or {}).get('imgsz')}  # the size it was trained at, if known
    model = model.float().eval()
    if fuse:
        model.fuse()
    model.to(_device(device))
    meta.update(path=str(weights_or_cfg) if not isinstance(weights_or_cfg, dict) else None,
                names=list(model.names), nc=model.nc, stride=model.stride.tolist(),
                yaml=model.yaml)
    return model, meta


TRAINING_ONLY_KEYS = ('train_model', 'optimizer', 'scaler', 'extra', 'ema_updates', 'last_opt_step')


def strip_checkpoint(src, dst=None, half=False):
    """Drop what only resuming needs (optimizer, raw weights, distillation adapters), as YOLOv5's
    strip_optimizer does; `half` stores the weights in fp16 (they load back into a float32 model).
    Returns the path written (src itself when dst is None) and its size in MB."""
    ckpt = load_checkpoint(src)
    ckpt = {k: v for k, v in ckpt.items() if k not in TRAINING_ONLY_KEYS}
    if half:
        ckpt['model'] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt['model'].items()}
    dst = save_checkpoint(dst or src, ckpt)
    return dst, dst.stat().st_size / 1e6
