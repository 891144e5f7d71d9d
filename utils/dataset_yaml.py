"""Dataset YAML (`path/train/val/test/nc/names`, YOLOv5 semantics): read safely, validate, resolve paths.

A dataset YAML is data only: it is parsed with yaml.safe_load, so it can never execute anything, and
every problem is one `DatasetError` line naming the file and the fix.
"""
import logging
from pathlib import Path

import yaml

from utils.label_cache import DatasetError

LOGGER = logging.getLogger('yolov5')
ROOT = Path(__file__).resolve().parents[1]
YAML_TAG_PREFIX = 'tag:yaml.org,2002:'  # how PyYAML spells the `!!` shorthand in its messages


def _yaml_error_reason(e):
    """Short reason for a PyYAML error; a refused tag (e.g. !!python/object/apply) is named as such."""
    problem = str(getattr(e, 'problem', '') or e).strip()
    if isinstance(e, yaml.constructor.ConstructorError) and 'for the tag' in problem:
        tag = problem.split('for the tag', 1)[1].strip(" '").replace(YAML_TAG_PREFIX, '!!')
        return f'tag {tag} is refused (a dataset YAML holds plain data only; nothing in it is run)'
    context = getattr(e, 'context', None)
    return f'{problem} ({context})' if context else problem


def _load_yaml_file(p):
    """Plain data from a YAML file (yaml.safe_load), or DatasetError in one line saying where it is wrong."""
    try:
        return yaml.safe_load(p.read_text(encoding='utf-8'))
    except UnicodeDecodeError:
        raise DatasetError(f'{p} is not valid YAML: not UTF-8 text; fix the file') from None
    except yaml.YAMLError as e:
        mark = getattr(e, 'problem_mark', None) or getattr(e, 'context_mark', None)
        line = f' (line {mark.line + 1})' if mark is not None else ''
        raise DatasetError(f'{p} is not valid YAML{line}: {_yaml_error_reason(e)}; fix the file') from None


def _read_data_yaml(data):
    """(dict, folder that relative paths start from) for a YAML path or an already-loaded dict."""
    if isinstance(data, dict):
        d = dict(data)
        base = Path(d['yaml_file']).parent if d.get('yaml_file') else Path.cwd()
        return d, base
    p = Path(data)
    if not p.is_file() and not p.is_absolute() and (ROOT / 'data' / p).is_file():
        p = ROOT / 'data' / p  # `--data coco128.yaml` finds the bundled YAML, as in YOLOv5
    if not p.is_file():
        raise FileNotFoundError(f'Dataset YAML {data} not found')
    d = _load_yaml_file(p)
    if not isinstance(d, dict):
        raise DatasetError(f'{p} must be a mapping with path/train/val/nc/names keys')
    d['yaml_file'] = str(p.resolve())
    return d, p.resolve().parent


def _normalize_names(d, where):
    """nc and names as (int, list of str); `names` may be a list or a {index: name} dict."""
    names, nc = d.get('names'), d.get('nc')
    if names is None:
        if nc is None:
            raise DatasetError(f'{where}: needs `names` (or at least `nc`)')
        names = [f'class{i}' for i in range(int(nc))]
    elif isinstance(names, dict):
        try:
            keyed = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            raise DatasetError(f'{where}: `names` keys must be class indices 0..nc-1') from None
        if sorted(keyed) != list(range(len(keyed))):
            raise DatasetError(f'{where}: `names` keys must be 0..{len(keyed) - 1} without gaps, got {sorted(keyed)}')
        names = [keyed[i] for i in range(len(keyed))]
    elif isinstance(names, (list, tuple)):
        names = [str(n) for n in names]
    else:
        raise DatasetError(f'{where}: `names` must be a list or a dict, got {type(names).__name__}')
    if nc is not None and int(nc) != len(names):
        raise DatasetError(f'{where}: nc={nc} but {len(names)} names are given')
    if not names:
        raise DatasetError(f'{where}: no classes (empty `names`)')
    return len(names), names


def _resolve_split(value, root):
    """Absolute path(s) for a split entry: a string or a list of strings relative to `root`."""
    def one(v):
        p = Path(str(v)).expanduser()
        return str(p if p.is_absolute() else (root / p).resolve())
    return [one(v) for v in value] if isinstance(value, (list, tuple)) else one(value)


def as_list(value):
    """A split entry (None, one path or a list of paths) as a list of paths."""
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def _missing_message(d, missing):
    """Say what is missing and where to get it; a `download:` entry is only ever quoted, never run."""
    lines = [f"Dataset not found: {', '.join(dict.fromkeys(missing))} missing (dataset root {d['path']})."]
    dl = d.get('download')
    if dl:
        shown = '\n'.join('    ' + ln for ln in str(dl).strip().splitlines()[:20])
        lines += ["This project never downloads data or runs the YAML's `download:` entry. It says:", shown,
                  f"Fetch the data yourself and unpack it so that the paths above exist under {d['path']}."]
    else:
        lines.append(f"Check `path`, `train` and `val` in {d.get('yaml_file', 'the dataset dict')}.")
    return '\n'.join(lines)


def check_dataset(data):
    """Read and validate a dataset YAML (path or dict); return it with absolute paths and names as a list.

    Keys returned: path, train, val, test and unlabeled (None when absent), nc, names, plus the YAML's
    other keys.
    A plain-data `synthetic:` mapping generates the embedded dataset on first use.
    """
    d, base = _read_data_yaml(data)
    where = d.get('yaml_file', 'dataset dict')
    for k in ('train', 'val'):
        if not d.get(k):
            raise DatasetError(f'{where}: `{k}` is required')
    d['nc'], d['names'] = _normalize_names(d, where)
    root = Path(str(d.get('path') or base)).expanduser()
    d['path'] = str(root if root.is_absolute() else (base / root).resolve())
    for k in ('train', 'val', 'test', 'unlabeled'):  # unlabeled: images for distillation only (checked when used)
        d[k] = _resolve_split(d[k], Path(d['path'])) if d.get(k) else None
    if isinstance(d.get('synthetic'), dict):
        from utils.synthetic import ensure_synthetic  # only needed for the embedded dataset
        ensure_synthetic(d['path'], names=d['names'], **d['synthetic'])
    missing = [p for k in ('train', 'val') for p in as_list(d[k]) if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(_missing_message(d, missing))
    for p in as_list(d['test']):
        if not Path(p).exists():
            LOGGER.warning(f'WARNING: test split {p} not found; only train/val are usable')
    return d
