"""What a run reports: TensorBoard events through tensorboardX, written without importing torch."""

import subprocess
import sys

from helpers import REPO

REPORT_IN_A_FRESH_PROCESS = """
import sys
from jaxnets.train.reporting import Reporter
reporter = Reporter(sys.argv[1], total_steps=2, steps_per_epoch=2, global_batch_size=8)
reporter.write(1, {"train_loss": 2.5})
reporter.close()
print("torch" in sys.modules)
import torch  # afterwards torch imports as usual
print(float(torch.ones(2).sum()))
"""


def test_tensorboard_events_are_written_without_importing_torch(tmp_path):
    result = subprocess.run([sys.executable, "-c", REPORT_IN_A_FRESH_PROCESS, str(tmp_path)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["False", "2.0"]
    import tensorflow as tf  # (TensorBoard's own reader of event files)

    [events_file] = tmp_path.glob("events.out.tfevents.*")
    scalars = [(event.step, value.tag, value.simple_value)
               for event in tf.compat.v1.train.summary_iterator(str(events_file)) for value in event.summary.value]
    assert scalars == [(1, "train_loss", 2.5)]
