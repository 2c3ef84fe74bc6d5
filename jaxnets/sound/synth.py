"""`timbres`: a generated sound dataset, six instrument-like timbres playing notes of random pitch, loudness and
length, made in numpy on first use so that the sound recipes run offline (configs/audio_quickstart.py).

    sine      one partial
    square    odd harmonics at 1/k                    sawtooth  every harmonic at 1/k
    organ     octaves 1, 2, 4, 8 at equal strength     plucked   harmonics at 1/k^2, decaying in a fifth of a second
    bell      inharmonic partials (1, 2.76, 5.40, 8.93) decaying slowly

Pitch (110-880 Hz) and loudness are shared by every class, so only the timbre tells them apart. The clips are
22.05 kHz 16-bit WAV files in the folder convention (train/<timbre>/*.wav, test/<timbre>/*.wav), so reading
them resamples as a folder of real recordings would be. Seeded: every machine makes the same files.

    python -m jaxnets.sound.synth /tmp/timbres     # write the set to a folder of your choice
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

import numpy as np
from etils import epath

TIMBRES = ("bell", "organ", "plucked", "sawtooth", "sine", "square")
SAMPLE_RATE = 22_050
CLIPS_PER_CLASS = {"train": 48, "test": 16}
VERSION = "1.0.0"  # of the generated files: a change here regenerates them into a new folder


def _partials(timbre: str, pitch: float) -> tuple[np.ndarray, np.ndarray, float | None]:
    """(frequencies, amplitudes, decay time in seconds or None) of one note."""
    k = np.arange(1, 41, dtype=np.float64)
    if timbre == "sine":
        return np.array([pitch]), np.array([1.0]), None
    if timbre == "square":
        return pitch * k[::2], 1.0 / k[::2], None
    if timbre == "sawtooth":
        return pitch * k, 1.0 / k, None
    if timbre == "organ":
        return pitch * np.array([1.0, 2.0, 4.0, 8.0]), np.ones(4), None
    if timbre == "plucked":
        return pitch * k, 1.0 / k**2, 0.2
    if timbre == "bell":
        return pitch * np.array([1.0, 2.76, 5.40, 8.93]), np.array([1.0, 0.6, 0.4, 0.25]), 0.8
    raise ValueError(f"unknown timbre {timbre!r}; known: {', '.join(TIMBRES)}")


def note(timbre: str, rng: np.random.Generator) -> np.ndarray:
    """One note of `timbre`: float32 samples at SAMPLE_RATE, peak below 1."""
    pitch = 110.0 * 2 ** rng.uniform(0.0, 3.0)
    seconds = rng.uniform(0.6, 1.4)
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    frequencies, amplitudes, decay = _partials(timbre, pitch)
    audible = frequencies < 0.45 * SAMPLE_RATE  # nothing folds back above Nyquist
    phases = rng.uniform(0.0, 2 * np.pi, size=int(audible.sum()))
    wave = (amplitudes[audible, None] * np.sin(2 * np.pi * frequencies[audible, None] * t + phases[:, None])).sum(0)
    attack = np.minimum(t / rng.uniform(0.005, 0.05), 1.0)
    release = np.clip((seconds - t) / 0.05, 0.0, 1.0)
    envelope = attack * release * (np.exp(-t / decay) if decay else 1.0)
    wave = wave * envelope / np.abs(wave).max()
    wave += rng.normal(0.0, 1e-3, size=wave.shape)  # a faint noise floor, as in any recording
    return (rng.uniform(0.1, 0.7) * wave / np.abs(wave).max()).astype(np.float32)


def write_timbres(root) -> None:
    """Writes the whole set into `root` (created; existing files of the same names are replaced)."""
    import soundfile  # libsndfile, loaded where sound is read or written only

    rng = np.random.default_rng(20261204)
    for split, count in CLIPS_PER_CLASS.items():
        for timbre in TIMBRES:
            folder = epath.Path(root) / split / timbre
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                with (folder / f"{timbre}_{i:03d}.wav").open("wb") as f:
                    soundfile.write(f, note(timbre, rng), SAMPLE_RATE, subtype="PCM_16", format="WAV")


def ensure_timbres(data_root: str) -> str:
    """The folder of the generated set under `data_root` (config.data_dir's folder), written there first if it is
    not: into a temporary folder beside it, then renamed, so that processes sharing data_root never see a half-
    written set."""
    final = os.path.join(data_root, "jaxnets_timbres", VERSION)
    if os.path.isdir(final):
        return final
    os.makedirs(os.path.dirname(final), exist_ok=True)
    partial = tempfile.mkdtemp(prefix=f".{VERSION}.", dir=os.path.dirname(final))
    try:
        write_timbres(partial)
        os.rename(partial, final)
    except OSError:
        if not os.path.isdir(final):  # else another process finished first and won the rename
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return final


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m jaxnets.sound.synth FOLDER")
    write_timbres(sys.argv[1])
    print(f"wrote {sum(CLIPS_PER_CLASS.values()) * len(TIMBRES)} clips of {', '.join(TIMBRES)} into {sys.argv[1]}")
