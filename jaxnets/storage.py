"""Cloud storage through the standard emulator variable: with `STORAGE_EMULATOR_HOST` set, every gs:// access goes
to that server, as google-cloud-storage and gcsfs already do by themselves.

Two clients need telling. Orbax writes arrays through tensorstore, which reads its own variable
(`TENSORSTORE_GCS_HTTP_URL`) and asks the metadata server for credentials unless a test token is given; and
epath hands gs:// to TensorFlow's GCS client whenever TensorFlow is installed, which knows no emulator, so gs://
goes through gcsfs instead (`EPATH_USE_TF=false`). Both are read once, when first used: `use_storage_emulator` runs
when jaxnets is imported, before any path is opened. Variables the user set are left as they are.

Also here, for any gs:// workdir, emulated or not: TensorBoard's event files are uploaded with retries from the first
upload on (`retry_first_event_upload`, registered when a run opens its TensorBoard writer).
"""

import functools
import logging
import os

EMULATOR_VARIABLE = "STORAGE_EMULATOR_HOST"


def emulator_url() -> str | None:
    """The emulator's base URL (scheme added when the variable gives only host:port), or None without one."""
    host = os.environ.get(EMULATOR_VARIABLE, "").strip().rstrip("/")
    if not host:
        return None
    return host if "://" in host else f"http://{host}"


def use_storage_emulator() -> None:
    url = emulator_url()
    if url is None:
        return
    os.environ[EMULATOR_VARIABLE] = url  # google-cloud-storage (TensorBoard events) needs the scheme spelled out
    os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url)
    os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")  # tensorstore: no metadata-server lookup
    os.environ.setdefault("EPATH_USE_TF", "false")
    # gcsfs' zonal-bucket probe asks Google's control API, which no emulator serves: one warning per path.
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    logging.getLogger("gcsfs").setLevel(logging.WARNING)  # not a line per file read (its read-ahead cache, at INFO)


@functools.cache  # (once a process: a registry entry, whichever run opens a writer first)
def retry_first_event_upload() -> None:
    """tensorboardX writes a gs:// event file by uploading it whole at each flush, on the condition that the object
    still has the generation it last wrote, which makes google-cloud-storage retry the upload; the first upload it
    sends unconditioned, hence unretried: one 503 there loses the events or ends the run. Generation 0 ("only if
    absent") makes the first conditional too. Through tensorboardX's own registry of writers by URL scheme."""
    from tensorboardX import record_writer  # (here: storage.py is imported with jaxnets, tensorboardX only by a run)

    class RetriedUploads(record_writer.GCSRecordWriter):
        closed = False

        def flush(self):
            self.blob.upload_from_string(data=self.buffer.getvalue(), if_generation_match=self.blob.generation or 0)

        def close(self):  # once: tensorboardX's __del__ closes again, uploading the whole file once more at exit
            if not self.closed:
                self.closed = True
                self.flush()

    class RetriedUploadsFactory(record_writer.GCSRecordWriterFactory):
        def open(self, path):
            return RetriedUploads(path)

    record_writer.register_writer_factory("gs", RetriedUploadsFactory())
