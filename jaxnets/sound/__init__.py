"""Sound: the log-mel front end (JAX), its config section, and the generated `timbres` set.

Datasets of sound clips (`audio_folder:/path`, `timbres`) give batches of waveforms; the front end turns them into
the spectrograms the networks take, on the accelerator (jaxnets.sound.frontend). Imports neither TensorFlow nor,
until the front end is used, JAX.
"""
