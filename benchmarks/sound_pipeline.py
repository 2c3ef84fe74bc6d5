"""Clips/s of the sound input path: decoding and resampling on the host, the log-mel front end beside librosa.

    python benchmarks/sound_pipeline.py [--clips 96] [--batch 32] [--rounds 3]

- decode + resample, one core: `jaxnets.data.audio_folder.decode` (libsndfile, mono mixdown, soxr HQ) on the
  generated timbres (22.05 kHz mono 16-bit WAV) and on the same notes as 44.1 kHz stereo FLAC, to 16 kHz;
- the train pipeline, every core (tf.data's parallel map, config.cache off so that every clip is decoded): the
  audio quickstart's `jaxnets.data.train_iterator` on the timbres, clips/s in all and per core;
- log-mel, one clip of 1 s at 16 kHz -> 40 x 63 (the audio quickstart's front end): jaxnets' front end (JAX, on
  the CPU device, batches of --batch) beside librosa's melspectrogram + power_to_db (numpy, clip by clip),
  interleaved rounds, the ratio reported.

The median round is reported. Writes sound_pipeline.json and its markdown (.md) into --out (default
benchmarks/results/) and prints the markdown.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile

import jax
import numpy as np
import soundfile
import soxr
from harness import RESULTS, environment, results
from harness.rounds import interleave, timed

sys.path.insert(0, str(pathlib.Path(__file__).parents[1]))  # configs/, as under train.py
from configs import audio_quickstart  # noqa: E402
from jaxnets.data import dataset_info, train_iterator  # noqa: E402
from jaxnets.data.audio_folder import decode  # noqa: E402
from jaxnets.sound import synth  # noqa: E402
from jaxnets.sound.config import resolve  # noqa: E402
from jaxnets.sound.frontend import log_mel  # noqa: E402


def _decode_rate(paths: list[str], rounds: int) -> tuple[float, list[float]]:
    seconds = interleave({"decode": timed(lambda: [decode(p, 16_000) for p in paths], per=len(paths))}, rounds)
    return 1.0 / seconds.median("decode"), [1.0 / s for s in seconds.values["decode"]]


def _pipeline_rate(config, batch: int, batches: int, rounds: int) -> tuple[float, list[float]]:
    iterator = train_iterator(config, batch)  # (its threads end with this call, before the data folder goes)
    for _ in range(5):
        next(iterator)  # tf.data's threads started, autotuned a little

    def take():
        for _ in range(batches):
            next(iterator)

    seconds = interleave({"pipeline": timed(take, per=batches * batch)}, rounds)
    return 1.0 / seconds.median("pipeline"), [1.0 / s for s in seconds.values["pipeline"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=96, help="clips decoded per round")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=100, help="train pipeline batches per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as data_dir:
        config = audio_quickstart.get_config()
        config.data_dir, config.cache = data_dir, False
        dataset_info(config)  # writes the timbres before the clock starts
        wavs = sorted(str(p) for p in pathlib.Path(data_dir).rglob("*.wav"))[: args.clips]
        flacs = []
        for i, path in enumerate(wavs):  # the same notes as 44.1 kHz stereo FLAC recordings
            mono = soxr.resample(soundfile.read(path, dtype="float32")[0], synth.SAMPLE_RATE, 44_100)
            flacs.append(os.path.join(data_dir, f"{i}.flac"))
            soundfile.write(flacs[-1], np.stack([mono, 0.5 * mono], axis=1), 44_100, subtype="PCM_16")
        for name, paths in (("22.05 kHz mono WAV", wavs), ("44.1 kHz stereo FLAC", flacs)):
            rate, rates = _decode_rate(paths, args.rounds)
            rows.append({"stage": f"decode + resample to 16 kHz, {name}", "cores": 1, "clips_per_second": rate,
                         "clips_per_second_all": rates})

        rate, rates = _pipeline_rate(config, args.batch, args.batches, args.rounds)
        cores = os.cpu_count()
        rows.append({"stage": "train pipeline (decode, resample, random crop, batch), timbres", "cores": cores,
                     "clips_per_second": rate, "clips_per_second_per_core": rate / cores,
                     "clips_per_second_all": rates})

    import librosa  # (the test extra's)

    sound = resolve(audio_quickstart.get_config().audio.to_dict())
    clips = 0.1 * np.random.default_rng(0).standard_normal((args.batch, sound.clip_samples)).astype(np.float32)
    front_end = jax.jit(lambda x: log_mel(x, sound))
    front_end(clips).block_until_ready()

    def reference():
        for clip in clips:
            power = librosa.feature.melspectrogram(
                y=clip, sr=sound.sample_rate, n_fft=sound.n_fft, win_length=sound.win_length,
                hop_length=sound.hop_length, n_mels=sound.n_mels, fmin=sound.fmin, fmax=sound.fmax)
            librosa.power_to_db(power, amin=sound.amin, top_db=sound.top_db)

    reference()  # (its first call builds and caches the mel filters)
    seconds = interleave({"jaxnets": timed(lambda: front_end(clips).block_until_ready(), per=args.batch),
                          "librosa": timed(reference, per=args.batch)}, args.rounds)
    speedup = seconds.speedup("jaxnets", "librosa")
    for name in ("jaxnets", "librosa"):
        rows.append({"stage": f"log-mel 40 x 63 of 1 s, {name}", "cores": os.cpu_count() if name == "jaxnets" else 1,
                     "clips_per_second": 1.0 / seconds.median(name),
                     "clips_per_second_all": [1.0 / s for s in seconds.values[name]]})

    report = {"environment": environment.capture(), "batch": args.batch, "results": rows,
              "front_end_speedup_over_librosa": speedup}
    body = [f"Median of {args.rounds} rounds. Decoding: {args.clips} clips a round, one thread; the pipeline: "
            f"{args.batches} batches of {args.batch} a round; the front end: batches of {args.batch} (jaxnets, XLA "
            "on every core) or clip by clip (librosa, numpy).", "",
            *results.table(["stage", "cores", "clips/s", "clips/s per core"],
                           [[r["stage"], r["cores"], f"{r['clips_per_second']:,.0f}",
                             f"{r['clips_per_second'] / r['cores']:,.0f}"] for r in rows]),
            "", f"jaxnets' front end / librosa's, clips/s: {speedup:.2f}x (XLA may use every core, librosa one)."]
    print(results.write(os.path.join(args.out, "sound_pipeline.json"), report, "Sound input path", body))


if __name__ == "__main__":
    main()
