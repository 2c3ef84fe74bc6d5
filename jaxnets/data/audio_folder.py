"""Your own sound clips: `config.dataset = "audio_folder:/path/to/root"`, in the ImageFolder convention

    root/train/<class name>/*.wav|*.flac|*.ogg|*.mp3
    root/test/<class name>/...

Class names are the sorted folder names of the training split. Every clip is decoded by libsndfile (soundfile),
mixed down to mono (the mean of its channels) and resampled to config.audio.sample_rate by soxr at its high
quality (librosa's default resampler), whatever its own rate, width or format. Before anything reads or compiles,
`scan_audio_folder` checks every file's header, so that a broken folder is reported in one line naming the file
or folder. It imports no TensorFlow (the pipeline reads the clips through `decode`).
"""

from __future__ import annotations

import dataclasses
import functools
import random

import numpy as np
from etils import epath

from jaxnets.data.folder import split_class_folders
from jaxnets.errors import ConfigError
from jaxnets.sound.config import MAX_RESAMPLING_RATIO

AUDIO_FOLDER_PREFIX = "audio_folder:"
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3")  # what libsndfile (1.1 and later) reads


def audio_folder_root(dataset: str) -> str | None:
    """The root of an `audio_folder:/path` dataset name, None for any other name."""
    if not dataset.startswith(AUDIO_FOLDER_PREFIX):
        return None
    root = dataset[len(AUDIO_FOLDER_PREFIX):]
    if not root:
        raise ConfigError("config.dataset: 'audio_folder:' needs the folder, as in audio_folder:/path/to/root "
                          "(root/train/<class>/*.wav and root/test/<class>/*.wav)")
    return root


@dataclasses.dataclass(frozen=True)
class AudioScan:
    class_names: tuple[str, ...]  # sorted class folder names of the training split: the label order
    clips: dict[str, tuple[tuple[str, int], ...]]  # split base name -> ((path, label), ...), classes mixed


def scan_audio_folder(root: str, train_split: str, eval_split: str, sample_rate: int) -> AudioScan:
    """Checks the two splits' folders (base names such as "train") clip by clip from their headers; raises
    ConfigError naming the first missing split, empty class, class missing from training, file that is not
    audio or not readable, clip of zero samples, or sample rate too far from `sample_rate` to resample. Cached per
    process."""
    return _scan(str(epath.Path(root).expanduser()), train_split, eval_split, sample_rate)


@functools.lru_cache(maxsize=8)
def _scan(root: str, train_split: str, eval_split: str, sample_rate: int) -> AudioScan:
    path = epath.Path(root)
    classes_of = split_class_folders(path, train_split, eval_split, pattern="*.wav", noun="clips", skip_hidden=True)
    labels = {name: i for i, name in enumerate(classes_of[train_split])}
    clips = {}
    for split, classes in classes_of.items():
        found = []
        for name in classes:
            files = sorted(p for p in (path / split / name).iterdir() if not p.name.startswith("."))
            if not files:
                raise ConfigError(f"config.dataset: the class folder {path / split / name} has no clips "
                                  f"({'/'.join(AUDIO_SUFFIXES)}): remove it or add clips")
            for file in files:
                _check_clip(file, sample_rate)
                found.append((str(file), labels[name]))
        # In a fixed order that mixes the classes, as tfds.folder_dataset.ImageFolder's (the same seed): a part of
        # a split such as "train[90%:]" (a search's held-out clips) is then a sample of every class, not the last.
        random.Random(split).shuffle(found)
        clips[split] = tuple(found)
    return AudioScan(class_names=tuple(classes_of[train_split]), clips=clips)


def _check_clip(file: epath.Path, sample_rate: int) -> None:
    import soundfile  # libsndfile, loaded where sound is read only

    if file.is_dir() or file.suffix.lower() not in AUDIO_SUFFIXES:
        raise ConfigError(f"config.dataset: {file} is not a sound clip ({', '.join(AUDIO_SUFFIXES)}): "
                          "remove it or move it out of the class folder")
    try:
        with file.open("rb") as f:
            info = soundfile.info(f)
    except (OSError, RuntimeError, TypeError) as e:  # (soundfile.LibsndfileError is a RuntimeError)
        raise ConfigError(f"config.dataset: {file} is not a readable sound clip ({type(e).__name__}: {e}); "
                          "remove it or replace it") from None
    if info.frames == 0:
        raise ConfigError(f"config.dataset: {file} has zero samples: remove it")
    ratio = max(info.samplerate / sample_rate, sample_rate / info.samplerate)
    if ratio > MAX_RESAMPLING_RATIO:
        raise ConfigError(f"config.dataset: {file} is sampled at {info.samplerate} Hz, over {MAX_RESAMPLING_RATIO}x "
                          f"away from config.audio.sample_rate={sample_rate}: resample it or change the rate")


def decode(path: str, sample_rate: int) -> np.ndarray:
    """The clip at `path` as float32 mono samples at `sample_rate`: decoded, mixed down, resampled (soxr HQ)."""
    import soundfile  # libsndfile and soxr, loaded where sound is read only
    import soxr  # (as soundfile)

    with epath.Path(path).open("rb") as f:
        samples, rate = soundfile.read(f, dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)
