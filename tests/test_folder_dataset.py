"""Your own images (`config.dataset = "folder:ROOT"`): trained through train.py, and one line for each broken folder."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, cpu_devices_env
from PIL import Image

import jaxnets
from jaxnets import data
from jaxnets.config import base_config
from jaxnets.errors import ConfigError
from jaxnets.train import resolve_config

CLASSES = ("dots", "horizontal", "vertical")


def pattern(name: str, rng: np.random.Generator, size: int = 16) -> np.ndarray:
    """A noisy RGB image of its class: sparse dots, horizontal stripes or vertical stripes, in a random colour."""
    image = rng.uniform(0, 60, (size, size, 3))
    ink = rng.uniform(150, 255, 3)
    if name == "dots":
        image[rng.random((size, size)) < 0.15] = ink
    else:
        stripes = (np.arange(size) // 2) % 2 == 0
        image[stripes if name == "horizontal" else slice(None), slice(None) if name == "horizontal" else stripes] = ink
    return image.astype(np.uint8)


def make_folder(root, train_per_class: int = 24, test_per_class: int = 8, size: int = 16):
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(pattern(name, rng, size)).save(root / split / name / f"{i}.png")
    return root


def folder_config(root, **fields):
    c = base_config()
    c.dataset = f"folder:{root}"
    for name, value in fields.items():
        c[name] = value
    return c


def test_an_image_folder_trains_through_train_py_well_above_chance(tmp_path):
    root = make_folder(tmp_path / "images", size=8)
    workdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "train.py", "--config", "configs/quickstart.py", "--workdir", str(workdir),
         f"--config.dataset=folder:{root}", "--config.global_batch_size=24", "--config.eval_batch_size=24",
         "--config.num_epochs=8", "--config.eval_every_epochs=8", "--config.warmup_epochs=0"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env=cpu_devices_env(1),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    final = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["eval_examples"] == 24
    assert final["eval_top1"] >= 0.9  # chance: 1/3
    assert jaxnets.read_class_names(workdir) == CLASSES  # saved with the checkpoint, for notebooks


def test_folder_info_batches_and_held_out_parts(tmp_path):
    root = make_folder(tmp_path, train_per_class=4, test_per_class=2, size=12)
    info = data.dataset_info(folder_config(root))
    assert info == data.DatasetInfo(num_classes=3, image_shape=(12, 12, 3), num_train_examples=12,
                                    num_eval_examples=6, class_names=CLASSES)
    resized = folder_config(root, image_size=8, train_split="train[:75%]", eval_split="train[75%:]")
    assert data.dataset_info(resized)[1:4] == ((8, 8, 3), 9, 3)
    batch = next(data.train_iterator(resized, 9))
    assert batch["image"].shape == (9, 8, 8, 3) and sorted(set(batch["label"].tolist())) == [0, 1, 2]
    held_out = [b for b in data.eval_iterator(resized, 4)]
    assert sum(int(b["mask"].sum()) for b in held_out) == 3
    trained = np.concatenate([b["image"] for b in data.eval_iterator(folder_config(root, image_size=8,
                                                                                   eval_split="train[:75%]"), 9)])
    held = np.concatenate([b["image"][b["mask"]] for b in held_out])
    assert not any(np.array_equal(h, t) for h in held for t in trained)  # the two parts are disjoint


def broken(root, case: str):
    make_folder(root, train_per_class=2, test_per_class=1, size=8)
    if case == "missing split":
        for path in sorted((root / "test").rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        (root / "test").rmdir()
        return f"{root / 'test'} is missing"
    if case == "empty class":
        (root / "train" / "empty").mkdir()
        return f"the class folder {root / 'train' / 'empty'} has no .jpg/.jpeg/.png images"
    if case == "unreadable image":
        (root / "train" / "dots" / "0.png").write_bytes(b"not a png")
        return f"{root / 'train' / 'dots' / '0.png'} is not a readable image"
    if case == "mixed sizes":
        Image.fromarray(np.zeros((10, 8, 3), np.uint8)).save(root / "train" / "vertical" / "tall.png")
        return (f"{root / 'train' / 'vertical' / 'tall.png'} is 10x8 but {root / 'train' / 'dots' / '0.png'} is 8x8 "
                "(height x width): set config.image_size to resize every image to one size")
    if case == "class missing from training":
        (root / "test" / "new").mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "test" / "new" / "0.png")
        return f"{root / 'test' / 'new'} is a class that {root / 'train'} lacks"
    if case == "truncated jpeg":
        path = root / "train" / "dots" / "photo.jpg"
        Image.fromarray(pattern("dots", np.random.default_rng(1), 8)).save(path, quality=95)
        path.write_bytes(path.read_bytes()[:-40])  # headers intact, the end of the scan data missing
        return f"{path} is not a readable image"
    if case == "not png or jpeg":
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "train" / "dots" / "x.png", format="GIF")
        return f"{root / 'train' / 'dots' / 'x.png'} is a GIF image, not PNG or JPEG"
    if case == "zero-byte image":
        (root / "train" / "dots" / "empty.jpg").write_bytes(b"")
        return f"{root / 'train' / 'dots' / 'empty.jpg'} is not a readable image"
    if case == "symlink loop":
        os.symlink(root / "train" / "dots" / "loop.png", root / "train" / "dots" / "loop.png")
        return f"{root / 'train' / 'dots' / 'loop.png'} is not a readable image"
    if case == "folder named as an image":
        (root / "train" / "dots" / "album.jpg").mkdir()
        return f"{root / 'train' / 'dots' / 'album.jpg'} is not a readable image"
    if case == "class in another split folder":
        (root / "val" / "extra").mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "val" / "extra" / "0.png")
        return f"the class 'extra' is in another split folder of {root} but not in {root / 'train'}"
    raise AssertionError(case)


# The folder check in a process of its own, printing the one line of its ConfigError.
CHECK_FOLDER = """
import sys
from jaxnets import data
from jaxnets.config import base_config
from jaxnets.errors import ConfigError
config = base_config()
config.dataset = "folder:" + sys.argv[1]
try:
    data.dataset_info(config)
