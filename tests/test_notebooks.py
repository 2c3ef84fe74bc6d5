"""The colab/ notebooks, executed headless as a user would run them, and `python -m jaxnets.report`.

One tiny quickstart run on 8 forced CPU devices (the module fixture) is what load_checkpoint.ipynb and the report
open; each notebook runs in a fresh kernel with one CPU device, fails on any cell error, and must show its figures.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types

import jax
import nbformat
import numpy as np
import pytest
from helpers import FAST_COMPILE, REPO, built_once, load_recipe
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from jaxnets.train import train_and_evaluate

NOTEBOOKS = REPO / "colab"


def train_the_quickstart_one_epoch(directory) -> None:
    config = load_recipe("quickstart")
    config.num_epochs, config.eval_every_epochs, config.warmup_epochs = 1, 1.0, 0.0
    assert jax.device_count() == 8
    train_and_evaluate(config, str(directory / "run"))


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory, worker_id):
    """The README quickstart's recipe for 1 epoch on 8 CPU devices (conftest's XLA_FLAGS), evaluated at the end;
    trained once for the session."""
    return built_once(tmp_path_factory, worker_id, "notebooks_quickstart", train_the_quickstart_one_epoch) / "run"


def run_notebook(name: str, monkeypatch, **parameters) -> nbformat.NotebookNode:
    """Executes colab/<name> with `parameters` replacing the assignments of its parameters cell; returns it run."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    cell = notebook.cells[2]  # the markdown introduction, the install cell, then the parameters
    for parameter, value in parameters.items():
        cell.source, count = re.subn(rf"^{parameter} = .*$", f"{parameter} = {value!r}", cell.source, flags=re.M)
        assert count == 1, f"{name} has no parameter {parameter}"
    # The kernel sees one CPU device, as a notebook user's would, and compiles like the rest of the suite.
    monkeypatch.setenv("XLA_FLAGS", FAST_COMPILE)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    return notebook


def figures(notebook) -> int:
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.outputs)


def printed(notebook) -> str:
    return "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.outputs)


def test_the_notebooks_are_stored_without_outputs_and_install_jaxnets_first():
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == ["enas_architecture.ipynb", "finetune_your_images.ipynb", "load_checkpoint.ipynb",
                     "sound.ipynb", "torchvision_weights.ipynb", "train_in_notebook.ipynb"]
    for name in names:
        notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(notebook)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert all(not cell.outputs and cell.execution_count is None for cell in code), name
        assert 'find_spec("jaxnets") is None' in code[0].source and "pip" in code[0].source, name
        assert "def " not in "".join(cell.source for cell in code), f"{name} defines code: it belongs in jaxnets"


def test_load_checkpoint_notebook_opens_an_8_device_checkpoint_on_one_device(quickstart_run, monkeypatch):
    notebook = run_notebook("load_checkpoint.ipynb", monkeypatch, WORKDIR=str(quickstart_run))
    text = printed(notebook)
    assert "parameters on 1 device: ['cpu:0']" in text
    accuracy = float(re.search(r"top-1 accuracy: ([0-9.]+) on 450 images", text).group(1))
    logged = [json.loads(line) for line in (quickstart_run / "metrics.jsonl").read_text().splitlines()]
    assert accuracy == pytest.approx(logged[-1]["eval_top1"], abs=1e-4)  # the eval the 8-device run logged
    assert figures(notebook) == 3  # predictions, confusion matrix, curves


def test_load_checkpoint_notebook_says_how_to_make_the_run_it_opens(tmp_path, monkeypatch):
    with pytest.raises(CellExecutionError) as raised:
        run_notebook("load_checkpoint.ipynb", monkeypatch, WORKDIR=str(tmp_path / "absent"))
    assert raised.value.ename == "FileNotFoundError"
    assert raised.value.evalue == (f"no jaxnets run in {tmp_path / 'absent'}: make it with `python train.py --config "
                                   "configs/quickstart.py --workdir /tmp/jaxnets-quickstart`, or set WORKDIR to the "
                                   "--workdir of another run")


