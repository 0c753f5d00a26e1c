#!/usr/bin/env python3
"""Reference features for the fidelity test, computed the way the original pipeline did.

The original PySpark job ran Keras MobileNetV2 on images opened with Pillow and resized with
`Image.resize((224, 224))` (Pillow's default bicubic filter for RGB), scaled by
`mobilenet_v2.preprocess_input` (x / 127.5 - 1). Here the same preprocessing feeds the same
weights through onnxruntime. The output is a fixture the Rust tests compare against; it is
made once by a developer, never in CI.

Besides the sample images, the decoder corpus in tests/fixtures/decode (four-channel JPEGs,
16-bit, palette and grey-alpha PNGs, made by make_decode_fixtures.py) gets the same treatment,
under "decode_fixtures".

Usage: make_reference.py DATA_DIR MODEL OUT_JSON [PER_CLASS]
Needs: pip install onnxruntime==1.31.1 pillow numpy
"""
import hashlib
import json
import os
import sys

import numpy as np
import onnxruntime
import PIL
from PIL import Image


def preprocess(path):
    """The model input, and the sha256 of the decoded and of the resized RGB pixels."""
    with Image.open(path) as image:
        decoded = image.convert("RGB")
        resized = decoded.resize((224, 224))
        array = np.asarray(resized, dtype=np.float32)
        digests = (hashlib.sha256(decoded.tobytes()).hexdigest(), hashlib.sha256(resized.tobytes()).hexdigest())
    return array / 127.5 - 1.0, digests


DECODE_FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "decode")


def reference_entry(session, path):
    tensor, (decoded_sha256, resized_sha256) = preprocess(path)
    features = session.run(["features"], {"input": tensor[None, ...]})[0][0]
    return {
        "decoded_sha256": decoded_sha256,
        "resized_sha256": resized_sha256,
        "features": [float(f"{v:.7g}") for v in features],
    }


def main():
    data_dir, model_path, out_path = sys.argv[1:4]
    per_class = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])

    images = []
    for label in sorted(os.listdir(data_dir)):
        folder = os.path.join(data_dir, label)
        if not os.path.isdir(folder):
            continue
        names = sorted(n for n in os.listdir(folder) if n.lower().endswith((".jpg", ".jpeg", ".png")))
        for name in names[:per_class]:
            entry = reference_entry(session, os.path.join(folder, name))
            images.append({"path": f"{label}/{name}", "label": label, **entry})
    decode_fixtures = [
        {"file": name, **reference_entry(session, os.path.join(DECODE_FIXTURES, name))}
        for name in sorted(os.listdir(DECODE_FIXTURES))
    ]

    with open(model_path, "rb") as f:
        model_sha256 = hashlib.sha256(f.read()).hexdigest()
    fixture = {
        "about": "MobileNetV2 features of Fruits-360 images: Pillow decode + bicubic resize, x/127.5-1, onnxruntime",
        "made_by": "tests/reference/make_reference.py",
        "model_sha256": model_sha256,
        "onnxruntime": onnxruntime.__version__,
        "pillow": PIL.__version__,
        "images": images,
        "decode_fixtures": decode_fixtures,
    }
    with open(out_path, "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
        f.write("\n")
    print(f"{len(images)} + {len(decode_fixtures)} reference vectors -> {out_path}")


if __name__ == "__main__":
    main()
