"""Latest-frame slots, multi-stream batch taking and the adaptive batch sizer (no engine needed)."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from vla_accel.core.scheduling import AdaptiveBatchSizer, LatestFrameSlot, MultiStreamSlots
from vla_accel.core.types import Observation
from vla_accel.errors import InputError


def obs(stamp: int, stream: str = "default", received_ns: int = 0) -> Observation:
    return Observation(images={}, instruction="pick", stamp_ns=stamp, stream=stream, received_ns=received_ns)


def test_put_replaces_an_unstarted_frame_and_counts_it():
    superseded = []
    slot = LatestFrameSlot(on_superseded=superseded.append)
    assert slot.put(obs(1)) is None
    replaced = slot.put(obs(2))
    assert replaced is not None and replaced.stamp_ns == 1
    slot.put(obs(3))
    assert [o.stamp_ns for o in superseded] == [1, 2]
    assert slot.frames_superseded == 2 and slot.frames_put == 3
    assert slot.take(timeout=0).stamp_ns == 3  # the newest
    assert slot.take(timeout=0) is None  # nothing queued behind it


def test_no_backlog_builds_whatever_the_input_rate():
    slot = LatestFrameSlot()
    for i in range(10_000):
        slot.put(obs(i))
    assert slot.take(timeout=0).stamp_ns == 9_999
    assert slot.frames_superseded == 9_999 and not slot.ready


def test_take_waits_for_a_frame_and_close_wakes_waiters():
    slot = LatestFrameSlot()
    got = []
    waiter = threading.Thread(target=lambda: got.append(slot.take(timeout=5.0)))
    waiter.start()
    time.sleep(0.05)
    slot.put(obs(7))
    waiter.join(2.0)
    assert not waiter.is_alive() and got[0].stamp_ns == 7
    blocked = threading.Thread(target=lambda: got.append(slot.take()))  # no timeout at all
    blocked.start()
    slot.close()
    blocked.join(2.0)
    assert not blocked.is_alive() and got[1] is None
    assert slot.take(timeout=0.01) is None


def test_concurrent_producers_never_lose_count():
    superseded = []
    lock = threading.Lock()

    def count(o):
        with lock:
            superseded.append(o)

    slot = LatestFrameSlot(on_superseded=count)
    taken = []
    stop = threading.Event()

    def consumer():
        while not stop.is_set():
            frame = slot.take(timeout=0.01)
            if frame is not None:
                taken.append(frame)

    producers = [threading.Thread(target=lambda k=k: [slot.put(obs(k * 1000 + i)) for i in range(500)]) for k in range(3)]
    reader = threading.Thread(target=consumer)
    reader.start()
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    time.sleep(0.05)
    stop.set()
    reader.join(2.0)
    leftover = slot.take_nowait()
    total = len(taken) + len(superseded) + (leftover is not None)
    assert total == 1500  # every frame was either taken or counted as superseded


def test_take_batch_groups_one_frame_per_stream_oldest_first():
    slots = MultiStreamSlots()
    now = time.monotonic_ns()
    slots.put(obs(1, "robot_b", received_ns=now - 3_000_000))
    slots.put(obs(2, "robot_a", received_ns=now - 5_000_000))
    slots.put(obs(3, "robot_c", received_ns=now - 1_000_000))
    slots.put(obs(4, "robot_a", received_ns=now - 500_000))  # supersedes robot_a's stamp 2
    batch = slots.take_batch(max_size=2, timeout=0)
    assert [(o.stream, o.stamp_ns) for o in batch] == [("robot_b", 1), ("robot_c", 3)]
    assert [(o.stream, o.stamp_ns) for o in slots.take_batch(8, timeout=0)] == [("robot_a", 4)]
    assert slots.take_batch(8, timeout=0) == []


def test_take_batch_waits_for_more_streams_only_within_the_delay():
    slots = MultiStreamSlots()
    for name in ("cam0", "cam1", "cam2"):
        slots.slot(name)
    slots.put(obs(1, "cam0"))
    threading.Timer(0.03, lambda: slots.put(obs(2, "cam1"))).start()
    batch = slots.take_batch(max_size=3, max_delay_s=1.0, timeout=1.0)
    # cam1 came within the delay and joined; cam2 never came, so the batch left when the delay ran out.
    assert sorted(o.stream for o in batch) == ["cam0", "cam1"]
    # With every known stream ready there is nothing to wait for, however long the delay.
    slots.put(obs(3, "cam0"))
    slots.put(obs(4, "cam1"))
    slots.put(obs(5, "cam2"))
    started = time.monotonic()
    assert len(slots.take_batch(max_size=8, max_delay_s=30.0, timeout=1.0)) == 3
    assert time.monotonic() - started < 10.0  # did not sit out the 30 s delay


def test_take_batch_does_not_wait_for_a_frame_older_than_the_delay():
    slots = MultiStreamSlots()
    slots.slot("cam1")
    slots.put(obs(1, "cam0", received_ns=time.monotonic_ns() - 2_000_000_000))  # already 2 s old
    started = time.monotonic()
    assert len(slots.take_batch(max_size=2, max_delay_s=1.0, timeout=1.0)) == 1
    assert time.monotonic() - started < 0.9


def test_too_many_streams_is_a_clear_error():
    slots = MultiStreamSlots(max_streams=2)
    slots.put(obs(1, "a"))
    slots.put(obs(2, "b"))
    with pytest.raises(InputError) as err:
        slots.put(obs(3, "c"))
    assert err.value.reason == "too_many_streams"


def synthetic_latency_ms(batch: int, rng: np.random.Generator) -> float:
    return 4.0 + 3.0 * batch + rng.normal(0.0, 0.3)  # meets 20 ms up to batch 5 (19 ms); 6 is 22 ms


def test_adaptive_batch_converges_on_the_largest_size_that_meets_the_target():
    rng = np.random.default_rng(0)
    sizer = AdaptiveBatchSizer(max_batch=16, target_latency_ms=20.0, explore_every=8)
    chosen = []
    for _ in range(400):
        size = sizer.limit
        chosen.append(size)
        sizer.observe(size, synthetic_latency_ms(size, rng))
    tail = chosen[-200:]
    assert max(set(tail), key=tail.count) == 5
    assert tail.count(5) / len(tail) >= 0.8  # explorations to 6 are brief
    assert max(tail) <= 6  # and it never overshoots further
    assert sizer.backoffs >= 1 and sizer.explorations >= 1


def test_adaptive_batch_backs_off_when_the_load_gets_heavier_and_recovers():
    rng = np.random.default_rng(1)
    sizer = AdaptiveBatchSizer(max_batch=16, target_latency_ms=20.0, explore_every=4)
    for _ in range(200):
        sizer.observe(sizer.limit, synthetic_latency_ms(sizer.limit, rng))
    assert sizer.limit in (5, 6)
    for _ in range(100):  # everything now takes twice as long: only batch 1 and 2 meet 20 ms
        sizer.observe(sizer.limit, 2 * synthetic_latency_ms(sizer.limit, rng))
    assert sizer.limit <= 3
    for _ in range(400):  # and back to normal: it explores its way up again
        sizer.observe(sizer.limit, synthetic_latency_ms(sizer.limit, rng))
    assert sizer.limit in (5, 6)


def test_adaptive_batch_rejects_bad_parameters():
    with pytest.raises(ValueError, match="target_latency_ms"):
        AdaptiveBatchSizer(8, 0.0)
    with pytest.raises(ValueError, match="max_batch"):
        AdaptiveBatchSizer(0, 10.0)
