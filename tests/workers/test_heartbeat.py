"""The heartbeat thread: beats until stopped, stops itself on False, outlives a failing beat."""

import threading
import time

from workers.heartbeat import Heartbeat


def test_beats_until_the_block_ends() -> None:
    beats: list[float] = []
    with Heartbeat(lambda: beats.append(time.monotonic()), 0.01, name="t", failure="failed") as heartbeat:
        time.sleep(0.2)
    count = len(beats)
    assert count >= 3
    assert not heartbeat.thread.is_alive()
    time.sleep(0.05)
    assert len(beats) == count  # none after the end


def test_a_beat_returning_false_ends_the_beats() -> None:
    calls = []

    def beat() -> bool:
        calls.append(1)
        return len(calls) < 2

    heartbeat = Heartbeat(beat, 0.01, name="t", failure="beat failed").start()
    heartbeat.thread.join(timeout=5)
    assert not heartbeat.thread.is_alive() and len(calls) == 2
    heartbeat.stop()


def test_a_failing_beat_is_logged_and_the_beats_go_on(caplog) -> None:
    calls = []
    done = threading.Event()

    def beat() -> None:
        calls.append(1)
        if len(calls) >= 3:
            done.set()
        raise RuntimeError("database away")

    with Heartbeat(beat, 0.01, name="t", failure="could not beat"):
        assert done.wait(5)
    assert "could not beat" in caplog.text
