"""The frame loop, regions and the detector: Guard.run on JPEG frames at a DCT scale, YOLO output layouts."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_guard import Guard, jpeg
from edge_guard.detector import Detector, decode_output, letterbox
from edge_guard.errors import BundleError
from edge_guard.regions import Regions, center_square, clip_box
from edge_guard.sources.base import StreamSource
from edge_guard.sources.frame import Frame
from edge_guard.stream import StreamStats, run_stream
from tests.onnx_fixtures import IR_VERSION, OPSET, channel_weights, make_bundle, solid

RED, GREEN, BLUE = (220, 20, 20), (20, 220, 20), (20, 20, 220)


@pytest.fixture(scope="module")
def guard(tmp_path_factory):
    return Guard.from_bundle(make_bundle(tmp_path_factory.mktemp("b")), threads=1)


def _jpeg_frames(images):
    frames = [Frame(i, "cam", float(i), jpeg=jpeg.encode(img, 92)) for i, img in enumerate(images)]
    return StreamSource("cam", lambda: iter(frames))


def test_embedding_loop_on_jpeg_frames_decodes_at_a_dct_scale(guard):
    frame = np.zeros((256, 512, 3), np.uint8)
    frame[:, :256] = RED
    frame[:, 256:] = BLUE  # two 256 px signs: at 1/8 scale each box is still 32 px, >= the 8 px input
    results = list(guard.run(_jpeg_frames([frame, frame]), rois=[(0, 0, 256, 256), (256, 0, 512, 256)]))
    assert len(results) == 2
    for r in results:
        assert r.decode_scale == 8
        assert [(x.box, x.class_name) for x in r.regions] == [((0, 0, 256, 256), "red"), ((256, 0, 512, 256), "blue")]
        assert r.timings_ms["decode"] > 0 and r.timings_ms["total"] >= r.timings_ms["decode"]


def test_disagreeing_members_flag_the_region_suspect(tmp_path):
    w = channel_weights()
    members = [{"name": f"m{i}", "vaccination": "none", "quality": None, "weight": np.roll(w, i, axis=1)}
               for i in range(3)]  # each member reads another channel as class 0
    guard = Guard.from_bundle(make_bundle(tmp_path / "b", members), threads=1)
    (result,) = guard.run(_jpeg_frames([solid(RED, 32, 32)]))
    (region,) = result.regions
    assert region.agreement == pytest.approx(1 / 3) and region.suspect
    (calm,) = guard.run(_jpeg_frames([solid(RED, 32, 32)]), suspect_below=0.3)
    assert not calm.regions[0].suspect


def test_frames_that_do_not_decode_are_counted_not_fatal(guard):
    good = jpeg.encode(solid(GREEN, 16, 16), 90)
    frames = [Frame(0, "s", 0.0, jpeg=good), Frame(1, "s", 0.0, jpeg=b"\x00\x01 nope"),
              Frame(2, "s", 0.0, jpeg=good[:20]), Frame(3, "s", 0.0, jpeg=good)]
    stats = StreamStats()
    results = list(run_stream(guard, StreamSource("s", lambda: iter(frames)), stats=stats))
    assert [r.index for r in results] == [0, 3] and stats.frames == 2
    assert stats.corrupt == {"not_jpeg": 1, "no_header": 1}  # 20 bytes: cut before the frame header


def test_nan_logits_are_an_error_naming_the_member(tmp_path):
    w = channel_weights()
    w[0, 0] = np.nan
    members = [{"name": "good", "vaccination": "none", "quality": None},
               {"name": "broken", "vaccination": "none", "quality": None, "weight": w}]
    guard = Guard.from_bundle(make_bundle(tmp_path / "b", members), threads=1)
    with pytest.raises(BundleError, match=r"finite logits.*\['broken'\]"):
        guard.classify(solid(RED))


def test_clip_box_and_centre_square():
    assert center_square(30, 40) == (5, 0, 35, 30)
    assert clip_box((-5, 2, 20.4, 99), 30, 40) == (0, 2, 20, 30)
    assert clip_box((50, 0, 60, 10), 30, 40) is None  # entirely outside
    assert clip_box((1, 1, float("inf"), 5), 30, 40) is None and clip_box(("a", 1, 2, 3), 30, 40) is None


def _detector_onnx(path, output: np.ndarray, side: int = 64):
    """A detector stand-in: input images [1,3,side,side], output0 = the constant `output` (+0 * sum(input))."""
    nodes = [helper.make_node("ReduceSum", ["images"], ["s"], keepdims=0),
             helper.make_node("Mul", ["s", "zero"], ["z"]),
             helper.make_node("Add", ["const", "z"], ["output0"])]
    graph = helper.make_graph(
        nodes, "det", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))],
        [numpy_helper.from_array(output.astype(np.float32), "const"),
         numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.save(model, str(path))
    return path


def test_yolov8_layout_is_decoded_mapped_back_and_suppressed(tmp_path):
    # 64 px letterbox of a 128x64 frame: scale 0.5, padded 16 px top and bottom
    cand = np.array([  # cx, cy, w, h, score class 0, score class 1 (letterbox pixels), one column per candidate
        [16, 32, 10, 10, 0.9, 0.0],
        [17, 32, 10, 10, 0.8, 0.0],   # overlaps the first: suppressed
        [48, 32, 8, 8, 0.0, 0.7],     # class 1
        [40, 40, 4, 4, 0.1, 0.0],     # below the score threshold
    ], np.float32)
    cand = np.concatenate([cand, np.zeros((96, 6), np.float32)]).T[None]  # [1, 4 + 2, 100]: N is the long axis
    det = Detector(_detector_onnx(tmp_path / "v8.onnx", cand), score=0.25, iou=0.5)
    found = det.detect(np.zeros((64, 128, 3), np.uint8))
    assert [(d.class_id, round(d.score, 2)) for d in found] == [(0, 0.9), (1, 0.7)]
    assert found[0].box == pytest.approx((22.0, 22.0, 42.0, 42.0))  # ((16 -+ 5) / 0.5, (32 -+ 5 - 16) / 0.5)
    only_1 = Detector(_detector_onnx(tmp_path / "v8b.onnx", cand), classes=[1]).detect(np.zeros((64, 128, 3), np.uint8))
    assert [d.class_id for d in only_1] == [1]


def test_yolov5_and_end_to_end_layouts():
    v5 = np.zeros((50, 7), np.float32)  # [1, N, 5 + 2]: score = objectness * class score
    v5[:2] = [[10, 10, 4, 4, 0.5, 0.2, 0.9], [30, 30, 4, 4, 0.9, 0.9, 0.1]]
    v5 = v5[None]
    boxes, scores, classes, done = decode_output(v5, score=0.3)
    assert not done and classes.tolist() == [1, 0] and scores == pytest.approx([0.45, 0.81])
    e2e = np.array([[1, 2, 11, 12, 0.95, 3], [0, 0, 5, 5, 0.1, 1]], np.float32)[None]
    boxes, scores, classes, done = decode_output(e2e, score=0.25)
    assert done and boxes.tolist() == [[1, 2, 11, 12]] and classes.tolist() == [3]
    with pytest.raises(Exception, match="detector output"):
        decode_output(np.zeros((2, 3), np.float32), score=0.5)


def test_detector_regions_feed_the_classifier(guard, tmp_path):
    frame = np.zeros((64, 128, 3), np.uint8)
    frame[8:56, 8:56] = RED
    frame[8:56, 72:120] = GREEN
    x, scale, pad = letterbox(frame, 64)
    assert x.shape == (1, 3, 64, 64) and scale == 0.5 and pad == (0.0, 16.0)
    cand = np.zeros((100, 5), np.float32)  # one class, 100 candidates
    cand[:2] = [[16, 32, 24, 24, 0.9], [48, 32, 24, 24, 0.8]]
    cand = cand.T[None]
    regions = Regions.from_detector(Detector(_detector_onnx(tmp_path / "d.onnx", cand)))
    (result,) = guard.run(_jpeg_frames([frame]), regions=regions)
    assert [r.class_name for r in result.regions] == ["red", "green"]
    assert [r.detector_score for r in result.regions] == pytest.approx([0.9, 0.8])


def test_latency_percentiles_in_constant_memory():
    from edge_guard.stream import LatencyHistogram

    samples = np.random.default_rng(0).lognormal(1.5, 0.5, 20000)
    hist = LatencyHistogram()
    size = hist.counts.nbytes
    for ms in samples:
        hist.add(float(ms))
    assert hist.counts.nbytes == size and len(hist) == len(samples)  # memory does not grow with the run
    for q in (50, 95, 99):
        assert hist.percentile(q) == pytest.approx(np.percentile(samples, q), rel=0.015)
    assert LatencyHistogram().percentile(50) == 0.0
