"""Reads weight files into `{name: np.ndarray}` without ever unpickling (no code runs from a file)."""

from __future__ import annotations

import os

import numpy as np
from safetensors.numpy import load_file

HOW_TO_CONVERT = (
    "convert it once, where torch is installed: "
    "python -c \"import sys, torch, safetensors.torch as st; "
    "st.save_file(torch.load(sys.argv[1], weights_only=True), sys.argv[2])\" IN.pth OUT.safetensors"
)


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist")
    if path.endswith(".safetensors"):
        return load_file(path)
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    raise ValueError(f"{path!r} is not a .safetensors or .npz file (pickled files are never opened); {HOW_TO_CONVERT}")
