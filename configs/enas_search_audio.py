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
    quickstart = audio_quickstart.get_config()
    c = enas_search_quickstart.get_config()  # 6 layers of 16 filters, the released search's rules
    c.dataset = "timbres"
    c.audio = quickstart.audio  # the same front end (copied into final_config.py)
    c.num_epochs = 40
    c.log_every_steps = 40
    c.eval_every_epochs = 5.0
    c.checkpoint_every_steps = 80
    c.search.controller_updates_per_epoch = 5
    c.search.controller_batch_size = 16

    # Training the found arc from scratch: the audio quickstart's settings, and the ENAS child's dropout.
    c.search.final = ml_collections.ConfigDict({name: quickstart[name] for name in (
        "global_batch_size", "eval_batch_size", "num_epochs", "optimizer", "nesterov", "learning_rate", "schedule",
        "warmup_epochs", "weight_decay", "weight_decay_mode", "log_every_steps", "eval_every_epochs",
        "checkpoint_every_steps")})
    c.search.final.model_overrides = dict(keep_prob=0.9)
    return c
