"""Audio quickstart: the quickstart's small ResNeXt on the generated timbres (six instrument-like timbres), CPU,
a few minutes.

    python train.py --config configs/audio_quickstart.py --workdir /tmp/jaxnets-audio

Offline: the clips are synthesised into data_dir on first use (jaxnets/sound/synth.py, ~17 MB, a few seconds).
Each 22.05 kHz clip is resampled to 16 kHz, cut to 1 s (a random crop in training, the centre in evaluation) and
turned into a 40-band log-mel spectrogram on the accelerator (40 x 63: 32 ms frames every 16 ms), with
SpecAugment and a random gain in training. Measured: 94.8% test top-1 in 89 s on a 2-core Xeon (chance 16.7%;
benchmarks/results/audio_quickstart_run.md, docs/sound.md).
"""

from configs import quickstart


def get_config():
    c = quickstart.get_config()  # its network: one block per stage, 16/32/64 planes, 4 groups of 4 channels
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
    c.learning_rate = 0.05
    c.steps_per_dispatch = 1  # a step on a spectrogram takes ~0.2 s here: nothing to gain from several per call
    c.log_every_steps = 45
    c.eval_every_epochs = 10.0
    c.checkpoint_every_steps = 90
    return c
