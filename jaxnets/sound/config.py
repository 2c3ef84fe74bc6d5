"""`config.audio`: how a clip becomes the network's input, validated without TensorFlow or JAX.

    c.audio.sample_rate = 16_000   # every clip is mixed down to mono and resampled to this rate (soxr, high quality)
    c.audio.clip_seconds = 1.0     # the fixed length the networks see: a random crop in training (padded when shorter)
    c.audio.eval_crops = 1         # 1: the centre crop; k > 1: the mean of the logits of k crops spread over the clip
    c.audio.n_fft, c.audio.win_length, c.audio.hop_length = 512, 400, 160    # 32 ms FFT, 25 ms Hann window, 10 ms hop
    c.audio.n_mels, c.audio.fmin, c.audio.fmax = 64, 0.0, None              # Slaney mel filters; fmax None: rate / 2
    c.audio.amin, c.audio.top_db = 1e-10, 80.0                              # librosa's power_to_db (ref 1.0)
    c.audio.freq_masks, c.audio.freq_mask_width = 2, 8    # SpecAugment in training: up to this many mel bins each
    c.audio.time_masks, c.audio.time_mask_width = 2, 10   # and up to this many frames each
    c.audio.gain_db = 6.0                                 # a random gain in [-6, 6] dB in training

The fields are read only for a sound dataset (`audio_folder:/path`, or the generated `timbres`); the front end
itself is `jaxnets.sound.frontend`. Imports neither TensorFlow nor JAX.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
from ml_collections.config_dict import FieldReference, placeholder

from jaxnets.values import is_int, is_real

# How far a file's sample rate may be from config.audio.sample_rate: beyond this ratio a resampled clip is mostly
# made up (up) or mostly thrown away (down), which is a wrong file or a wrong rate, not a recording to train on.
MAX_RESAMPLING_RATIO = 64
MAX_FFT = 8192  # its windowed DFT matrices are n_fft x (n_fft / 2 + 1)
MAX_EVAL_CROPS = 16


@dataclasses.dataclass(frozen=True)
class SoundConfig:
    sample_rate: int
    clip_seconds: float
    eval_crops: int
    n_fft: int
    win_length: int
    hop_length: int
    n_mels: int
    fmin: float
    fmax: float  # resolved: sample_rate / 2 where the config says None
    amin: float
    top_db: float | None
    freq_masks: int
    freq_mask_width: int
    time_masks: int
    time_mask_width: int
    gain_db: float

    @property
    def clip_samples(self) -> int:
        return round(self.clip_seconds * self.sample_rate)

    @property
    def num_frames(self) -> int:
        """Spectrogram frames of one clip (centred frames, as librosa's center=True)."""
        return 1 + self.clip_samples // self.hop_length

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of the networks' input: mel bins x frames x 1."""
        return self.n_mels, self.num_frames, 1

    @property
    def augment_draws(self) -> int:
        """Uniform numbers per training example that the augmentation takes (SpecAugment's masks: a width and a
        start each; the gain: one), drawn by the input pipeline from (config.seed, stream position)."""
        return 2 * (self.freq_masks + self.time_masks) + 1


NULLABLE = ("fmax", "top_db")  # the fields that take None (fmax: sample_rate / 2; top_db: no floor)


def section_defaults() -> dict[str, Any]:
    return {"sample_rate": 16_000, "clip_seconds": 1.0, "eval_crops": 1, "n_fft": 512, "win_length": 400,
            "hop_length": 160, "n_mels": 64, "fmin": 0.0, "fmax": None, "amin": 1e-10, "top_db": 80.0,
            "freq_masks": 2, "freq_mask_width": 8, "time_masks": 2, "time_mask_width": 10, "gain_db": 6.0}


def config_section():
    """`config.audio` with its defaults, typed (None-able where the default is None or top_db)."""
    section = ml_collections.ConfigDict()
    for name, default in section_defaults().items():
        section[name] = default
    section.fmax = placeholder(float)  # None: sample_rate / 2
    section.top_db = FieldReference(section_defaults()["top_db"], field_type=float)  # None: no floor
    return section


def resolve(section: Any) -> SoundConfig:
    """`config.audio` (a mapping; absent fields take their defaults) -> SoundConfig; ValueError naming the first
    bad field."""
    given = dict(section or {})
    unknown = sorted(set(given) - set(section_defaults()))
    if unknown:
        raise ValueError(f"config.audio: unknown field(s) {', '.join(unknown)}; the fields are "
                         f"{', '.join(section_defaults())}")
    f = {**section_defaults(), **given}

    def bad(field: str, expected: str):
        return ValueError(f"config.audio.{field}: expected {expected}, got {f[field]!r}")

    if not (is_int(f["sample_rate"]) and 1_000 <= f["sample_rate"] <= 768_000):
        raise bad("sample_rate", "an int in [1000, 768000] (Hz)")
    rate = f["sample_rate"]
    if not (is_real(f["clip_seconds"]) and 0 < f["clip_seconds"] <= 600):
        raise bad("clip_seconds", "seconds in (0, 600]")
    for field in ("n_fft", "win_length", "hop_length", "n_mels", "eval_crops"):
        if not (is_int(f[field]) and f[field] > 0):
            raise bad(field, "a positive int")
    if f["n_fft"] % 2 or f["n_fft"] > MAX_FFT:
        raise bad("n_fft", f"an even number of samples up to {MAX_FFT} (librosa's frames and bins assume even)")
    if f["eval_crops"] > MAX_EVAL_CROPS:
        raise bad("eval_crops", f"at most {MAX_EVAL_CROPS} crops a clip (each is a network evaluation)")
    if f["win_length"] > f["n_fft"]:
        raise bad("win_length", f"at most n_fft={f['n_fft']} (the window is centred in each FFT frame)")
    if f["n_mels"] > f["n_fft"] // 2 + 1:
        raise bad("n_mels", f"at most n_fft // 2 + 1 = {f['n_fft'] // 2 + 1} (the FFT's frequency bins)")
    fmax = rate / 2 if f["fmax"] is None else f["fmax"]
    if not (is_real(f["fmin"]) and 0 <= f["fmin"] < rate / 2):
        raise bad("fmin", f"Hz in [0, sample_rate / 2 = {rate / 2:g})")
    if not (is_real(fmax) and f["fmin"] < fmax <= rate / 2):
        raise bad("fmax", f"None or Hz in (fmin, sample_rate / 2 = {rate / 2:g}]")
    if not (is_real(f["amin"]) and 0 < f["amin"] < 1):
        raise bad("amin", "a power floor in (0, 1), such as 1e-10 (librosa's)")
    if f["top_db"] is not None and not (is_real(f["top_db"]) and f["top_db"] > 0):
        raise bad("top_db", "None (no floor) or a positive number of dB, such as 80 (librosa's)")
    for field in ("freq_masks", "freq_mask_width", "time_masks", "time_mask_width"):
        if not (is_int(f[field]) and f[field] >= 0):
            raise bad(field, "an int >= 0 (0: none)")
    if not (is_real(f["gain_db"]) and 0 <= f["gain_db"] <= 40):
        raise bad("gain_db", "dB in [0, 40] (0: no random gain)")
    sound = SoundConfig(**{**f, "fmax": float(fmax), "fmin": float(f["fmin"]), "clip_seconds": float(f["clip_seconds"]),
                           "amin": float(f["amin"]), "gain_db": float(f["gain_db"]),
                           "top_db": None if f["top_db"] is None else float(f["top_db"])})
    if sound.clip_samples < sound.win_length:
        raise bad("clip_seconds", f"at least one window, {sound.win_length} samples at {rate} Hz "
                  f"({sound.win_length / rate:g} s)")
    if sound.freq_mask_width > sound.n_mels:
        raise bad("freq_mask_width", f"at most n_mels={sound.n_mels}")
    if sound.time_mask_width > sound.num_frames:
        raise bad("time_mask_width", f"at most the clip's {sound.num_frames} frames")
    return sound
