"""A gs:// workdir reaches every file API unmangled. No GCS here: etils' own epath mock serves gs:// paths
from a local folder, and orbax's and tensorboardX's entry points record the path they are given (writing to
real cloud storage is theirs, and untested here)."""

import pathlib

import orbax.checkpoint as ocp
from etils import epath
from etils.epath import testing as epath_testing

from jaxnets.checkpoints import manager as checkpoint
from jaxnets.train import reporting
from jaxnets.train.reporting import Reporter


class RecordingWriter:
    logdirs: list = []

    def __init__(self, logdir, **kwargs):
        self.logdirs.append(logdir)

    def add_scalar(self, *args):
        pass

    def close(self):
        pass


def test_a_gs_workdir_reaches_epath_orbax_and_tensorboard_unmangled(tmp_path, monkeypatch):
    def local(path) -> str:
        return str(tmp_path / "bucket" / str(path).removeprefix("gs://bucket/"))

    def redirect(original, path, *args, **kwargs):
        return original(local(path), *args, **kwargs)

    managers = []
    monkeypatch.setattr(ocp, "CheckpointManager", lambda directory, options: managers.append(str(directory)))
    monkeypatch.setattr(reporting, "_summary_writer", lambda: RecordingWriter)
    monkeypatch.chdir(tmp_path)
    # epath sends gs:// to TensorFlow's GCS client whenever TF is installed, bypassing its own mock backend.
    monkeypatch.setattr(epath.gpath, "_is_tf_installed", lambda: False)
    functions = ("open", "exists", "isdir", "listdir", "makedirs", "mkdir", "remove", "rename", "stat", "glob")
    with epath_testing.mock_epath(**dict.fromkeys(functions, redirect)):
        checkpoint.check_writable("gs://bucket/run")
        checkpoint.Checkpoints("gs://bucket/run", max_to_keep=1)
        reporter = Reporter("gs://bucket/run", total_steps=10, steps_per_epoch=5, global_batch_size=8)
        reporter.write(1, {"train_loss": 2.0})
        reporter.write(2, {"train_loss": 1.0})
        reporter.close()
        resumed = Reporter("gs://bucket/run", total_steps=10, steps_per_epoch=5, global_batch_size=8, start_step=1)
        resumed.close()
        assert epath.Path("gs://bucket/run/metrics.jsonl").read_text() == '{"step": 1, "train_loss": 2.0}\n'

    assert managers == ["gs://bucket/run/checkpoints"]
    assert RecordingWriter.logdirs == ["gs://bucket/run", "gs://bucket/run"]
    assert (tmp_path / "bucket" / "run").is_dir(), "the probe and metrics.jsonl went through epath"
    assert not list(pathlib.Path(tmp_path).glob("gs:*")), "no local folder named gs:"
