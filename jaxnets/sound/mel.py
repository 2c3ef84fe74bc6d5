"""The constant matrices of the log-mel front end, in numpy (float64 math, float32 results).

Slaney's mel scale and area-normalised triangular filters, a periodic Hann window centred in each FFT frame,
and the real DFT as two matrices: the definitions of librosa's `filters.mel` (htk=False, norm="slaney") and
`stft` (window="hann", center=True), which tests/test_sound_frontend.py holds the front end to.
"""

from __future__ import annotations

import functools

import numpy as np

# Slaney's mel scale (the Auditory Toolbox's): linear below 1 kHz, logarithmic above.
_MEL_PER_HZ = 3.0 / 200.0
_LOG_START_HZ = 1000.0
_LOG_START_MEL = _LOG_START_HZ * _MEL_PER_HZ  # 15
_LOG_STEP = np.log(6.4) / 27.0  # mels per natural-log unit of frequency above 1 kHz: 1/_LOG_STEP


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, np.float64)
    log_part = _LOG_START_MEL + np.log(np.maximum(hz, _LOG_START_HZ) / _LOG_START_HZ) / _LOG_STEP
    return np.where(hz >= _LOG_START_HZ, log_part, hz * _MEL_PER_HZ)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    log_part = _LOG_START_HZ * np.exp(_LOG_STEP * (np.maximum(mel, _LOG_START_MEL) - _LOG_START_MEL))
    return np.where(mel >= _LOG_START_MEL, log_part, mel / _MEL_PER_HZ)


@functools.lru_cache(maxsize=16)
def mel_filters(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """[n_fft // 2 + 1, n_mels] float32: power spectrum -> mel bands. Triangles between n_mels + 2 frequencies
    evenly spaced in mels, each scaled by 2 / its width in Hz (so a band's weights sum to about the same energy)."""
    bins_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges_hz)
    rising = (bins_hz[None, :] - edges_hz[:-2, None]) / widths[:-1, None]
    falling = (edges_hz[2:, None] - bins_hz[None, :]) / widths[1:, None]
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    triangles *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    return np.ascontiguousarray(triangles.T, dtype=np.float32)


@functools.lru_cache(maxsize=16)
def windowed_dft(n_fft: int, win_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin) [n_fft, n_fft // 2 + 1] float32: a frame of n_fft samples -> the real and (negated) imaginary
    parts of its windowed DFT. The periodic Hann window of win_length samples sits centred in the frame."""
    window = np.zeros(n_fft)
    left = (n_fft - win_length) // 2
    window[left:left + win_length] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win_length) / win_length)
    # The phase of sample n at bin k, reduced modulo n_fft in integers first: exact angles for any frame length.
    phase = 2 * np.pi * (np.outer(np.arange(n_fft), np.arange(n_fft // 2 + 1)) % n_fft) / n_fft
    cos = window[:, None] * np.cos(phase)
    sin = window[:, None] * np.sin(phase)
    return cos.astype(np.float32), sin.astype(np.float32)
