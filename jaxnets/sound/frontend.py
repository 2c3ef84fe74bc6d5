"""The sound front end in JAX: clips [..., samples] -> normalised log-mel spectrograms [..., n_mels, frames, 1].

It runs on the accelerator as the first stage of every step (jaxnets.tasks) and inside exported models
(jaxnets.export), so a network trained on sound takes waveforms wherever it goes. The STFT is a gather of frames
and two matrix products with the windowed DFT (jaxnets.sound.mel) instead of an FFT: as exact, fast on every
accelerator, and exportable to every format (ONNX and TFLite have no FFT that all runtimes share).

    spectrograms = network_input(waveforms, sound)                      # evaluation
    spectrograms = network_input(waveforms, sound, uniforms=uniforms)   # training: gain, then SpecAugment

Training's augmentation takes its randomness from `uniforms` [B, sound.augment_draws], drawn by the input pipeline
from (config.seed, the example's stream position) like the images' (jaxnets.data.pipeline), so a resumed run
augments exactly as an uninterrupted one, on any number of devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxnets.sound.config import SoundConfig
from jaxnets.sound.mel import mel_filters, windowed_dft

# Log-mel values (dB) are shifted and scaled by these fixed numbers, not by a dataset's statistics, so that a
# network's input means the same on every folder: -40 dB and 20 dB are the middle and the spread of recordings
# at usual levels (the generated timbres: mean -39 dB, std 21 dB). Masked regions take the value 0 (-40 dB).
DB_MEAN, DB_SCALE = -40.0, 20.0

_HIGHEST = jax.lax.Precision.HIGHEST  # float32 products also where the default would be TF32/bf16 (GPU, TPU)


def frames(waveforms: jax.Array, n_fft: int, hop_length: int) -> jax.Array:
    """[..., T] -> [..., 1 + T // hop_length, n_fft]: frames centred on every hop_length-th sample (zero padding)."""
    num_frames = 1 + waveforms.shape[-1] // hop_length
    padding = [(0, 0)] * (waveforms.ndim - 1) + [(n_fft // 2, n_fft // 2)]
    padded = jnp.pad(waveforms, padding)
    index = hop_length * np.arange(num_frames)[:, None] + np.arange(n_fft)[None, :]
    return padded[..., index]


def mel_power(waveforms: jax.Array, sound: SoundConfig) -> jax.Array:
    """[..., T] float32 -> [..., frames, n_mels]: the mel-filtered power spectrogram (librosa's melspectrogram)."""
    cos, sin = windowed_dft(sound.n_fft, sound.win_length)
    framed = frames(waveforms.astype(jnp.float32), sound.n_fft, sound.hop_length)
    real = jnp.matmul(framed, cos, precision=_HIGHEST)
    imaginary = jnp.matmul(framed, sin, precision=_HIGHEST)
    power = real * real + imaginary * imaginary
    filters = mel_filters(sound.sample_rate, sound.n_fft, sound.n_mels, sound.fmin, sound.fmax)
    return jnp.matmul(power, filters, precision=_HIGHEST)


def log_mel(waveforms: jax.Array, sound: SoundConfig) -> jax.Array:
    """[..., T] -> [..., n_mels, frames] in dB: librosa's power_to_db(melspectrogram, ref=1.0, amin, top_db),
    the top_db floor taken per clip."""
    power = mel_power(waveforms, sound)
    db = 10.0 * jnp.log10(jnp.maximum(power, sound.amin))
    if sound.top_db is not None:
        db = jnp.maximum(db, jnp.max(db, axis=(-2, -1), keepdims=True) - sound.top_db)
    return jnp.swapaxes(db, -1, -2)


def network_input(waveforms: jax.Array, sound: SoundConfig, *, uniforms: jax.Array | None = None) -> jax.Array:
    """[..., T] clips -> [..., n_mels, frames, 1] float32, what the networks take; with `uniforms` [..., draws]
    (training) a random gain first and SpecAugment's masks last."""
    if uniforms is not None and sound.gain_db:
        gain_db = sound.gain_db * (2.0 * uniforms[..., -1:] - 1.0)
        waveforms = waveforms * 10.0 ** (gain_db / 20.0)
    spectrograms = (log_mel(waveforms, sound) - DB_MEAN) / DB_SCALE
    if uniforms is not None:
        spectrograms = spec_augment(spectrograms, uniforms, sound)
    return spectrograms[..., None]


def spec_augment(spectrograms: jax.Array, uniforms: jax.Array, sound: SoundConfig) -> jax.Array:
    """SpecAugment's frequency and time masks (Park et al. 2019, without time warping) on [..., n_mels, frames]:
    each mask's width is uniform in [0, its maximum width] and its start uniform over where it fits; masked values
    become 0. Uniform numbers: per frequency mask then per time mask, (width, start)."""
    keep = jnp.ones(spectrograms.shape, bool)
    masks = [(sound.freq_mask_width, -2)] * sound.freq_masks + [(sound.time_mask_width, -1)] * sound.time_masks
    for i, (max_width, axis) in enumerate(masks):
        size = spectrograms.shape[axis]
        width = jnp.floor(uniforms[..., 2 * i] * (max_width + 1)).astype(jnp.int32)
        start = jnp.floor(uniforms[..., 2 * i + 1] * (size - width + 1).astype(jnp.float32)).astype(jnp.int32)
        position = jnp.arange(size).reshape((1,) * start.ndim + (size,))
        inside = (position >= start[..., None]) & (position < (start + width)[..., None])  # [..., size]
        keep &= ~(inside[..., :, None] if axis == -2 else inside[..., None, :])
    return jnp.where(keep, spectrograms, 0.0)
