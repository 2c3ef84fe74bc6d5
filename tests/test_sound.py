"""Sound: the log-mel front end equals librosa's, a folder of 44.1 kHz stereo clips in four formats trains at 16 kHz
mono, resume after SIGKILL is bit for bit, exported files carry the front end, and each bad input is one line.

One 12-step run on that folder (checkpoints every 4 steps, 8 CPU devices) is the reference of the run tests.
"""

import json
import pathlib
import shutil

import jax
import librosa
import numpy as np
import pytest
import soundfile
import soxr
from helpers import load_recipe

import jaxnets
from jaxnets.data import available_data, dataset_info, eval_iterator, train_iterator
from jaxnets.data.audio_folder import decode, scan_audio_folder
from jaxnets.errors import ConfigError, IncompatibleCheckpointError, UserError
from jaxnets.export import serving_function, write
from jaxnets.sound import synth
from jaxnets.sound.config import resolve
from jaxnets.sound.frontend import DB_MEAN, DB_SCALE, log_mel, mel_power, network_input, spec_augment
from jaxnets.tasks.inputs import NetworkInputs
from jaxnets.train import train_and_evaluate

# ---- the front end against librosa ----------------------------------------------------------------------------


def signals(rate: int, samples: int) -> dict[str, np.ndarray]:
    t = np.arange(samples) / rate
    low, high, duration = 40.0, 0.45 * rate, samples / rate  # an exponential sweep from 40 Hz to 0.45 x the rate
    sweep = 2 * np.pi * low * duration / np.log(high / low) * ((high / low) ** (t / duration) - 1.0)
    return {
        "chirp": np.cos(sweep).astype(np.float32),
        "white noise": (0.1 * np.random.default_rng(0).standard_normal(samples)).astype(np.float32),
        "multi-tone": (0.3 * np.sin(2 * np.pi * 440.0 * t) + 0.2 * np.sin(2 * np.pi * 1234.5 * t)
                       + 0.05 * np.sin(2 * np.pi * 0.4 * rate * t)).astype(np.float32),
    }


@pytest.mark.parametrize("fields", [
    {},  # 16 kHz, 512-point FFT, 25 ms window, 10 ms hop, 64 mels
    {"sample_rate": 22_050, "n_fft": 1024, "win_length": 1024, "hop_length": 256, "n_mels": 128, "fmin": 30.0,
     "fmax": 8000.0, "clip_seconds": 0.5},
    {"sample_rate": 8_000, "n_fft": 256, "win_length": 200, "hop_length": 80, "n_mels": 40, "top_db": None,
     "amin": 1e-5, "clip_seconds": 0.7},
], ids=["defaults", "22k-fmin-fmax", "8k-no-top-db"])
def test_front_end_equals_librosa(fields):
    sound = resolve(fields)
    for name, clip in signals(sound.sample_rate, sound.clip_samples).items():
        kwargs = dict(sr=sound.sample_rate, n_fft=sound.n_fft, win_length=sound.win_length,
                      hop_length=sound.hop_length, n_mels=sound.n_mels, fmin=sound.fmin, fmax=sound.fmax)
        power = librosa.feature.melspectrogram(y=clip, power=2.0, **kwargs)  # [n_mels, frames]
        db = librosa.power_to_db(power, ref=1.0, amin=sound.amin, top_db=sound.top_db)
        ours_power = np.asarray(mel_power(clip[None], sound))[0].T
        ours_db = np.asarray(log_mel(clip[None], sound))[0]
        assert ours_db.shape == db.shape == (sound.n_mels, sound.num_frames), name
        assert np.abs(ours_power - power).max() <= 1e-4 * power.max(), name
        assert np.abs(ours_db - db).max() <= 1e-4 * np.abs(db).max(), name


def test_spec_augment_masks_the_drawn_bands_and_frames_and_gain_scales():
    sound = resolve({"n_mels": 10, "hop_length": 1600, "freq_masks": 1, "freq_mask_width": 4, "time_masks": 1,
                     "time_mask_width": 5, "gain_db": 6.0, "top_db": None})  # 11 frames
    ones = np.ones((2, 10, 11), np.float32)
    # Mask widths floor(u * (max + 1)), starts floor(u * (size - width + 1)): example 0 masks mels 3-5 and frames
    # 0-4; example 1 draws width 0 twice (nothing masked).
    uniforms = np.array([[0.7, 0.4, 0.99, 0.0, 0.5], [0.1, 0.9, 0.1, 0.9, 0.5]], np.float32)
    masked = np.asarray(spec_augment(ones, uniforms, sound))
    expected = np.ones_like(ones)
    expected[0, 3:6, :] = 0.0
    expected[0, :, 0:5] = 0.0
    np.testing.assert_array_equal(masked, expected)
    clip = signals(sound.sample_rate, sound.clip_samples)["white noise"][None]  # (every band above the floor)
    plain = np.asarray(network_input(clip, sound))
    # u = 1 in the last column: +6 dB of gain, i.e. +6 / DB_SCALE, where no mask falls (zero widths).
    louder = np.asarray(network_input(clip, sound, uniforms=np.array([[0.0, 0.0, 0.0, 0.0, 1.0]], np.float32)))
    np.testing.assert_allclose(louder - plain, 6.0 / DB_SCALE, atol=1e-4)
    assert DB_MEAN == -40.0  # (the fixed normalisation docs/sound.md states)


