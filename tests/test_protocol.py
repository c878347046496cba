"""The bot and its workers talk in JSON frames, never pickles: every message round-trips, nothing else passes."""

from __future__ import annotations

import os
import pickle

import pytest

from common.protocol import (
    MAX_FRAME_BYTES,
    MESSAGES,
    BadFrame,
    BatchFailed,
    BatchFinished,
    BatchLoading,
    BatchProgress,
    CancelJob,
    ImageResult,
    JobCancelled,
    JobDone,
    JobPart,
    JobPreview,
    LoadRequest,
    RunBatch,
    Shutdown,
    WorkerHeartbeat,
    WorkerReady,
    broker_entry,
    decode,
    encode,
    read_broker_entry,
)

LOAD = LoadRequest("/m/x.safetensors", "x", "sd1", "SD1.x", "safetensors", "sd1", "epsilon", "ab" * 32)
SAMPLES = [
    RunBatch.of("b1", LOAD, (JobPart("j1", "a cat", "", (1, 2)),), 64, 64, 4, clip_skip=2, model_name="x", preview_every=1),
    CancelJob("j1"),
    Shutdown(),
    WorkerReady("cpu", 123, "2.13.0", "float32"),
    BatchLoading("b1", "x", "disk"),
    BatchProgress("b1", 2, 4, 0.5, 3.9),
    JobPreview("b1", "j1", 2, b"\x89PNG\r\n\x1a\n\x00\xff"),
    JobDone("b1", "j1", (ImageResult(b"\x89PNG\x00", 1, "a cat\nSteps: 4"),), "cpu", 0.1, 0.2, "disk", 1),
    JobCancelled("b1", "j1"),
    BatchFailed("b1", "out of memory", ("j1",)),
    BatchFinished("b1", ("key",), 3.5, 8 << 30, 4 << 30, ("fp8 weights + model offload",)),
    WorkerHeartbeat(
        "host-cpu-1", "host", "cpu", 7, 1.0, 8 << 30, 4 << 30, ("sd1",), 0, ("ab" * 32,), ("key",), ("b1",), 2.0, 3.0, ("whole",)
    ),
]


def test_every_message_type_has_a_sample() -> None:
    assert {type(m).__name__ for m in SAMPLES} == set(MESSAGES)


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message: object) -> None:
    frame = encode(message)
    assert b"\x80" not in frame.partition(b"\n")[2][:1]  # JSON, not a pickle
    assert decode(frame) == message


def test_a_pickle_is_refused_and_never_run(tmp_path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    for frame in (pickle.dumps(Payload()), b"JobDone\n" + pickle.dumps(Payload()), b"Nope\n{}", b"JobDone\n{"):
        with pytest.raises(BadFrame):
            decode(frame)
    assert not marker.exists()


def test_fields_are_checked_on_the_way_in() -> None:
    with pytest.raises(BadFrame, match="malformed BatchProgress"):
        decode(b'BatchProgress\n{"batch_id": "b", "step": "two", "total": 4, "elapsed": 0, "it_per_s": 0}')


def test_broker_entries_are_a_sender_and_one_frame() -> None:
    """On Redis Streams a message is the entry {w: sender, m: frame}; anything else is refused."""
    entry = {key.encode(): value for key, value in broker_entry("host-cpu-1", CancelJob("j1")).items()}  # as read back
    assert read_broker_entry(entry) == ("host-cpu-1", CancelJob("j1"))
    frame = encode(CancelJob("j1"))
    for fields in (
        {b"m": frame},  # no sender
        {b"w": b"x", b"m": frame, b"extra": b"1"},
        {b"w": b"", b"m": frame},
        {b"w": b"x" * 201, b"m": frame},
        {b"w": b"x", b"m": pickle.dumps(CancelJob("j1"))},
        {b"w": b"x", b"m": b"CancelJob\n" + b" " * (MAX_FRAME_BYTES + 1)},
    ):
        with pytest.raises(BadFrame):
            read_broker_entry(fields)


@pytest.mark.parametrize(
    ("kind", "size", "refused"),
    [
        ("WorkerHeartbeat", 60 << 20, True),  # three of these held the bot's loop for a second
        ("WorkerHeartbeat", (4 << 20) + 1, True),
        ("BatchProgress", (64 << 10) + 1, True),
        ("JobPreview", (16 << 20) + 1, True),
        ("JobDone", 20 << 20, False),  # pictures: refused only past the frame limit
    ],
)
def test_each_message_is_refused_past_its_size_before_it_is_parsed(kind: str, size: int, refused: bool) -> None:
    frame = kind.encode() + b"\n" + b"[" * (size - len(kind) - 1)  # never valid JSON: parsing would say "malformed"
    with pytest.raises(BadFrame, match="at most" if refused else "malformed"):
        read_broker_entry({b"w": b"worker-1", b"m": frame})
