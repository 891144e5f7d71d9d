"""Checkpoints: the project's own format (plain tensors/containers, read with weights_only=True)
and official ultralytics YOLOv5 pickles, read through a restricted unpickler that rebuilds
whitelisted classes as inert records. No code from a checkpoint file is ever executed.
"""
import collections
import datetime
import logging
import os
import pickle
import tempfile
import types
from pathlib import Path

import torch

from models.yolo import Model, load_model_yaml

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
class ModuleRecord:
    """Inert stand-in for a pickled nn.Module: keeps its pickled __dict__, runs nothing."""

    source = '?'  # dotted name of the class the pickle asked for
    state = types.MappingProxyType({})  # replaced by the pickled __dict__ when there is one

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {}

    def __repr__(self):
        return f'ModuleRecord({self.source})'


class OpaqueValue:
    """Inert stand-in for harmless non-tensor values (numpy scalars/arrays, paths) in metadata."""

    source = '?'

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f'OpaqueValue({self.source})'


YOLOV5_CLASSES = {
    'models.yolo': {'Model', 'DetectionModel', 'BaseModel', 'Detect'},
    'models.common': {'Conv', 'DWConv', 'Bottleneck', 'BottleneckCSP', 'C3', 'SPP', 'SPPF',
                      'Focus', 'Concat'},
}
SAFE_CALLABLES = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('builtins', 'set'): set,
    ('__builtin__', 'set'): set,  # protocol-2 pickles spell builtins this way
    ('torch._utils', '_rebuild_tensor_v2'): torch._utils._rebuild_tensor_v2,
    ('torch._utils', '_rebuild_parameter'): torch._utils._rebuild_parameter,
}
OPAQUE_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
    ('numpy', 'ndarray'), ('numpy', 'dtype'), ('pathlib', 'PosixPath'), ('pathlib', 'WindowsPath'),
}
_record_classes = {}


def _record_class(base, module, name):
    """One subclass per pickled class name, so records remember what they stand for."""
    key = (base, module, name)
    if key not in _record_classes:
        _record_classes[key] = type(name, (base,), {'source': f'{module}.{name}'})
    return _record_classes[key]


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose find_class only hands out whitelisted, inert objects."""

    def find_class(self, module, name):
        if module in YOLOV5_CLASSES and name in YOLOV5_CLASSES[module]:
            return _record_class(ModuleRecord, module, name)
        if module.startswith('torch.nn.modules.'):
            return _record_class(ModuleRecord, module, name)
        if (module, name) in SAFE_CALLABLES:
            return SAFE_CALLABLES[(module, name)]
        if (module, name) in OPAQUE_GLOBALS:
            return _record_class(OpaqueValue, module, name)
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
    detect = _find_records(record, 'Detect')
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


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(path, ckpt):
    """Write ckpt to path atomically (temp file in the same folder, fsync, os.replace)."""
    _check_plain(ckpt)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {'format': FORMAT, 'version': FORMAT_VERSION,
            'date': datetime.datetime.now().isoformat(), **ckpt}
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the permissions open() would
        with os.fdopen(fd, 'wb') as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _check_file(path):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f'checkpoint not found: {path} (this project never downloads '
                                'weights; pass the path of a local .pt file)')
    if not path.is_file():
        raise CheckpointError(f'{path} is not a file')
    return path


def load_checkpoint(path):
    """Read an own-format or official YOLOv5 checkpoint; return the own-format dict."""
    path = _check_file(path)
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError:
        ckpt = None  # holds globals weights_only refuses: maybe an official YOLOv5 pickle
    except Exception as e:
        raise _not_a_checkpoint(path, e) from e
    if ckpt is None:
        ckpt = _load_official(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f'{path} does not hold a checkpoint dict (got {type(ckpt).__name__})')
    if ckpt.get('format') == FORMAT:
        return _check_own(ckpt, path)
    if isinstance(ckpt.get('model'), ModuleRecord) or isinstance(ckpt.get('ema'), ModuleRecord):
        try:
            return convert_official(ckpt, path)
        except (AttributeError, TypeError, KeyError, ValueError, RecursionError) as e:
            raise CheckpointError(f'{path}: malformed YOLOv5 checkpoint ({type(e).__name__}: {e})') from e
    raise CheckpointError(f'{path} is neither a {FORMAT} checkpoint nor a YOLOv5 checkpoint '
                          f'(top-level keys: {sorted(map(str, ckpt))[:10]})')


def _load_official(path):
    try:
        return torch.load(path, map_location='cpu', pickle_module=restricted_pickle,
                          weights_only=False)
    except CheckpointError:
        raise
    except Exception as e:
        raise _not_a_checkpoint(path, e) from e


def _not_a_checkpoint(path, e):
    return CheckpointError(f'{path} is not a PyTorch checkpoint (neither a torch.save zip archive nor '
                           f'a readable pickle: {type(e).__name__}: {e})')


def _check_own(ckpt, path):
    version = ckpt.get('version')
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f'{path}: {FORMAT} checkpoint version {version} is newer than this '
                              f'code supports ({FORMAT_VERSION})')
    for key in ('model_yaml', 'model'):
        if not isinstance(ckpt.get(key), dict):
            raise CheckpointError(f'{path}: {FORMAT} checkpoint lacks "{key}"')
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


def build_from_checkpoint(ckpt, nc=None):
    """Build our Model from an own-format dict; with a different nc, transfer matching weights.

    Returns (model, (transferred, total)) where the pair counts state-dict entries.
    """
    cfg, sd = ckpt['model_yaml'], ckpt['model']
    model = Model(cfg, ch=cfg.get('ch', 3), nc=nc)
    if model.nc == int(cfg['nc']):
        if _is_fused_state_dict(sd):
            model.fuse()
        result = model.load_state_dict(sd, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(f'checkpoint weights do not fit its model config: missing '
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
        model, transferred = build_from_checkpoint(ckpt, nc=nc)
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