# ---- a folder of 44.1 kHz stereo clips in four formats ---------------------------------------------------------

FORMATS = {"wav": ("WAV", "PCM_24"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS"),
           "mp3": ("MP3", "MPEG_LAYER_III")}
CLASSES = ("organ", "sine", "square")
STEPS, EVERY = 12, 4


def stereo_recording(timbre: str, rng) -> np.ndarray:
    """A synthesised note as a 44.1 kHz stereo recording: the two channels at different levels."""
    mono = soxr.resample(synth.note(timbre, rng), synth.SAMPLE_RATE, 44_100)
    return np.stack([mono, 0.5 * mono], axis=1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    extensions = list(FORMATS)
    for split, count in (("train", 8), ("test", 4)):
        for timbre in CLASSES:
            (root / split / timbre).mkdir(parents=True)
            for i in range(count):
                extension = extensions[i % len(extensions)]
                file_format, subtype = FORMATS[extension]
                soundfile.write(root / split / timbre / f"{i}.{extension}", stereo_recording(timbre, rng), 44_100,
                                format=file_format, subtype=subtype)
    return root


def sound_config(folder, **fields):
    """The audio quickstart on `folder`: 12 steps, every step logged, eval at the end only."""
    return load_recipe("audio_quickstart", dataset=f"audio_folder:{folder}", num_train_steps=STEPS,
                       global_batch_size=8, eval_batch_size=8, log_every_steps=1, eval_every_epochs=100.0,
                       checkpoint_every_steps=EVERY, **fields)


def test_each_format_decodes_to_the_mono_mixdown_resampled_to_16k(folder):
    for extension in FORMATS:
        path = next((folder / "train" / "sine").glob(f"*.{extension}"))
        original, rate = soundfile.read(path, dtype="float32", always_2d=True)
        assert rate == 44_100 and original.shape[1] == 2
        clip = decode(str(path), 16_000)
        expected = soxr.resample(original.mean(axis=1), 44_100, 16_000, quality="HQ")
        assert clip.dtype == np.float32 and clip.shape == expected.shape, extension
        np.testing.assert_allclose(clip, expected, atol=1e-6, err_msg=extension)


def test_the_pipeline_gives_clips_of_the_configured_length(folder):
    config = sound_config(folder)
    info = dataset_info(config)
    assert info.class_names == CLASSES and info.num_classes == 3
    assert (info.num_train_examples, info.num_eval_examples) == (24, 12)
    assert info.image_shape == (40, 63, 1)  # 40 mels x (1 + 16000 // 256) frames
    batch = next(train_iterator(config, 8))
    assert batch["image"].shape == (8, 16_000) and batch["augment"].shape == (8, 9)
    again = next(train_iterator(config, 8))
    np.testing.assert_array_equal(batch["image"], again["image"])
    np.testing.assert_array_equal(batch["augment"], again["augment"])
    uncached = sound_config(folder, cache=False)  # decoded after the shuffle, by the per-example stage
    np.testing.assert_array_equal(next(train_iterator(uncached, 8))["image"], batch["image"])
    with config.unlocked():
        config.audio.eval_crops = 3
    evaluation = next(eval_iterator(config, 6))
    assert evaluation["image"].shape == (6, 3, 16_000) and evaluation["mask"].all()
    # The first crop starts at the clip's start, the last ends at its end (clips of 0.6-1.4 s; some are padded).
    first = decode(next(p for p, _ in scan_audio_folder(str(folder), "train", "test", 16_000).clips["test"]), 16_000)
    if len(first) >= 16_000:
        np.testing.assert_array_equal(evaluation["image"][0, 0], first[:16_000])
        np.testing.assert_array_equal(evaluation["image"][0, -1], first[-16_000:])


@pytest.fixture(scope="module")
def reference(folder, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sound-reference")
    final = train_and_evaluate(sound_config(folder), str(workdir))  # (8 CPU devices, as train.py below sees)
    return workdir, final


def train_losses(workdir) -> dict[int, float]:
    rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}


def test_a_resume_from_a_checkpoint_is_bit_exact(folder, reference, tmp_path):
    """The reference's step-4 checkpoint alone, resumed: the same losses to the end, so the stream of clips and of
    augmentation draws resumes where it was. (train.py through SIGKILLs: test_checkpoint, test_cloud_storage.)"""
    workdir, _ = reference
    shutil.copytree(workdir / "checkpoints" / str(EVERY), tmp_path / "checkpoints" / str(EVERY))
    train_and_evaluate(sound_config(folder), str(tmp_path))
    expected, resumed = train_losses(workdir), train_losses(tmp_path)
    assert sorted(resumed) == list(range(EVERY + 1, STEPS + 1)), f"resumed at step {EVERY + 1}"
    assert resumed == {step: expected[step] for step in resumed}, "the resumed run must match bit for bit"


@pytest.mark.parametrize("format", ["onnx"])  # (StableHLO: the sound notebook's test)
def test_the_exported_model_takes_clips_with_the_front_end_inside(format, reference, tmp_path):  # noqa: A002
    workdir, _ = reference
    served = serving_function(workdir)
    assert served.image_shape == (16_000,) and served.input_name == "clips" and served.class_names == CLASSES
    path = tmp_path / f"model.{format}"
    write(served, path, format)
    clips = 0.3 * np.random.default_rng(1).standard_normal((3, 16_000)).astype(np.float32)
    model, variables, config = jaxnets.load_checkpoint(workdir)
    spectrograms = network_input(clips, NetworkInputs.of(config).sound)
    expected = np.asarray(model.apply(variables, spectrograms, train=False))
    if format == "stablehlo":
        got = jax.export.deserialize(path.read_bytes()).call(clips)
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(["logits"], {"clips": clips})[0]
    np.testing.assert_allclose(np.asarray(got), expected, atol=5e-5 * np.abs(expected).max())


def test_resume_on_another_front_end_is_refused_and_changes_nothing(folder, reference, tmp_path):
    """ResNeXt pools over any input size, so a spectrogram of 32 mels fits the 40-mel run's parameters: the
    resume is refused by the front end's fields, not by a shape."""
    workdir, _ = reference
    shutil.copytree(workdir / "checkpoints" / str(STEPS), tmp_path / "checkpoints" / str(STEPS))
    config = sound_config(folder)
    config.audio.n_mels = 32
    with pytest.raises(IncompatibleCheckpointError, match=r"another model or input \(audio.n_mels: checkpoint 40, "
                       r"config 32\): use another --workdir"):
        train_and_evaluate(config, str(tmp_path))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [str(STEPS)]


def test_classify_refuses_a_run_on_sound_in_one_line(reference):
    from jaxnets.classify import Classifier

    with pytest.raises(UserError, match=r"was trained on sound: classify takes image files; export the run"):
        Classifier(reference[0])


# ---- bad inputs: one line each, before anything compiles --------------------------------------------------------


def _wav(path, samples: int = 1600, rate: int = 16_000):
    soundfile.write(path, np.zeros(samples, np.float32), rate)


BAD_FOLDERS = {
    "not audio": (lambda root: (root / "train" / "a" / "notes.txt").write_text("hello"),
                  r"train/a/notes.txt is not a sound clip \(.wav, .flac, .ogg, .oga, .mp3\): remove it"),
    "unreadable": (lambda root: (root / "train" / "a" / "broken.wav").write_bytes(b"RIFF\x00\x01garbage"),
                   r"train/a/broken.wav is not a readable sound clip \(LibsndfileError: .*\); remove it or replace it"),
    "zero samples": (lambda root: _wav(root / "test" / "a" / "empty.wav", samples=0),
                     r"test/a/empty.wav has zero samples: remove it"),
    "sample rate": (lambda root: _wav(root / "train" / "a" / "slow.wav", rate=200),
                    r"train/a/slow.wav is sampled at 200 Hz, over 64x away from config.audio.sample_rate=16000"),
    "class only in test": (lambda root: (root / "test" / "c").mkdir(),
                           r"test/c is a class that .*train lacks: every class needs training clips"),
    "empty class": (lambda root: (root / "train" / "c").mkdir(),
                    r"the class folder .*train/c has no clips"),
    "missing split": (lambda root: shutil.rmtree(root / "test"), r"test is missing: a folder dataset needs one folder"),
}


@pytest.mark.parametrize("case", BAD_FOLDERS)
def test_each_bad_folder_is_one_line_naming_the_file(case, tmp_path):
    for split in ("train", "test"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            _wav(tmp_path / split / name / "ok.wav")
    damage, message = BAD_FOLDERS[case]
    damage(tmp_path)
    config = sound_config(tmp_path)
    with pytest.raises(ConfigError, match=message) as raised:
        available_data(config)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("fields, message", [
    ({"audio.n_mels": 300}, r"config.audio.n_mels: expected at most n_fft // 2 \+ 1 = 257"),
    ({"audio.win_length": 1024}, r"config.audio.win_length: expected at most n_fft=512"),
    ({"audio.n_fft": 401}, r"config.audio.n_fft: expected an even number of samples up to 8192"),
    ({"audio.fmax": 9000.0}, r"config.audio.fmax: expected None or Hz in \(fmin, sample_rate / 2 = 8000\]"),
    ({"audio.sample_rate": 0}, r"config.audio.sample_rate: expected an int in \[1000, 768000\]"),
    ({"image_size": 64}, r"config.image_size: .* is sound; its input size is config.audio's"),
    ({"augmentation.flip": True}, r"config.augmentation.flip: image augmentation does not apply to .*sound"),
])
def test_each_bad_sound_field_is_named(fields, message, folder):
    config = sound_config(folder)
    for key, value in fields.items():
        section, _, field = key.rpartition(".")
        (config[section] if section else config)[field] = value
    with pytest.raises(ConfigError, match=message):
        jaxnets.train.resolve_config(config, device_count=1)