except ConfigError as e:
    print(e)
"""


def without_permission_overrides():
    """In the child before exec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, so that the
    program, even as root, is refused what the permission bits refuse (root reads a chmod-000 file otherwise)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH (linux/capability.h)
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_an_image_without_read_permission_is_one_line_naming_it(tmp_path):
    images = make_folder(tmp_path / "images", train_per_class=2, test_per_class=1, size=8)
    locked = images / "train" / "dots" / "1.png"
    locked.chmod(0)
    result = subprocess.run([sys.executable, "-c", CHECK_FOLDER, str(images)], cwd=REPO, capture_output=True,
                            text=True, timeout=120, preexec_fn=without_permission_overrides)
    locked.chmod(0o644)  # (for pytest's clean-up)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == (f"config.dataset: {locked} is not a readable image (PermissionError: [Errno 13] "
                                     f"Permission denied: '{locked}'); remove it or replace it"), result.stdout


@pytest.mark.parametrize("case", ["missing split", "empty class", "unreadable image", "truncated jpeg",
                                  "not png or jpeg", "mixed sizes", "class missing from training",
                                  "class in another split folder", "zero-byte image", "symlink loop",
                                  "folder named as an image"])
def test_a_broken_folder_is_one_line_naming_the_file_or_folder(tmp_path, case):
    expected = broken(tmp_path / "images", case)
    with pytest.raises(ConfigError) as raised:
        data.dataset_info(folder_config(tmp_path / "images"))
    message = str(raised.value)
    assert expected in message and "\n" not in message


def test_images_of_one_non_square_size_need_an_image_size(tmp_path):
    make_folder(tmp_path, train_per_class=1, test_per_class=1, size=8)
    for path in tmp_path.rglob("*.png"):
        Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(path)
    with pytest.raises(ConfigError, match=f"the images in {tmp_path} are 8x12, not square: set config.image_size"):
        data.dataset_info(folder_config(tmp_path))
    assert data.dataset_info(folder_config(tmp_path, image_size=8)).image_shape == (8, 8, 3)


def test_eval_crop_centre_evaluates_the_central_square_as_imagenet_does(tmp_path):
    """Photos 24 high and 48 wide, their central 24x24 red and the sides blue, evaluated at 12 px: "resize" squeezes
    the whole photo (blue at the sides), "centre" takes the shorter side to 12 / 0.875 = 14 and the central 12x12
    (red only, as torchvision's Resize(14) + CenterCrop(12)). Training is unchanged."""
    make_folder(tmp_path, train_per_class=1, test_per_class=1, size=8)
    photo = np.zeros((24, 48, 3), np.uint8)
    photo[:, :, 2] = 255
    photo[:, 12:36] = (255, 0, 0)
    for path in tmp_path.rglob("*.png"):
        Image.fromarray(photo).save(path)
    spec = data.dataset_spec(f"folder:{tmp_path}")
    pixels = {}
    for crop in ("resize", "centre"):
        (batch,) = data.eval_iterator(folder_config(tmp_path, image_size=12, eval_crop=crop), 3)
        pixels[crop] = batch["image"] * np.asarray(spec.std) + np.asarray(spec.mean)  # [3, 12, 12, 3] in 0..1
    np.testing.assert_allclose(pixels["centre"], np.broadcast_to([1.0, 0.0, 0.0], (3, 12, 12, 3)), atol=1e-5)
    assert np.allclose(pixels["resize"][:, :, 0], [0, 0, 1], atol=1e-5)  # the left side's blue
    assert np.allclose(pixels["resize"][:, :, 5], [1, 0, 0], atol=1e-5)
    for crop in ("resize", "centre"):
        train = next(data.train_iterator(folder_config(tmp_path, image_size=12, eval_crop=crop, augment=False), 3))
        np.testing.assert_allclose(train["image"] * np.asarray(spec.std) + np.asarray(spec.mean), pixels["resize"],
                                   atol=1e-5)


