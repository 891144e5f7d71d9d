"""Run a snippet inside YOLOv5 v7.0 (../shared/peers, the peers recipe) to get reference numbers.

The peer is extracted from its archive into a temporary folder and runs in a subprocess with the
shims on its path, so none of its code is imported into this project's process. Tests skip when
the archive or the shims are absent.
"""
import os
import subprocess
import sys
import tarfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
ARCHIVE = SHARED / "peers" / "yolov5-v7.0.tar.gz"
SHIMS = SHARED / "peers" / "shims"
AVAILABLE = ARCHIVE.is_file() and SHIMS.is_dir()


def extract(dest):
    """The v7.0 source tree under dest (extracted once); returns its root."""
    root = Path(dest) / "yolov5-v7.0"
    if not root.is_dir():
        with tarfile.open(ARCHIVE) as tar:
            tar.extractall(dest, filter="data")
    return root


def run(root, script, *args, timeout=300):
    """Run `script` (Python source) with the v7.0 tree as working directory and first on sys.path."""
    path = Path(root).parent / "peer_snippet.py"
    path.write_text(script)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join((str(SHIMS), str(root))), YOLOv5_AUTOINSTALL="False",
               WANDB_MODE="disabled", YOLOV5_CONFIG_DIR=str(Path(root).parent / "config"))
    done = subprocess.run([sys.executable, str(path), *map(str, args)], cwd=root, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"peer snippet failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done.stdout
