"""Signed broker frames (common/frame_signing.py): a frame verifies under its key, for its direction,
its worker and its place in its session only; tampering, another key, a replay, an ended session and
an old frame are each refused by name; the key files are read with one-line refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import frame_signing
from common.errors import ConfigError
from common.frame_signing import TO_BOT, TO_WORKER, SignatureError, Signer, Verifier, read_key_file, read_worker_keys

KEY = b"k" * 40
OTHER = b"o" * 40
KEYS = {"box-1": (KEY,)}


def frame(signer: Signer, message: bytes = b"JobDone\n{}", key: bytes = KEY, name: str = "box-1", worker: str = "w1") -> dict[bytes, bytes]:
    return {k.encode(): v for k, v in signer.fields(name, key, worker, worker, message).items()}


def test_a_signed_frame_verifies_once_and_in_order() -> None:
    signer, verifier = Signer(TO_BOT), Verifier(TO_BOT)
    first, second = frame(signer), frame(signer)
    assert verifier.check(KEYS, "w1", first) == ("box-1", KEY)
    assert verifier.check(KEYS, "w1", second) == ("box-1", KEY)
    with pytest.raises(SignatureError, match="a replay"):
        verifier.check(KEYS, "w1", first)  # the same frame again
    with pytest.raises(SignatureError, match="a replay"):
        verifier.check(KEYS, "w1", second)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda f: f | {b"m": f[b"m"] + b" "}, "not signed with the key"),  # the frame tampered with
        (lambda f: f | {b"q": b"7"}, "not signed with the key"),  # its place changed
        (lambda f: {k: v for k, v in f.items() if k != b"s"}, "unsigned"),
        (lambda f: {b"w": f[b"w"], b"m": f[b"m"]}, "unsigned"),
        (lambda f: f | {b"k": b"box-9"}, "not among the keys here"),
        (lambda f: f | {b"t": b"1"}, "not signed with the key"),  # its time changed (signed too)
        (lambda f: f | {b"q": b"-1"}, "malformed"),
    ],
)
def test_a_changed_or_unsigned_frame_is_refused(change, reason: str) -> None:
    with pytest.raises(SignatureError, match=reason):
        Verifier(TO_BOT).check(KEYS, "w1", change(frame(Signer(TO_BOT))))


def test_another_key_direction_or_worker_does_not_verify() -> None:
    with pytest.raises(SignatureError, match="not signed with the key"):
        Verifier(TO_BOT).check(KEYS, "w1", frame(Signer(TO_BOT), key=OTHER))
    with pytest.raises(SignatureError, match="not signed with the key"):  # a bot's command reflected as an event
        Verifier(TO_BOT).check(KEYS, "w1", frame(Signer(TO_WORKER)))
    with pytest.raises(SignatureError, match="not signed with the key"):  # another worker's frame, renamed
        Verifier(TO_BOT).check(KEYS, "w2", frame(Signer(TO_BOT), worker="w1") | {b"w": b"w2"})


def test_a_worker_that_restarts_starts_a_session_and_the_old_one_ends() -> None:
    verifier, old = Verifier(TO_BOT), Signer(TO_BOT)
    early = frame(old)
    verifier.check(KEYS, "w1", frame(old))
    restarted = Signer(TO_BOT)
    assert verifier.check(KEYS, "w1", frame(restarted)) == ("box-1", KEY)  # counting from 1 again
    with pytest.raises(SignatureError, match="a session that has ended"):
        verifier.check(KEYS, "w1", early)


def test_a_worker_is_held_to_its_key_and_both_keys_verify_while_one_replaces_the_other() -> None:
    keys = {"box-1": (KEY, OTHER), "box-2": (b"2" * 40,)}
    verifier = Verifier(TO_BOT)
    assert verifier.check(keys, "w1", frame(Signer(TO_BOT), key=OTHER)) == ("box-1", OTHER)
    with pytest.raises(SignatureError, match="signs with the key 'box-1'"):  # box-2's holder speaking as w1
        verifier.check(keys, "w1", frame(Signer(TO_BOT), key=b"2" * 40, name="box-2"))


def test_an_old_frame_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    signer = Signer(TO_BOT)
    old = frame(signer)
    later = frame_signing.time.time() + frame_signing.MAX_AGE_SECONDS + 1
    monkeypatch.setattr(frame_signing.time, "time", lambda: later)
    with pytest.raises(SignatureError, match="from now"):
        Verifier(TO_BOT).check(KEYS, "w1", old)


def test_the_key_files_are_read_with_one_line_refusals(tmp_path: Path) -> None:
    bot = tmp_path / "worker-keys"
    bot.write_text(f"# machines\nbox-1 {'a' * 64}\nbox-2 {'b' * 64} {'c' * 64}  # being replaced\n\n")
    assert read_worker_keys(bot) == {"box-1": (b"a" * 64,), "box-2": (b"b" * 64, b"c" * 64)}
    worker = tmp_path / "key"
    worker.write_text(f"box-1 {'a' * 64}\n")
    assert read_key_file(worker) == ("box-1", b"a" * 64)
    cases = {
        "box-1\n": "write `NAME KEY`",
        "box-1 short\n": "at least 32 printable characters",
        f"box-1 {'a' * 64}\nbox-1 {'b' * 64}\n": "the key name box-1 is given twice",
        "# nothing\n": "names no key",
    }
    for text, message in cases.items():
        bot.write_text(text)
        with pytest.raises(ConfigError, match=message) as caught:
            read_worker_keys(bot)
        assert "\n" not in str(caught.value)
    worker.write_text(f"{'a' * 64}\n")
    with pytest.raises(ConfigError, match="one line, `NAME KEY`"):
        read_key_file(worker)
    with pytest.raises(ConfigError, match="cannot read"):
        read_key_file(tmp_path / "missing")


def test_a_bot_without_keys_says_its_frames_are_unsigned(caplog: pytest.LogCaptureFixture) -> None:
    from bot.generation.remote import BrokerClient

    BrokerClient("redis://127.0.0.1:1/0", lambda heartbeat: None, lambda sender, event: None)
    assert "frames to and from remote workers are not signed (EASEL_WORKER_KEYS is unset)" in caplog.text
    caplog.clear()
    BrokerClient("redis://127.0.0.1:1/0", lambda heartbeat: None, lambda sender, event: None, keys=KEYS)
    assert "not signed" not in caplog.text
