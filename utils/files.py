"""Run folders and small file helpers shared by the CLIs."""
import os
import re
from pathlib import Path

import yaml

from utils.cli import UserError, one_line

ROOT = Path(__file__).resolve().parents[1]  # repository root


def write_atomically(path, write):
    """Call `write(binary file)` on a new file beside `path`, flush it to disk, then rename it over `path`.

    Readers see the old file or the complete new one, never a truncated one (an interrupted write leaves
    nothing behind). The new file gets the permissions `open()` would give (0o666 less the process umask,
    applied by the kernel: the process umask is never changed, even for a moment)."""
    path = Path(path)
    for attempt in range(100):
        tmp = path.parent / f".{path.name}.{os.getpid()}.{attempt}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:  # left by a killed writer of the same pid, or another thread: next name
            continue
    else:
        raise FileExistsError(f"cannot create a temporary file beside {path}")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def shown_path(path):
    """`path` relative to the working directory when it lies under it (runs/train/exp, as YOLOv5 prints it)."""
    path = Path(path)
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:  # elsewhere: keep it as given
        return path


def increment_path(path, exist_ok=False, sep="", mkdir=False):
    """Return `path` or the next free `path2`, `path3`, ... (runs/train/exp -> runs/train/exp2).

    YOLOv5 numbers runs this way; sweep scripts rely on it. With `exist_ok` the path is reused.
    """
    path = Path(path)
    if path.exists() and not exist_ok:
        stem, suffix = (path.with_suffix(""), path.suffix) if path.is_file() else (path, "")
        pattern = re.compile(re.escape(stem.name) + re.escape(sep) + r"(\d+)$")
        taken = [int(m.group(1)) for p in stem.parent.glob(stem.name + sep + "*")
                 if (m := pattern.match(p.with_suffix("").name if suffix else p.name))]
        n = max(taken + [1]) + 1
        path = Path(f"{stem}{sep}{n}{suffix}")
    if mkdir:
        path.mkdir(parents=True, exist_ok=True)
    return path


def yaml_load(file):
    """Read a YAML file with the safe loader: a YAML never executes anything."""
    with open(file, errors="ignore") as f:
        try:
            return yaml.safe_load(f) or {}
        except yaml.YAMLError as e:  # a syntax error, or a tag such as !!python/object that safe_load refuses
            raise UserError(f"{file} is not a valid plain-data YAML file: {one_line(e)}") from None


def yaml_save(file, data):
    """Write plain data (paths become strings) as YAML."""
    clean = {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}
    with open(file, "w") as f:
        yaml.safe_dump(clean, f, sort_keys=False)


def resolve_file(name, search_dirs=("models", "data", "data/hyps")):
    """Find `name` as given, or inside the repository's own folders (yolov5s.yaml -> models/yolov5s.yaml)."""
    p = Path(name)
    if p.exists():
        return p
    for d in search_dirs:
        candidate = ROOT / d / p.name
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"'{name}' not found (looked in ., {', '.join(search_dirs)})")


def newest_last_checkpoint(search_dir="runs"):
    """The most recently written `last.pt` under `search_dir` (for a bare `--resume`)."""
    candidates = list(Path(search_dir).rglob("last.pt"))
    return max(candidates, key=os.path.getmtime) if candidates else None