def test_report_writes_the_pictures_of_a_run(quickstart_run):
    result = subprocess.run([sys.executable, "-m", "jaxnets.report", str(quickstart_run)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("curves.png", "confusion_matrix.png", "predictions.png"):
        path = quickstart_run / name
        assert f"wrote {path}" in result.stdout
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert not (quickstart_run / "architecture.png").exists()  # not an ENAS run


def test_report_of_a_missing_run_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "jaxnets.report", str(tmp_path)], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: no finished checkpoint in {tmp_path} (expected "
                                                  "<workdir>/checkpoints/<step>/)"]


def test_torchvision_weights_notebook_classifies_with_converted_weights(tmp_path, monkeypatch):
    import torch
    from matplotlib.cbook import get_sample_data
    from safetensors.torch import save_file
    from torch_twins.mobilenetv2 import mobilenet_v2

    from jaxnets.data import DATASETS, imagenet_class_names
    from jaxnets.data.preprocess import imagenet_eval
    from jaxnets.data.tf_imports import tf

    torch.manual_seed(0)
    reference = mobilenet_v2().eval()  # torchvision's architecture and key names, random weights
    with torch.no_grad():  # (random features are ~1e-9: scaled so that the classes are far apart in probability)
        reference.classifier[1].weight *= 1e9
    weights = tmp_path / "mobilenet_v2.safetensors"
    save_file(reference.state_dict(), str(weights))
    image = imagenet_eval(tf.io.read_file(get_sample_data("grace_hopper.jpg", asfileobj=False)),
                          DATASETS["imagenet2012"], 224, False, None).numpy()
    with torch.no_grad():
        expected = reference(torch.from_numpy(image).permute(2, 0, 1)[None]).argmax().item()

    notebook = run_notebook("torchvision_weights.ipynb", monkeypatch, WEIGHTS=str(weights))
    assert f"1. {imagenet_class_names()[expected]}" in printed(notebook)
    assert len(re.findall(r"^[1-5]\. ", printed(notebook), flags=re.M)) == 5
    assert figures(notebook) == 1


def test_torchvision_weights_notebook_says_what_to_do_without_the_file(tmp_path, monkeypatch):
    with pytest.raises(CellExecutionError) as raised:
        run_notebook("torchvision_weights.ipynb", monkeypatch, WEIGHTS=str(tmp_path / "absent.safetensors"))
    assert raised.value.ename == "FileNotFoundError"
    assert raised.value.evalue.startswith(f"{tmp_path / 'absent.safetensors'} does not exist: make it where you have "
                                          "network")


def test_enas_architecture_notebook_draws_the_published_and_a_searched_arc(tmp_path, monkeypatch):
    from helpers import load_recipe

    from jaxnets.models import create_model
    from jaxnets.models.enas import random_arc
    from jaxnets.tasks.enas_search.final import final_config_source

    search = load_recipe("enas_search_quickstart")  # what the README's search would leave in its workdir
    model = create_model("enas_macro_shared", num_classes=10, **search.model_overrides.to_dict())
    arc = " ".join(map(str, random_arc(np.random.default_rng(0), model.num_layers, model.num_branches).tolist()))
    (tmp_path / "final_arc.txt").write_text(arc + "\n")
    (tmp_path / "final_config.py").write_text(final_config_source(search, model, arc, str(tmp_path), 0.9))

    notebook = run_notebook("enas_architecture.ipynb", monkeypatch, SEARCH_WORKDIR=str(tmp_path))
    assert arc in printed(notebook)
    assert figures(notebook) == 2


def test_train_in_notebook_runs_the_library_loop_with_live_curves(tmp_path, monkeypatch):
    notebook = run_notebook("train_in_notebook.ipynb", monkeypatch, WORKDIR=str(tmp_path / "run"), EPOCHS=1)
    assert re.search(r"test top-1 0\.\d{4}; checkpoints in", printed(notebook))
    assert figures(notebook) == 1  # one live display, updated in place
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["step"] == 1347 // 64 and "eval_top1" in logged[-1]  # one epoch of the digits, evaluated


def test_the_training_notebook_trains_the_quickstart_recipe():
    from helpers import load_recipe

    notebook = nbformat.read(NOTEBOOKS / "train_in_notebook.ipynb", as_version=4)
    namespace = {"EPOCHS": 40}
    recipe_cell = next(cell.source for cell in notebook.cells if "config = base_config()" in cell.source)
    exec("\n".join(line for line in recipe_cell.splitlines() if not line.startswith("%")), namespace)
    notebook_config, quickstart = namespace["config"], load_recipe("quickstart")
    differing = {k for k in quickstart.keys() if notebook_config[k] != quickstart[k]}
    assert differing == {"log_every_steps", "checkpoint_every_steps"}  # a notebook logs and saves more often


def test_finetune_notebook_fine_tunes_shows_the_mistakes_and_exports(tmp_path, monkeypatch):
    """The notebook on the test's own images (noisy gratings: 3 orientations), from a run of the quickstart's
    network on 6 others, a few steps: it trains, shows the mistakes, and its ONNX file in onnxruntime names the
    same class as jaxnets for each file it classifies."""
    from helpers import grating_folder

    pretraining = grating_folder(tmp_path / "six", [0, 30, 60, 90, 120, 150], 10, 2, seed=0)
    config = load_recipe("quickstart", dataset=f"folder:{pretraining}", num_train_steps=5, steps_per_dispatch=1,
                         global_batch_size=30, eval_batch_size=12, eval_every_epochs=1000.0)
    train_and_evaluate(config, str(tmp_path / "pretrained"), devices=jax.devices()[:1])
    images = grating_folder(tmp_path / "three", [15, 75, 135], 16, 4, seed=1)
    workdir = tmp_path / "fine_tuned"
    notebook = run_notebook("finetune_your_images.ipynb", monkeypatch, IMAGES=str(images),
                            INIT_FROM=str(tmp_path / "pretrained"), MODEL="resnext29_8x64d",
                            MODEL_OVERRIDES=config.model_overrides.to_dict(), IMAGE_SIZE=12, EPOCHS=3,
                            WORKDIR=str(workdir))
    text = printed(notebook)
    assert re.search(r"test top-1 0?\.\d{4}|test top-1 1\.0000", text), text
    assert re.search(r"\d+ mistakes in 12 test images", text), text
    assert figures(notebook) == 3  # the live curves, the mistakes, the confusion matrix
    lines = re.findall(r"^test/(\d+deg)/\d+\.png: (\d+deg) \(file\), (\d+deg) [0-9.]+ \(jaxnets\)$", text, flags=re.M)
    assert len(lines) == 8 and all(file == ours for _, file, ours in lines), text
    assert (workdir / "model.onnx").is_file() and f"wrote {workdir / 'model.onnx'}" in text


def test_the_finetune_notebook_sets_the_finetune_recipe():
    notebook = nbformat.read(NOTEBOOKS / "finetune_your_images.ipynb", as_version=4)
    parameters = {"IMAGES": "/photos", "INIT_FROM": "w.pth", "MODEL": "resnext50_32x4d", "MODEL_OVERRIDES": {},
                  "IMAGE_SIZE": 224, "EPOCHS": 15}
    namespace = {**parameters, "os": types.SimpleNamespace(path=types.SimpleNamespace(exists=lambda path: True,
                                                                                         join=lambda *p: "/".join(p)))}
    recipe_cell = next(cell.source for cell in notebook.cells if "config = base_config()" in cell.source)
    code = "\n".join(line for line in recipe_cell.splitlines() if not line.startswith(("%", "import os")))
    exec(code, namespace)
    recipe = load_recipe("finetune_folder", dataset="folder:/photos", init_from="w.pth")
    assert namespace["config"].to_dict() == recipe.to_dict()


def test_a_listener_gets_every_report_with_speed_and_eta(tmp_path, monkeypatch):
    from jaxnets import plots
    from jaxnets.train import reporting

    clock = iter([100.0, 102.0])  # two progress points 2 s apart
    monkeypatch.setattr(reporting, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    reports = []
    reporter = reporting.Reporter(tmp_path, total_steps=1000, steps_per_epoch=100, global_batch_size=64,
                                  on_report=reports.append)
    reporter.progress(100, {"train_loss": 1.0, "train_learning_rate": 0.1})
    reporter.progress(300, {"train_loss": 0.5, "train_learning_rate": 0.1})
    reporter.write(300, {"eval_top1": 0.75})
    reporter.close()
    assert [r.step for r in reports] == [100, 300, 300]
    assert reports[0].eta_seconds is None and reports[1].eta_seconds == pytest.approx(7.0)  # 700 steps at 0.01 s
    assert reports[1].metrics["images_per_second"] == pytest.approx(6400.0)
    assert plots.progress_line(reports[1]) == "step 300/1000 (30%), 6,400 img/s, ETA 0:00:07"
    assert reports[2].metrics == {"eval_top1": 0.75}


def test_sound_notebook_trains_shows_spectrograms_and_its_file_agrees(tmp_path, monkeypatch):
    """The notebook on a folder of 3 generated timbres (11 training clips each: one step an epoch), 2 epochs: it
    trains with the audio quickstart's settings, draws the spectrogram grid and the confusion matrix, and its
    exported file (StableHLO here: test_sound.py runs the ONNX one) names the class jaxnets names for each test clip."""
    import soundfile

    from jaxnets.checkpoints import read_meta, resolve_step_dir
    from jaxnets.sound import synth

    rng = np.random.default_rng(0)
    clips = tmp_path / "clips"
    for split, count in (("train", 11), ("test", 2)):
        for timbre in ("organ", "sine", "square"):
            (clips / split / timbre).mkdir(parents=True)
            for i in range(count):
                soundfile.write(clips / split / timbre / f"{i}.wav", synth.note(timbre, rng), synth.SAMPLE_RATE)
    workdir = tmp_path / "run"
    notebook = run_notebook("sound.ipynb", monkeypatch, CLIPS=str(clips), WORKDIR=str(workdir), EPOCHS=2,
                            EXPORT_FORMAT="stablehlo")
    text = printed(notebook)
    assert re.search(r"test top-1 [01]\.\d{4}", text) and re.search(r"\d+ mistakes in 6 test clips", text), text
    assert figures(notebook) == 3  # the live curves, the spectrograms, the confusion matrix
    lines = re.findall(r"^(\w+): (\w+) \(file\), (\w+) \(jaxnets\)$", text, flags=re.M)
    assert len(lines) == 6 and all(file == ours for _, file, ours in lines), text
    assert any("<audio" in output.get("data", {}).get("text/html", "") for output in notebook.cells[-1].outputs), (
        "a clip to listen to")
    # Its settings are the recipe's, but for the folder and the length.
    recipe = load_recipe("audio_quickstart", dataset=f"audio_folder:{clips}", num_epochs=2)
    saved = read_meta(resolve_step_dir(workdir))["config"]
    different = {k for k, v in recipe.to_dict().items() if json.loads(json.dumps(v)) != saved[k]}
    assert different <= {"image_size", "eval_crop", "cache", "shuffle_buffer", "train_split", "eval_split"}, different
