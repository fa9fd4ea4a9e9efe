"""Bag replay: the sample bag, reading, the two-backend replay report, regression and rate modes.

Everything runs on real data: the sample bag is generated into a temporary folder, replayed through
the real torch and ONNX Runtime backends, and its outputs are read back from the written MCAP bag.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vla_accel.core.optional import module_available
from vla_accel.bags import messages
from vla_accel.bags.compare import TOLERANCE_PROFILES, compare_chunks, tolerance_for
from vla_accel.bags.messages import BagError
from vla_accel.bags.observations import RateMode
from vla_accel.bags.reader import FRAME, BagSource
from vla_accel.bags.sample import CAMERA_TOPIC, WRIST_TOPIC, make_sample_bag
from vla_accel.bags.writer import read_action_chunks, topic_name
from vla_accel.cli import main as cli_main
from vla_accel.core.image import decode_image
from vla_accel.core.spec import ModelSpec
from vla_accel.core.types import ActionChunk
from vla_accel.errors import ImageError, VlaAccelError

SPECS = Path(__file__).resolve().parents[1] / "vla_accel" / "models" / "specs"


def _need(module: str, install: str) -> None:
    if not module_available(module):
        pytest.skip(f"missing: {module}; install with {install}")


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return make_sample_bag(tmp_path_factory.mktemp("bags") / "sample", frames=24)


@pytest.fixture(scope="module")
def two_backend_replay(sample, tmp_path_factory):
    """torch + onnxruntime over the sample bag, through the CLI, once for the module."""
    _need("torch", "pip install torch==2.13.0")
    _need("onnxruntime", "pip install onnxruntime")
    out = tmp_path_factory.mktemp("replay") / "out"
    code = cli_main(["replay", str(sample.path), "--model", "tiny", "--backends", "torch,onnxruntime",
                     "--out", str(out), "--bare-iterations", "5", "--no-progress"])
    return code, out, json.loads((out / "report.json").read_text())


# --- the sample bag and reading ------------------------------------------------------------------
def test_sample_bag_has_mixed_encodings_and_decodes_like_the_manifest_says(sample):
    spec = ModelSpec.from_yaml(SPECS / "tiny-2cam.yaml")
    with BagSource(sample.path) as source:
        selection = source.select_topics(spec)
        assert selection.cameras == {"primary": CAMERA_TOPIC, "wrist": WRIST_TOPIC}
        assert selection.instruction == "/vla/instruction" and selection.state == "/joint_states"
        encodings, shapes, rejected = set(), set(), {}
        for event in source.events(selection):
            if event.kind != FRAME:
                continue
            encodings.add(event.image.encoding)
            try:
                shapes.add(decode_image(event.image).shape)
            except ImageError as err:
                rejected[err.reason] = rejected.get(err.reason, 0) + 1
        assert dict(source.skipped) == {"undecodable_message": 1}
    assert {"rgb8", "bgr8", "mono8", "jpeg"} <= encodings
    assert (479, 641, 3) in shapes  # the odd size with row padding decodes
    assert rejected == sample.broken_frames
    assert rejected == {"truncated": 1, "unknown_encoding": 1, "corrupt_compressed": 1}


def test_sqlite3_storage_and_bare_mcap_file_read_the_same(tmp_path, sample):
    other = make_sample_bag(tmp_path / "sample_db3", frames=6, storage="sqlite3", broken=False)
    spec = ModelSpec.from_yaml(SPECS / "tiny.yaml")
    with BagSource(other.path) as source:
        events = list(source.events(source.select_topics(spec)))
    assert sum(e.kind == FRAME for e in events) == 6
    mcap_file = next(sample.path.glob("*.mcap"))  # a bare .mcap file (no metadata.yaml) opens too
    with BagSource(mcap_file) as source:
        assert source.select_topics(spec).cameras == {"primary": CAMERA_TOPIC}


def _serialised_images(bag_path):
    """(type name, serialised CDR bytes) of every image message of a bag, read through rosbags."""
    from vla_accel.bags.reader import open_reader

    reader = open_reader(bag_path)
    try:
        wanted = [c for c in reader.connections if c.msgtype in messages.IMAGE_TYPES]
        return [(c.msgtype, bytes(raw)) for c, _log_ns, raw in reader.messages(connections=wanted)]
    finally:
        reader.close()


def _assert_same_frame(fields, msg, typename):
    from vla_accel.bags.reader import raw_image_from_message

    expected = raw_image_from_message(msg, typename)
    assert fields.stamp_ns == messages.stamp_to_ns(msg.header.stamp)
    assert fields.frame_id == msg.header.frame_id
    for name in ("encoding", "height", "width", "step", "is_bigendian"):
        assert getattr(fields.image, name) == getattr(expected, name), name
    assert bytes(fields.image.data) == bytes(expected.data)


def test_zero_copy_cdr_parser_agrees_with_rosbags(sample):
    from rosbags.serde import SerdeError

    from vla_accel.bags import cdr

    store = messages.typestore()
    parse = {messages.IMAGE: cdr.parse_image, messages.COMPRESSED_IMAGE: cdr.parse_compressed_image}
    images = _serialised_images(sample.path)
    assert {t for t, _ in images} == set(messages.IMAGE_TYPES)
    checked = 0
    for typename, raw in images:
        try:
            msg = store.deserialize_cdr(raw, typename)
        except SerdeError:  # the sample's cut message: the parser must refuse it too
            with pytest.raises(ValueError):
                parse[typename](raw)
            continue
        fields = parse[typename](raw)
        _assert_same_frame(fields, msg, typename)
        # a view of the message buffer, not a copy
        assert isinstance(fields.image.data, memoryview) and fields.image.data.obj is raw
        big_endian = store.serialize_cdr(msg, typename, little_endian=False)
        _assert_same_frame(parse[typename](big_endian), msg, typename)
        checked += 1
    assert checked >= 4 * sample.counts[CAMERA_TOPIC] // 5

    typename, raw = next((t, r) for t, r in images if t == messages.IMAGE)
    msg = store.deserialize_cdr(raw, typename)
    for cut in (0, 3, 4, 9, 20, 40, len(raw) // 2, len(raw) - 1):
        with pytest.raises(ValueError):
            cdr.parse_image(raw[:cut])
    assert len(raw) % 4 == 0  # CDR pads to 4 bytes: up to 3 more are accepted, like rosbags does
    _assert_same_frame(cdr.parse_image(raw + b"\0" * 3), msg, typename)
    for extra in (b"\0" * 4, b"\0" * 64):
        with pytest.raises(SerdeError):
            store.deserialize_cdr(raw + extra, typename)
        with pytest.raises(ValueError, match="after the last field"):
            cdr.parse_image(raw + extra)
    with pytest.raises(ValueError, match="encapsulation"):
        cdr.parse_image(b"\x00\x07\x00\x00" + raw[4:])


def test_zero_copy_mcap_reader_yields_what_rosbags_yields(sample, tmp_path):
    from vla_accel.bags.mcap import McapMessages

    spec = ModelSpec.from_yaml(SPECS / "tiny-2cam.yaml")
    mcap_file = next(sample.path.glob("*.mcap"))
    for path in (sample.path, mcap_file):
        with BagSource(path) as source:
            assert source._mcap is not None  # the fast path is the one in use for MCAP bags
            selection = source.select_topics(spec)
            selection.types.update(source.topics)  # every topic, not only the selected ones
            fast = [(topic, log_ns, bytes(data)) for topic, log_ns, data in source._raw_messages(selection)]
            source._mcap.close()
            source._mcap = None  # the same bag through rosbags' reader
            slow = [(topic, int(log_ns), bytes(data)) for topic, log_ns, data in source._raw_messages(selection)]
        assert len(fast) == sum(sample.counts.values()) and fast == slow
    # what it does not handle goes to rosbags: sqlite3 bags, files without an MCAP summary
    other = make_sample_bag(tmp_path / "sample_db3", frames=2, storage="sqlite3", broken=False)
    with BagSource(other.path) as source:
        assert source._mcap is None
    (tmp_path / "not.mcap").write_bytes(b"\x89MCAP0\r\n" + b"\0" * 64)
    assert McapMessages.open(tmp_path / "not.mcap") is None
    # a broken record inside a chunk is a clear BagError, not a crash deep in the reader
    broken = tmp_path / "broken.mcap"
    data = bytearray(mcap_file.read_bytes())
    with McapMessages.open(mcap_file) as reader:
        first = reader.chunks[0].offset
    record = first + 9 + 28 + 4 + 8  # chunk header: times, size, crc, compression "", records length
    while data[record] != 0x05:  # skip the schema / channel records to the first message
        record += 9 + int.from_bytes(data[record + 1:record + 9], "little")
    data[record + 1:record + 9] = (1 << 40).to_bytes(8, "little")
    broken.write_bytes(bytes(data))
    with BagSource(broken) as source:
        with pytest.raises(BagError, match="runs past") as err:
            list(source.events(source.select_topics(spec)))
    assert err.value.reason == "corrupt_bag"


def test_topic_selection_errors_name_what_exists(sample, tmp_path):
    spec = ModelSpec.from_yaml(SPECS / "tiny.yaml")
    with BagSource(sample.path) as source:
        with pytest.raises(BagError, match="/camera/image_raw") as err:
            source.select_topics(spec, camera_topics=["/nope"])
        assert err.value.reason == "missing_topic"
        with pytest.raises(BagError, match="no camera 'left'"):
            source.select_topics(spec, camera_topics=["left=/camera/image_raw"])
        chosen = source.select_topics(spec, camera_topics=[f"primary={WRIST_TOPIC}"])
        assert chosen.cameras == {"primary": WRIST_TOPIC}
    with pytest.raises(BagError, match="bag not found"):
        BagSource(tmp_path / "missing")
    (tmp_path / "junk.txt").write_text("not a bag")
    with pytest.raises(BagError, match="cannot open"):
        BagSource(tmp_path / "junk.txt")


def test_make_sample_refuses_to_overwrite(sample):
    with pytest.raises(BagError, match="exists already"):
        make_sample_bag(sample.path)


def test_rate_mode_parsing():
    assert RateMode.parse("every").kind == "every"
    assert RateMode.parse("rate:5").hz == 5.0
    assert str(RateMode.parse("live")) == "live"
    for bad in ("rate:0", "rate:x", "fast"):
        with pytest.raises(VlaAccelError, match="--rate-mode"):
            RateMode.parse(bad)


# --- comparison -------------------------------------------------------------------------------------
def _chunk(stamp: int, values) -> ActionChunk:
    return ActionChunk(stamp, 0.1, ("x", "y"), np.asarray(values, np.float32), "eef_delta")


def test_compare_finds_worst_chunk_step_and_dimension():
    ref = [_chunk(1, [[0, 0], [0, 0]]), _chunk(2, [[1, 1], [1, 1]]), _chunk(3, [[0, 0], [0, 0]])]
    cand = [_chunk(1, [[0, 0], [0, 0.01]]), _chunk(2, [[1, 1], [1.5, 1]]), _chunk(4, [[0, 0], [0, 0]])]
    dev = compare_chunks(cand, ref)
    assert dev.max_abs == pytest.approx(0.5)
    assert (dev.stamp_ns, dev.step, dev.dim, dev.dim_name) == (2, 1, 0, "x")
    assert dev.missing == [3] and dev.extra == [4] and dev.matched == 2
    nan = compare_chunks([_chunk(1, [[np.nan, 0], [0, 0]])], ref[:1])
    assert nan.max_abs == np.inf  # NaN is an infinite deviation, never ignored
    assert tolerance_for("fp32", None) == TOLERANCE_PROFILES["fp32"] == 1e-4
    assert tolerance_for(None, 0.5) == 0.5


# --- replay -----------------------------------------------------------------------------------------
def test_two_backend_replay_report(two_backend_replay, sample):
    code, out, report = two_backend_replay
    assert code == 0
    rows = {row["backend"]: row for row in report["backends"]}
    assert set(rows) == {"torch", "onnxruntime"}
    frames = sample.counts[CAMERA_TOPIC] - sample.broken_messages["undecodable_message"]
    expected_chunks = frames - sum(v for k, v in sample.broken_frames.items() if k != "corrupt_compressed")
    for row in rows.values():
        # broken frames are skipped and counted by reason, never fatal
        assert row["dropped"] == {"truncated": 1, "unknown_encoding": 1}
        assert row["chunks"] == expected_chunks == row["infer_ms"]["count"]
        assert row["speedup"] > 0 and row["bare_infer_ms"]["mean"] > 0
        assert row["overhead_pct"] is not None
        # bare and replay measured interleaved, in three rounds; the table shows the median one
        rounds = row["timing_rounds"]
        assert len(rounds) == 3 and all(r["chunks"] == expected_chunks for r in rounds)
        assert all(r["bare_ms"] > 0 and r["replay_ms"] > r["infer_ms"] > 0 for r in rounds)
        assert row["overhead_pct"] == sorted(r["overhead_pct"] for r in rounds)[1]
        assert row["replay_ms_per_chunk"] in [r["replay_ms"] for r in rounds]
    assert rows["torch"]["speedup"] == pytest.approx(1.0)
    assert report["skipped"] == {"empty_instruction": 1, "undecodable_message": 1}
    dev = report["deviation"]["onnxruntime"]
    assert dev["matched"] == expected_chunks and dev["missing"] == 0 and dev["extra"] == 0
    assert 0 <= dev["max_abs"] < TOLERANCE_PROFILES["fp32"]
    text = (out / "report.md").read_text()
    assert "max abs" in text and "on top of bare" in text and "speedup" in text
    assert "<table>" in (out / "report.html").read_text()
    for png in ("actions.png", "latency.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_output_bag_holds_chunks_with_source_stamps_and_stats(two_backend_replay, sample):
    _, out, _ = two_backend_replay
    chunks = read_action_chunks(out / "actions")
    torch_topic = topic_name("torch", "action_chunk")
    assert set(chunks) == {torch_topic, topic_name("onnxruntime", "action_chunk")}
    with BagSource(sample.path) as source:
        spec = ModelSpec.from_yaml(SPECS / "tiny.yaml")
        frame_stamps = {e.stamp_ns for e in source.events(source.select_topics(spec)) if e.kind == FRAME}
    first = chunks[torch_topic][0]
    assert first.values.shape == (10, 7) and first.names[-1] == "gripper" and first.backend == "torch"
    assert {c.stamp_ns for c in chunks[torch_topic]} <= frame_stamps
    store = messages.typestore()
    from vla_accel.bags.reader import open_reader

    reader = open_reader(out / "actions")
    try:
        stats_conn = [c for c in reader.connections if c.msgtype == messages.INFERENCE_STATS]
        assert {c.topic for c in stats_conn} == {topic_name("torch", "stats"), topic_name("onnxruntime", "stats")}
        # the bag is self-describing: the real .msg definition is embedded
        assert "float32[] values" in next(c for c in reader.connections if c.topic == torch_topic).msgdef.data
        last = None
        for _, _, raw in reader.messages(connections=stats_conn):
            last = store.deserialize_cdr(raw, messages.INFERENCE_STATS)
        assert last.frames_processed > 0 and last.latency_p50_ms > 0
    finally:
        reader.close()


def test_regression_passes_within_tolerance_and_fails_on_drift(two_backend_replay, sample, capsys):
    _, out, _ = two_backend_replay
    golden = str(out / "actions")
    common = [str(sample.path), "--model", "tiny", "--backends", "onnxruntime", "--golden", golden,
              "--golden-topic", topic_name("torch", "action_chunk"), "--no-progress",
              "--bare-iterations", "2"]
    # onnxruntime against the torch golden: within the fp32 profile (plotted with the golden run)...
    assert cli_main(["replay", *common, "--out", str(out.parent / "reg_pass"), "--tolerance-profile", "fp32"]) == 0
    assert module_available("matplotlib") <= (out.parent / "reg_pass" / "actions.png").is_file()
    capsys.readouterr()
    common.append("--no-plots")
    # ...but not within a tolerance tighter than the real torch/ORT difference (it is > 0 here)
    report = json.loads((out / "report.json").read_text())
    if report["deviation"]["onnxruntime"]["max_abs"] == 0:
        pytest.skip("torch and onnxruntime agree bit for bit on this machine: no drift to detect")
    code = cli_main(["replay", *common, "--out", str(out.parent / "reg_fail"), "--atol", "1e-12"])
    err = capsys.readouterr().err
    assert code == 3
    assert "[FAIL]" in err and "drift" in err and "dimension" in err


def test_regression_fails_on_other_weights_and_on_missing_chunks(two_backend_replay, sample, tmp_path, capsys):
    _, out, _ = two_backend_replay
    golden = str(out / "actions")
    # the same network with another seed: real, different weights
    spec = ModelSpec.from_yaml(SPECS / "tiny.yaml").to_dict()
    spec["architecture"]["seed"] = 4321
    spec["name"] = "tiny-seed4321"
    other = tmp_path / "tiny_seed4321.yaml"
    import yaml

    other.write_text(yaml.safe_dump(spec))
    base = [str(sample.path), "--backends", "torch", "--golden", golden, "--no-plots", "--no-progress",
            "--bare-iterations", "2", "--tolerance-profile", "int8"]
    assert cli_main(["replay", *base, "--model", str(other), "--out", str(tmp_path / "seed")]) == 3
    assert "drift" in capsys.readouterr().err
    # every other frame only: chunks missing from the replay fail the regression even within tolerance
    assert cli_main(["replay", *base, "--model", "tiny", "--rate-mode", "rate:5", "--out", str(tmp_path / "rate")]) == 3
    err = capsys.readouterr().err
    assert "missing chunks" in err and "drift" not in err


def test_live_rate_mode_accounts_for_every_frame(sample, tmp_path):
    _need("onnxruntime", "pip install onnxruntime")
    from vla_accel.bags.replay import ReplayOptions, replay_runtime, run_replay

    options = ReplayOptions(runtime=replay_runtime(model="tiny"), backends=("onnxruntime",), rate=RateMode.parse("live"),
                            live_speed=4.0, bare_iterations=2, progress=False)
    result = run_replay(sample.path, options, tmp_path / "live")
    run = result.runs[0]
    assert run.ok, run.error
    # every frame became a chunk or a counted drop (superseded frames included)
    snap = run.snapshot
    assert snap["frames_received"] == snap["frames_processed"] + snap["frames_dropped"] == 23
    assert len(run.chunks) == snap["frames_processed"] > 0
    assert run.dropped.get("truncated") == 1 and run.dropped.get("unknown_encoding") == 1


def test_compressed_camera_topic_replays_and_counts_the_corrupt_jpeg(sample):
    _need("onnxruntime", "pip install onnxruntime")
    from vla_accel.bags.replay import ReplayOptions, replay_runtime, run_replay

    options = ReplayOptions(runtime=replay_runtime(model="tiny"), backends=("onnxruntime",), camera_topics=(WRIST_TOPIC,),
                            bare_iterations=2, progress=False)
    run = run_replay(sample.path, options).runs[0]
    assert run.ok, run.error
    assert run.dropped == {"corrupt_compressed": 1}
    assert len(run.chunks) == sample.counts[WRIST_TOPIC] - 1
    snap = run.snapshot
    assert snap["frames_received"] == snap["frames_processed"] + snap["frames_dropped"]


def test_read_ahead_gives_the_same_chunks_drops_and_decode_counts_as_in_turn(sample):
    """The reader thread (observations and JPEG decodes made ahead) changes when work is done, never
    what comes out: the same chunks bit for bit, the same drops (the corrupt JPEG is still rejected by
    the preprocessor with its reason) and the same decode paths, for the JPEG camera."""
    _need("onnxruntime", "pip install onnxruntime")
    from vla_accel.bags.replay import ReplayOptions, replay_runtime, run_replay

    runs = {}
    for depth in (0, 3):
        options = ReplayOptions(runtime=replay_runtime(model="tiny", threads=1), backends=("onnxruntime",),
                                camera_topics=(WRIST_TOPIC,), bare_iterations=1, timing_rounds=1, progress=False,
                                read_ahead=depth)
        runs[depth] = run_replay(sample.path, options).runs[0]
        assert runs[depth].ok, runs[depth].error
    in_turn, ahead = runs[0], runs[3]
    assert ahead.dropped == in_turn.dropped == {"corrupt_compressed": 1}
    assert ahead.decode_paths == in_turn.decode_paths and sum(ahead.decode_paths.values()) > 0
    assert [c.stamp_ns for c in ahead.chunks] == [c.stamp_ns for c in in_turn.chunks]
    for a, b in zip(ahead.chunks, in_turn.chunks):
        assert np.array_equal(a.values, b.values)


def test_read_ahead_raises_a_reader_error_in_order_and_stops_its_thread():
    from vla_accel.bags.observations import TimedObservation
    from vla_accel.bags.replay import ReadAhead
    from vla_accel.core.types import Observation

    def source():
        for i in range(3):
            yield TimedObservation(Observation(images={}, instruction="x", stamp_ns=i), log_ns=i)
        raise OSError("bag truncated")

    seen = []
    with pytest.raises(OSError, match="bag truncated"):
        with ReadAhead(source(), lambda obs: obs, 2) as ahead:
            for timed in ahead:
                seen.append(timed.log_ns)
    assert seen == [0, 1, 2]
    # a consumer that stops early does not leave the reader blocked on a full queue
    endless = (TimedObservation(Observation(images={}, instruction="x", stamp_ns=i), log_ns=i) for i in range(10**9))
    with ReadAhead(endless, lambda obs: obs, 2) as ahead:
        first = next(iter(ahead))
    assert first.log_ns == 0 and not ahead._thread.is_alive()  # noqa: SLF001


def test_unavailable_backend_is_reported_not_fatal(sample, tmp_path, capsys):
    _need("onnxruntime", "pip install onnxruntime")
    code = cli_main(["replay", str(sample.path), "--backends", "onnxruntime,tensorrt", "--no-plots",
                     "--no-progress", "--bare-iterations", "2", "--out", str(tmp_path / "o")])
    assert code == 1
    assert "backend tensorrt did not run" in capsys.readouterr().err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert [r.get("backend") for r in report["backends"]] == ["onnxruntime", None]
    assert "tensorrt" in report["backends"][1]["error"]


def test_cli_errors_are_clear(tmp_path, capsys):
    assert cli_main(["replay", str(tmp_path / "nope")]) == 1
    assert "bag not found" in capsys.readouterr().err
    assert cli_main(["replay", "--make-sample", str(tmp_path / "s"), "--sample-frames", "3"]) == 0
    assert "sample bag written" in capsys.readouterr().out
    assert cli_main(["replay", str(tmp_path / "s"), "--rate-mode", "fast"]) == 1
    assert "--rate-mode" in capsys.readouterr().err


def test_replay_that_produces_no_chunk_fails_with_the_reason(tmp_path, capsys):
    """A bag without joint states through a model that needs them: exit 1 naming missing_state,
    not a report of zeros with exit 0."""
    _need("torch", "pip install torch==2.13.0")
    bag = make_sample_bag(tmp_path / "nostate", frames=6, broken=False, joint_states=False)
    code = cli_main(["replay", str(bag.path), "--model", "tiny", "--backends", "torch", "--out",
                     str(tmp_path / "out"), "--bare-iterations", "2", "--timing-rounds", "1", "--no-progress", "--no-plots"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "produced no action chunk" in err and "state" in err, err
    # The same bag through the camera + instruction model works.
    code = cli_main(["replay", str(bag.path), "--model", "tiny-vision", "--backends", "torch", "--out",
                     str(tmp_path / "out2"), "--bare-iterations", "2", "--timing-rounds", "1", "--no-progress", "--no-plots"])
    assert code == 0, capsys.readouterr().err


def test_plot_lines_break_where_frames_are_missing():
    from vla_accel.bags.report import with_gaps

    times, values = with_gaps([0.0, 0.1, 0.2, 0.4, 0.5], [1, 2, 3, 4, 5])
    assert times == [0.0, 0.1, 0.2, pytest.approx(0.3), 0.4, 0.5]
    assert np.isnan(values[3]) and values[:3] == [1, 2, 3] and values[4:] == [4, 5]
    assert with_gaps([0.0, 0.1, 0.2, 0.3], [1, 2, 3, 4]) == ([0.0, 0.1, 0.2, 0.3], [1, 2, 3, 4])


def test_the_unused_image_topic_is_named(sample, caplog):
    """The sample bag has two image topics; a one-camera model uses one and names the other."""
    spec = ModelSpec.from_yaml(SPECS / "tiny-vision.yaml")
    with caplog.at_level("WARNING", logger="vla_accel.bags.reader"), BagSource(sample.path) as source:
        selection = source.select_topics(spec)
    assert selection.cameras == {"primary": CAMERA_TOPIC} and selection.unused_images == (WRIST_TOPIC,)
    assert WRIST_TOPIC in caplog.text and "--camera-topic" in caplog.text


def test_replay_runs_with_the_runtime_config():
    """Model, precision, threads and batch size of a replay are one RuntimeConfig, checked like the node's."""
    from vla_accel.backends.base import BackendOptions
    from vla_accel.bags.replay import ReplayOptions, replay_runtime
    from vla_accel.runtime.config import RuntimeConfig

    options = ReplayOptions(runtime=replay_runtime(model="tiny", precision="fp16", threads=2, batch_size=4))
    assert isinstance(options.runtime, RuntimeConfig)
    assert (options.model, options.precision, options.threads, options.batch_size) == ("tiny", "fp16", 2, 4)
    backend = options.backend_options()
    assert isinstance(backend, BackendOptions)
    assert (backend.precision, backend.threads, backend.max_batch) == ("fp16", 2, 4)
    assert options.backend_options("int8").precision == "int8"  # a NAME:PRECISION suffix wins
    with pytest.raises(VlaAccelError, match="precision"):
        replay_runtime(precision="fp7")
    with pytest.raises(VlaAccelError, match="batch_size"):
        replay_runtime(batch_size=0)
