#!/usr/bin/env python3
"""Writes the cheap model of the scale benchmark (scripts/bench-scale.sh).

Same contract as mobilenetv2_features.onnx: input `input` float32 [N, 224, 224, 3] (NHWC,
[-1, 1]), output `features` float32 [N, 1280]. Inside: the mean of each colour channel over the
pixels, then a fixed 3 x 1280 projection. Inference costs next to nothing, so a run over a
million images measures what fruits itself does: listing, planning, reading, decoding,
writing, committing and the PCA.

Usage: make-scale-model.py OUT.onnx   (needs the `onnx` package)
"""
import math
import sys

from onnx import TensorProto, checker, helper, save

FEATURES = 1280


def main(path: str) -> None:
    # A fixed, full-rank projection: every feature a different mix of the three channel means.
    weights = [math.sin(1.0 + 0.37 * c + 0.011 * j * (c + 1)) for c in range(3) for j in range(FEATURES)]
    graph = helper.make_graph(
        nodes=[
            helper.make_node("ReduceMean", ["input"], ["channel_means"], axes=[1, 2], keepdims=0),
            helper.make_node("MatMul", ["channel_means", "projection"], ["features"]),
        ],
        name="fruits_scale_bench",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 224, 224, 3])],
        outputs=[helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", FEATURES])],
        initializer=[helper.make_tensor("projection", TensorProto.FLOAT, [3, FEATURES], weights)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    model.doc_string = "fruits scale benchmark: channel means and a fixed projection to 1280 features"
    checker.check_model(model)
    save(model, path)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make-scale-model.py OUT.onnx")
    main(sys.argv[1])
