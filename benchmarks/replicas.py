"""A dataset YAML whose splits repeat a source dataset's images up to a given count, as symlinks.

Each copy gets its own file name (`000123_name.jpg`, with its label file beside it in `labels/`):
YOLOv5 v7.0 and the Adlik fork key their label caches by image path, so a list that repeats a path
would shrink back to the unique images there, and the peers would not see the same data as ours.
"""
import os
import shutil
from pathlib import Path

import yaml

from utils.dataset_yaml import check_dataset
from utils.label_cache import img2label_paths, list_image_files


def link_split(files, n, images_dir, labels_dir):
    """n symlinks cycling over `files` (and their label files, where they have one), in place of any earlier ones."""
    for d in (images_dir, labels_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    labels = img2label_paths(files)
    for i in range(n):
        src, label = Path(files[i % len(files)]), Path(labels[i % len(files)])
        name = f'{i:06d}_{src.stem}'
        os.symlink(src.resolve(), images_dir / f'{name}{src.suffix}')
        if label.is_file():
            os.symlink(label.resolve(), labels_dir / f'{name}.txt')


def replicated_dataset(data_yaml, n_train, n_val, out_dir):
    """The YAML of a dataset under out_dir: n_train / n_val linked copies of the source's train / val images."""
    data = check_dataset(data_yaml)
    out_dir = Path(out_dir).resolve()
    out = {'path': str(out_dir), 'nc': data['nc'], 'names': list(data['names'])}
    for split, n in (('train', n_train), ('val', n_val)):
        link_split(list_image_files(data[split]), n, out_dir / 'images' / split, out_dir / 'labels' / split)
        out[split] = f'images/{split}'
    path = out_dir / 'replicated.yaml'
    path.write_text(yaml.safe_dump(out))
    return path