@pytest.mark.parametrize("dataset, value, message", [
    ("digits", "centre", r"config.eval_crop: digits is always evaluated with eval_crop='resize'; the choice is an "
                         r"image folder's \(leave it None\)"),
    ("folder", "middle", r"config.eval_crop: expected 'resize' \(the whole image\) or 'centre' \(ImageNet's centre "
                         r"crop\), got 'middle'"),
])
def test_a_bad_eval_crop_is_one_line(tmp_path, dataset, value, message):
    config = folder_config(make_folder(tmp_path, 1, 1, 8), eval_crop=value)
    if dataset == "digits":
        config.dataset = "digits"
    with pytest.raises(ConfigError, match=f"^{message}$"):
        resolve_config(config, device_count=1)


def test_a_sum_of_splits_is_refused_and_an_empty_share_reads_empty(tmp_path):
    make_folder(tmp_path, train_per_class=2, test_per_class=1, size=8)
    with pytest.raises(ConfigError, match=r"config.train_split='train\+test': a folder dataset reads one split"):
        data.dataset_info(folder_config(tmp_path, train_split="train+test"))
    tiny = folder_config(tmp_path, eval_split="test[:1]")  # 4 processes share 1 image: 3 get none
    counts = [sum(int(b["mask"].sum()) for b in data.eval_iterator(tiny, 2, process_index=i, process_count=4))
              for i in range(4)]
    assert counts == [1, 0, 0, 0]


def test_mixed_sizes_train_when_resized(tmp_path):
    broken(tmp_path / "images", "mixed sizes")
    assert data.dataset_info(folder_config(tmp_path / "images", image_size=8)).image_shape == (8, 8, 3)


def test_a_broken_folder_stops_train_py_in_one_line_before_compiling(tmp_path):
    expected = broken(tmp_path / "images", "unreadable image")
    result = subprocess.run(
        [sys.executable, "train.py", "--config", "configs/quickstart.py", "--workdir", str(tmp_path / "run"),
         f"--config.dataset=folder:{tmp_path / 'images'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_LOG_COMPILES": "1"},
    )
    assert result.returncode == 1
    assert expected in result.stderr.strip().splitlines()[-1]
    assert "Compiling" not in result.stderr
    assert not (tmp_path / "run").exists()


def unusual_images(rng) -> dict[str, tuple[Image.Image, dict, np.ndarray]]:
    """name -> (image to save, save options, the RGB pixels a loader should give): the kinds of files photo folders
    hold besides 8-bit RGB. The EXIF orientation is not applied (PIL's, torchvision's and timm's loaders do not)."""
    def rgb():  # (each file its own pixels)
        return Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))

    grey16 = rng.integers(0, 65536, (8, 8), dtype=np.uint16)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    return {
        "rgb.jpg": (rgb(), {"quality": 100, "subsampling": 0}, None),
        "cmyk.jpg": (rgb().convert("CMYK"), {"quality": 100}, None),
        "grey.jpg": (rgb().convert("L"), {"quality": 100}, None),
        "exif-rotated.jpg": (rgb(), {"quality": 100, "subsampling": 0, "exif": exif}, None),
        "palette.png": (rgb().convert("P"), {}, None),
        "grey-alpha.png": (rgb().convert("LA"), {}, None),
        "rgba.png": (rgb().convert("RGBA"), {}, None),
        "grey16.png": (Image.fromarray(grey16), {}, np.repeat(np.round(grey16 / 257.0)[..., None], 3, -1)),
    }


def test_unusual_images_train_as_pil_decodes_them(tmp_path):
    """CMYK and grey JPEGs, EXIF-rotated photos, palette, grey+alpha, RGBA and 16-bit PNGs mixed in one folder:
    each is read as the RGB pixels PIL gives (16-bit: scaled to 8 bits), JPEGs to the exact pixel."""
    rng = np.random.default_rng(0)
    expected = []
    for split in ("train", "test"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            for file, (image, options, pixels) in unusual_images(rng).items():
                path = tmp_path / split / name / file
                image.save(path, **options)
                if split == "test":
                    with Image.open(path) as opened:
                        expected.append(pixels if pixels is not None else np.asarray(opened.convert("RGB")))
    config = folder_config(tmp_path, augment=False)
    info = data.dataset_info(config)
    assert info.num_eval_examples == len(expected) == 16 and info.image_shape == (8, 8, 3)
    spec = data.dataset_spec(config.dataset)
    read = []
    for batch in data.eval_iterator(config, 16):
        images = batch["image"][batch["mask"]] * np.asarray(spec.std) + np.asarray(spec.mean)
        read += list(np.round(images * 255.0))
    assert len(read) == 16
    # Each file's pixels are read exactly once (the split's order is ImageFolder's shuffle).
    distances = np.array([[np.abs(r - e).max() for e in expected] for r in read])
    assert sorted(distances.argmin(axis=1)) == list(range(16))
    assert distances.min(axis=1).max() <= 1.0, distances.min(axis=1)  # (16-bit: TF's rounding)
