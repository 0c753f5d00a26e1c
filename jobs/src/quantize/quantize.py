"""Static int8 quantization of an ONNX model, for `fruits quantize` (jobs/src/quantize).

fruits preprocesses the calibration images itself (its own decode and resize, bit-exact with
`fruits run`) and hands them here as one float32 .npy of shape [N, ...]; this script only
quantizes: onnxruntime's `quant_pre_process` (shape inference and graph optimisation), then
`quantize_static` in QDQ form, weights int8 per channel, activations uint8, MinMax calibration
over the N images. It prints one JSON line with what it did. fruits embeds this file and runs it
with the Python of `scripts/setup-quantize.sh`; nothing of it runs at featurize time.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import onnxruntime
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process


class Tensors(CalibrationDataReader):
    """Feeds the calibration images one at a time (batch 1), as the model's input `name`."""

    def __init__(self, name, images):
        self.name = name
        self.images = images
        self.next = 0

    def get_next(self):
        if self.next >= len(self.images):
            return None
        item = {self.name: np.ascontiguousarray(self.images[self.next : self.next + 1], dtype=np.float32)}
        self.next += 1
        return item

    def rewind(self):
        self.next = 0


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--calibration", required=True, help="float32 .npy, [N, ...] preprocessed images")
    parser.add_argument("--input-name", required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()

    images = np.load(args.calibration, mmap_mode="r")
    if images.dtype != np.float32 or images.ndim < 2 or images.shape[0] == 0:
        sys.exit(f"error: {args.calibration}: expected a non-empty float32 [N, ...] array, got {images.dtype} {images.shape}")

    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        prepared = os.path.join(scratch, "prepared.onnx")
        quant_pre_process(args.model, prepared, skip_symbolic_shape=False)
        quantize_static(
            prepared,
            args.output,
            Tensors(args.input_name, images),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    print(
        json.dumps(
            {
                "onnxruntime": onnxruntime.__version__,
                "calibration_images": int(images.shape[0]),
                "seconds": round(time.monotonic() - started, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
