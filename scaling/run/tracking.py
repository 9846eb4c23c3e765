"""Experiment tracking: every run writes TensorBoard event files, with no TensorFlow (or tensorboard) needed.

    runs/<run_id>/tb/events.out.tfevents.<time>.<host>.<pid>    `tensorboard --logdir runs` reads them

The format is TensorFlow's TFRecord framing around `Event` protocol buffers, written here directly:
each record is  uint64 length | uint32 masked crc32c(length) | data | uint32 masked crc32c(data)  (little
endian), and each `Event` holds wall_time (field 1, double), step (2, int64) and either file_version (3,
the first record, "brain.Event:2") or a `Summary` (5) of `Value`s {tag (1, string), simple_value (2, float)}.
`read_scalars` parses the same bytes back (tests, and anyone without tensorboard).

Optional mirrors, only when asked for (MEDSCALE_TRACKING=wandb,mlflow) and installed: the same scalars go
to Weights & Biases and/or MLflow. A tracker that cannot start is reported once and skipped; it never
fails a run. Each takes its own settings from the environment: W&B's WANDB_MODE=offline writes the run under
WANDB_DIR for a later `wandb sync`; MLflow logs where MLFLOW_TRACKING_URI points (a server, or a local
`file:` store, which MLflow 3 accepts with MLFLOW_ALLOW_FILE_STORE=true). tests/test_tracking_backends.py
reads a run's metrics back from both without the network.
"""
from __future__ import annotations

import os
import socket
import struct
import time
import warnings
from pathlib import Path

TRACKING_ENV = "MEDSCALE_TRACKING"


# ----- crc32c (Castagnoli), as TFRecord frames use it ------------------------------------------------

def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ----- the few protobuf wire types an Event needs ------------------------------------------------------

def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1   # int64 two's complement, as protobuf encodes negative int64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _scalar_value(tag: str, value: float) -> bytes:
    return _field_bytes(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value)


def encode_event(wall_time: float, step: int, *, scalars: dict[str, float] | None = None,
                 file_version: str | None = None) -> bytes:
    out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _varint(2 << 3 | 0) + _varint(int(step))
    if file_version is not None:
        out += _field_bytes(3, file_version.encode())
    if scalars:
        summary = b"".join(_field_bytes(1, _scalar_value(t, float(v))) for t, v in scalars.items())
        out += _field_bytes(5, summary)
    return out


def frame_record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


class EventFileWriter:
    """Appends scalar events to a new event file in `logdir`. The file is opened for each append (writes
    are few: one per held-out evaluation), so a run that dies leaves a complete file and no open handle."""

    def __init__(self, logdir: Path | str) -> None:
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}"
        self.path = self.logdir / name
        self._write(encode_event(time.time(), 0, file_version="brain.Event:2"))

    def _write(self, event: bytes) -> None:
        with open(self.path, "ab") as f:
            f.write(frame_record(event))

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        values = {k: float(v) for k, v in values.items() if v is not None}
        if values:
            self._write(encode_event(time.time(), step, scalars=values))

    def close(self) -> None:
        """Nothing stays open between writes; kept so a writer reads like a file."""


# ----- reading back ----------------------------------------------------------------------------------

def read_records(path: Path | str) -> list[bytes]:
    """The payloads of a TFRecord file, checking both checksums of every record."""
    blob = Path(path).read_bytes()
    out, at = [], 0
    while at < len(blob):
        header = blob[at: at + 8]
        (length,) = struct.unpack("<Q", header)
        (crc_len,) = struct.unpack("<I", blob[at + 8: at + 12])
        data = blob[at + 12: at + 12 + length]
        (crc_data,) = struct.unpack("<I", blob[at + 12 + length: at + 16 + length])
        if crc_len != masked_crc32c(header) or crc_data != masked_crc32c(data):
            raise ValueError(f"{path}: record at byte {at} fails its crc32c check")
        out.append(data)
        at += 16 + length
    return out


def _read_varint(buf: bytes, at: int) -> tuple[int, int]:
    n, shift = 0, 0
    while True:
        b = buf[at]
        n |= (b & 0x7F) << shift
        at += 1
        shift += 7
        if not b & 0x80:
            return n, at


def _fields(buf: bytes):
    at = 0
    while at < len(buf):
        key, at = _read_varint(buf, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _read_varint(buf, at)
        elif wire == 1:
            value, at = buf[at: at + 8], at + 8
        elif wire == 5:
            value, at = buf[at: at + 4], at + 4
        elif wire == 2:
            size, at = _read_varint(buf, at)
            value, at = buf[at: at + size], at + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, value


def read_scalars(logdir: Path | str) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value), ...] over every event file under `logdir`, in file then write order."""
    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        for record in read_records(path):
            step, summary = 0, None
            for number, value in _fields(record):
                if number == 2:
                    step = value
                elif number == 5:
                    summary = value
            for number, value in _fields(summary or b""):
                if number != 1:
                    continue
                tag, simple = None, None
                for n, v in _fields(value):
                    tag = v.decode() if n == 1 else tag
                    simple = struct.unpack("<f", v)[0] if n == 2 else simple
                if tag is not None and simple is not None:
                    out.setdefault(tag, []).append((step, simple))
    return out


# ----- the run's tracker -----------------------------------------------------------------------------

class RunTracker:
    """What train.py calls: `log(step, {...})` at every held-out evaluation, `close()` at the end."""

    def __init__(self, run_dir: Path | str, run_id: str, config: dict, *, extra: str | None = None) -> None:
        self.tb = EventFileWriter(Path(run_dir) / "tb")
        self.mirrors = []
        wanted = (extra if extra is not None else os.environ.get(TRACKING_ENV, "")).lower()
        for name in filter(None, (w.strip() for w in wanted.split(","))):
            mirror = _start_mirror(name, run_id, config)
            if mirror is not None:
                self.mirrors.append(mirror)

    def log(self, step: int, values: dict[str, float | None]) -> None:
        self.tb.scalars(step, values)
        clean = {k: float(v) for k, v in values.items() if v is not None}
        for mirror in self.mirrors:
            mirror(step, clean)

    def close(self) -> None:
        self.tb.close()
        for mirror in self.mirrors:
            getattr(mirror, "finish", lambda: None)()


def _start_mirror(name: str, run_id: str, config: dict):
    try:
        if name == "wandb":
            import wandb

            wb = wandb.init(project=config.get("sweep", "medscale"), name=run_id, id=run_id, resume="allow",
                            config=config)
            log = lambda step, values: wb.log(values, step=step)  # noqa: E731
            log.finish = wb.finish
            return log
        if name == "mlflow":
            import mlflow

            mlflow.set_experiment(config.get("sweep", "medscale"))
            active = mlflow.start_run(run_name=run_id)
            log = lambda step, values: mlflow.log_metrics(values, step=step)  # noqa: E731
            log.finish = lambda: mlflow.end_run() if active else None
            return log
        warnings.warn(f"{TRACKING_ENV}: unknown tracker {name!r} (use wandb and/or mlflow); skipped", stacklevel=2)
    except Exception as err:  # a tracker is a convenience: never fail the run for it
        warnings.warn(f"{TRACKING_ENV}: {name} could not start ({type(err).__name__}: {err}); skipped", stacklevel=2)
    return None
