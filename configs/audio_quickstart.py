"""Audio quickstart: a small ResNeXt on the generated timbres (six instrument-like timbres), CPU, a few minutes.

    python train.py --config configs/audio_quickstart.py --workdir /tmp/jaxnets-audio

Offline: the clips are synthesised into data_dir on first use (jaxnets/sound/synth.py, ~17 MB, a few seconds).
Each 22.05 kHz clip is resampled to 16 kHz, cut to 1 s (a random crop in training, the centre in evaluation) and
turned into a 40-band log-mel spectrogram on the accelerator (40 x 63: 32 ms frames every 16 ms), with
SpecAugment and a random gain in training. Expected: docs/sound.md gives the accuracy and time measured.
"""

from jaxnets.config import base_config


def get_config():
    c = base_config()
    c.model = "resnext29_8x64d"
    # The quickstart's network (configs/quickstart.py): one block per stage, 16/32/64 planes, 4 groups of 4 channels.
    c.model_overrides.stage_sizes = (1, 1, 1)
    c.model_overrides.stage_planes = (16, 32, 64)
    c.model_overrides.groups = 4
    c.model_overrides.width_per_group = 16
    c.dataset = "timbres"
    c.audio.sample_rate = 16_000
    c.audio.clip_seconds = 1.0
    c.audio.n_fft = 512
    c.audio.win_length = 512
    c.audio.hop_length = 256
    c.audio.n_mels = 40
    c.audio.freq_mask_width = 6
    c.audio.time_mask_width = 8
    c.global_batch_size = 32
    c.eval_batch_size = 96
    c.num_epochs = 30
    c.optimizer = "sgd"
    c.nesterov = True
    c.learning_rate = 0.05
    c.schedule = "cosine"
    c.warmup_epochs = 1.0
    c.weight_decay = 5e-4
    c.log_every_steps = 45
    c.eval_every_epochs = 10.0
    c.checkpoint_every_steps = 90
    return c
