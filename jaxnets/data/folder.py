"""Your own images: `config.dataset = "folder:/path/to/root"`, in the ImageFolder convention

    root/train/<class name>/*.png|*.jpg|*.jpeg
    root/test/<class name>/...

TFDS reads it (`tfds.folder_dataset.ImageFolder`: class names are the sorted folder names, the same in every
split). Before anything reads or compiles, `scan_folder` checks the folder once, file by file, with the image
headers only where it can, so that a broken folder is reported in one line naming the file or folder, not as a
decode error deep in tf.data after training started. It imports no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import functools

from etils import epath
from PIL import Image, UnidentifiedImageError

from jaxnets.errors import ConfigError

FOLDER_PREFIX = "folder:"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # what tfds.folder_dataset.ImageFolder reads


def folder_root(dataset: str) -> str | None:
    """The root of a `folder:/path` dataset name, None for any other name."""
    if not dataset.startswith(FOLDER_PREFIX):
        return None
    root = dataset[len(FOLDER_PREFIX):]
    if not root:
        raise ConfigError("config.dataset: 'folder:' needs the folder, as in folder:/path/to/root "
                          "(root/train/<class>/*.png and root/test/<class>/*.png)")
    return root


@dataclasses.dataclass(frozen=True)
class FolderScan:
    class_names: tuple[str, ...]  # sorted folder names, the label order of ImageFolder
    image_size: tuple[int, int] | None  # (height, width) of every image; None when they differ


def scan_folder(root: str, train_split: str, eval_split: str, resizing: bool) -> FolderScan:
    """Checks the two splits' folders (base names such as "train") image by image; raises ConfigError naming
    the first missing split, empty class, class missing from training, unreadable image, or (without
    `resizing`) image whose size differs from the others. Cached per process: the trainer and every pipeline of
    a run share one scan."""
    return _scan(str(epath.Path(root).expanduser()), train_split, eval_split, resizing)


@functools.lru_cache(maxsize=8)
def _scan(root: str, train_split: str, eval_split: str, resizing: bool) -> FolderScan:
    path = epath.Path(root)
    classes_of = split_class_folders(path, train_split, eval_split, pattern="*.png|jpg", noun="images")
    sizes: dict[tuple[int, int], epath.Path] = {}
    for split, classes in classes_of.items():
        for name in classes:
            images = sorted(p for p in (path / split / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise ConfigError(f"config.dataset: the class folder {path / split / name} has no "
                                  f"{'/'.join(IMAGE_SUFFIXES)} images (remove it or add images)")
            for image in images:
                sizes.setdefault(_image_size(image), image)
                if len(sizes) > 1 and not resizing:
                    (first_size, first), (size, other) = list(sizes.items())[:2]
                    raise ConfigError(
                        f"config.dataset: {other} is {size[0]}x{size[1]} but {first} is {first_size[0]}x"
                        f"{first_size[1]} (height x width): set config.image_size to resize every image to one size"
                    )
    only_size = next(iter(sizes)) if len(sizes) == 1 else None  # (height, width) shared by every image
    if only_size is not None and only_size[0] != only_size[1] and not resizing:
        raise ConfigError(f"config.dataset: the images in {root} are {only_size[0]}x{only_size[1]}, not square: "
                          "set config.image_size to resize them to a square")
    return FolderScan(class_names=tuple(classes_of[train_split]), image_size=only_size)


def split_class_folders(root: epath.Path, train_split: str, eval_split: str, *, pattern: str, noun: str,
                        skip_hidden: bool = False) -> dict[str, list[str]]:
    """{split: its sorted class folder names} for the two splits of a folder dataset (of images, or of sound clips:
    jaxnets.data.audio_folder); ConfigError naming a root that is no folder, a missing split folder, a split without
    class folders, or a class of `eval_split` that `train_split` lacks. `pattern` and `noun` say in the messages
    what a class folder holds ("*.png|jpg", "images"); `skip_hidden`: folders named ".*" are no classes."""
    if not root.is_dir():
        raise ConfigError(f"config.dataset: {root} is not a folder (expected {root}/train/<class>/{pattern} and "
                          f"{root}/test/<class>/{pattern})")
    classes_of = {}
    for split in (train_split, eval_split):
        split_dir = root / split
        if not split_dir.is_dir():
            raise ConfigError(f"config.dataset: {split_dir} is missing: a folder dataset needs one folder per split, "
                              f"{root}/{split}/<class>/{pattern}")
        classes_of[split] = sorted(p.name for p in split_dir.iterdir()
                                   if p.is_dir() and not (skip_hidden and p.name.startswith(".")))
        if not classes_of[split]:
            raise ConfigError(f"config.dataset: {split_dir} has no class folders (expected {split_dir}/<class>/"
                              f"{pattern})")
    unknown = sorted(set(classes_of[eval_split]) - set(classes_of[train_split]))
    if unknown:
        raise ConfigError(f"config.dataset: {root / eval_split / unknown[0]} is a class that {root / train_split} "
                          f"lacks: every class needs training {noun}")
    return classes_of


def _image_size(image: epath.Path) -> tuple[int, int]:
    """(height, width) of a readable PNG or JPEG; ConfigError naming the file otherwise."""
    try:
        with image.open("rb") as f, Image.open(f) as opened:
            if opened.format not in ("PNG", "JPEG"):
                raise ConfigError(f"config.dataset: {image} is a {opened.format} image, not PNG or JPEG "
                                  "(convert it or remove it)")
            width, height = opened.size
            if opened.format == "PNG":
                opened.verify()  # every chunk's checksum, without decoding
            else:
                opened.load()  # a JPEG's verify() reads only its headers: decode it, so a truncated one shows
    except (OSError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise ConfigError(f"config.dataset: {image} is not a readable image ({type(e).__name__}: {e}); "
                          "remove it or replace it") from None
    return height, width
