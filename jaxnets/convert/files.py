"""Reads weight files into `{name: np.ndarray}`: safetensors and npz without ever unpickling, PyTorch's .pth/.pt
through `torch.load(weights_only=True)` (which refuses pickled code) where torch is installed."""

from __future__ import annotations

import argparse
import os
import zipfile

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

WEIGHT_FILE_SUFFIXES = (".safetensors", ".npz", ".pth", ".pt")
HOW_TO_CONVERT = (
    "convert it once, where torch is installed: "
    "python -c \"import sys, torch, safetensors.torch as st; "
    "st.save_file(torch.load(sys.argv[1], weights_only=True), sys.argv[2])\" IN.pth OUT.safetensors"
)
# Where a training script's checkpoint keeps the model's state dict (timm's train.py, torchvision's references).
_STATE_DICT_ENTRIES = ("state_dict", "model", "state_dict_ema", "model_ema")


def is_weight_file(path) -> bool:
    return os.fspath(path).lower().endswith(WEIGHT_FILE_SUFFIXES)


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist")
    suffix = path.lower()
    try:
        if suffix.endswith(".safetensors"):
            return load_file(path)
        if suffix.endswith(".npz"):
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
    except (OSError, EOFError, zipfile.BadZipFile, SafetensorError) as e:  # a truncated or corrupt file: one line
        raise ValueError(f"{path!r} cannot be read: {' '.join(str(e).split())[:300]}") from None
    if suffix.endswith((".pth", ".pt")):
        return _load_torch_file(path)
    raise ValueError(f"{path!r} is not a {', '.join(WEIGHT_FILE_SUFFIXES)} file; {HOW_TO_CONVERT}")


def _load_torch_file(path: str) -> dict[str, np.ndarray]:
    try:
        import torch  # optional: only PyTorch reads its own format, and jaxnets does not depend on it
    except ImportError:
        raise ValueError(f"{path!r} is a PyTorch file and PyTorch is not installed here; {HOW_TO_CONVERT}") from None
    try:  # training scripts (timm's, torchvision's references) save their argparse arguments beside the weights
        with torch.serialization.safe_globals([argparse.Namespace]):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickled code, a truncated file, ...: torch's reason, on one line
        reason = " ".join(str(e).split())[:300]
        raise ValueError(f"{path!r} cannot be read as a PyTorch state dict with weights_only=True: {reason}") from None
    if isinstance(loaded, dict):
        for entry in _STATE_DICT_ENTRIES:  # a training checkpoint: its model's entry
            if isinstance(loaded.get(entry), dict):
                loaded = loaded[entry]
                break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{path!r} holds no state dict (a dict of tensors, or one under "
                         f"{' / '.join(_STATE_DICT_ENTRIES)})")
    prefix = "module."  # saved from nn.DataParallel / DistributedDataParallel
    if loaded and all(k.startswith(prefix) for k in loaded):
        loaded = {k[len(prefix):]: v for k, v in loaded.items()}
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy() for k, v in loaded.items()}
