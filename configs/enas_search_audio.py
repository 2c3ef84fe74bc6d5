"""ENAS search on sound: the macro search space on the generated timbres (or your own clips), minutes on a CPU.

    python train.py --config configs/enas_search_audio.py --workdir /tmp/jaxnets-enas-audio
    python train.py --config /tmp/jaxnets-enas-audio/final_config.py --workdir /tmp/jaxnets-enas-audio-final

    # your own clips (root/train/<class>/*.wav, root/test/<class>/*.wav; FLAC, OGG and MP3 too):
    python train.py --config configs/enas_search_audio.py --config.dataset=audio_folder:/path/to/root ...

The search quickstart's algorithm and size (configs/enas_search_quickstart.py) on 40-band log-mel spectrograms
of 1 s clips (configs/audio_quickstart.py's front end): it trains the shared network on the first 90% of the
training split and takes the controller's rewards on the last 10%; final_config.py then trains the found arc from
scratch on the whole training split of the same folder, with the same front end, and tests it on the test split.
docs/sound.md gives the time and accuracies measured.
"""

import ml_collections

from configs import audio_quickstart, enas_search_quickstart


def get_config():
    c = enas_search_quickstart.get_config()  # 6 layers of 16 filters, the released search's rules
    c.dataset = "timbres"
    c.audio = audio_quickstart.get_config().audio  # the same front end (copied into final_config.py)
    c.num_epochs = 40
    c.log_every_steps = 40
    c.eval_every_epochs = 5.0
    c.checkpoint_every_steps = 80
    c.search.controller_updates_per_epoch = 5
    c.search.controller_batch_size = 16

    # Training the found arc from scratch: the audio quickstart's settings.
    c.search.final = ml_collections.ConfigDict(dict(
        global_batch_size=32, eval_batch_size=96, num_epochs=30, optimizer="sgd", nesterov=True, learning_rate=0.05,
        schedule="cosine", warmup_epochs=1.0, weight_decay=5e-4, weight_decay_mode="l2_loss",
        log_every_steps=45, eval_every_epochs=10.0, checkpoint_every_steps=90,
        model_overrides=dict(keep_prob=0.9),
    ))
    return c
