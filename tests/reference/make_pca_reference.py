#!/usr/bin/env python3
"""Reference PCA of the sample's features, for the tests of the `fruits-pca` crate.

The features are computed exactly as make_reference.py computes them (Pillow decode, bicubic
resize, x/127.5-1, onnxruntime), for every image of the sample, and scikit-learn's PCA with the
exact LAPACK SVD (`svd_solver="full"`, in float64) gives the reference. The Rust PCA must agree
with it: explained variance ratios within 1e-4, components up to sign, projections within 1e-3.
Made once by a developer, never in CI.

Usage: make_pca_reference.py DATA_DIR MODEL OUT_JSON [--save-features PREFIX] [--load-features PREFIX]
  --save-features PREFIX  also write PREFIX.npy (float32 rows x 1280), PREFIX.f32 (the same, raw
                          little-endian, row-major) and PREFIX.paths.txt ("label/file" per row)
  --load-features PREFIX  reuse features saved by --save-features instead of running the model
Needs: pip install onnxruntime==1.31.1 pillow numpy scikit-learn
"""
import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np
import onnxruntime
import PIL
import sklearn
from sklearn.decomposition import PCA

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_reference import preprocess  # noqa: E402  (the one definition of the model input)

RATIO_COMPONENTS = 10
PROJECTED_PER_CLASS = 6


def list_images(data_dir):
    """(label, name) of every image, in the order make_reference.py walks them."""
    images = []
    for label in sorted(os.listdir(data_dir)):
        folder = os.path.join(data_dir, label)
        if os.path.isdir(folder):
            names = sorted(n for n in os.listdir(folder) if n.lower().endswith((".jpg", ".jpeg", ".png")))
            images.extend((label, name) for name in names)
    return images


def featurize(data_dir, model_path, images):
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    features = np.empty((len(images), 1280), dtype=np.float32)
    for i, (label, name) in enumerate(images):
        tensor, _ = preprocess(os.path.join(data_dir, label, name))
        features[i] = session.run(["features"], {"input": tensor[None, ...]})[0][0]
    return features


def projected_rows(images):
    """A few images per class, evenly spread over each class's sorted files: stable across runs."""
    by_label = {}
    for i, (label, _) in enumerate(images):
        by_label.setdefault(label, []).append(i)
    rows = []
    for indices in by_label.values():
        picks = sorted({indices[j * (len(indices) - 1) // (PROJECTED_PER_CLASS - 1)] for j in range(PROJECTED_PER_CLASS)})
        rows.extend(picks)
    return rows


def rounded(values):
    return [float(f"{v:.7g}") for v in np.asarray(values, dtype=np.float64).ravel()]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir")
    parser.add_argument("model")
    parser.add_argument("out_json")
    parser.add_argument("--save-features")
    parser.add_argument("--load-features")
    args = parser.parse_args()

    images = list_images(args.data_dir)
    paths = [f"{label}/{name}" for label, name in images]
    if args.load_features:
        features = np.load(args.load_features + ".npy")
        with open(args.load_features + ".paths.txt") as f:
            if f.read().splitlines() != paths:
                sys.exit(f"{args.load_features}.paths.txt does not list the images of {args.data_dir}")
    else:
        start = time.perf_counter()
        features = featurize(args.data_dir, args.model, images)
        print(f"featurized {len(images)} images in {time.perf_counter() - start:.1f} s")
    if args.save_features:
        np.save(args.save_features + ".npy", features)
        features.astype("<f4").tofile(args.save_features + ".f32")
        with open(args.save_features + ".paths.txt", "w") as f:
            f.write("\n".join(paths) + "\n")

    # What fruits' PCA stage is compared with: scikit-learn's own choice of solver on the float32
    # features, as a user would call it, fit and projection together. The first call pays for
    # imports and thread start-up; on a shared machine the fastest of a few runs is the fair one.
    PCA(n_components=2).fit_transform(features)
    seconds = []
    for _ in range(7):
        start = time.perf_counter()
        PCA(n_components=2).fit_transform(features)
        seconds.append(time.perf_counter() - start)
    seconds.sort()
    print(f"scikit-learn PCA(n_components=2).fit_transform {features.shape[0]} x {features.shape[1]} float32: "
          f"best of 7 {seconds[0]:.3f} s, median {seconds[3]:.3f} s")

    x = features.astype(np.float64)
    start = time.perf_counter()
    pca = PCA(n_components=RATIO_COMPONENTS, svd_solver="full").fit(x)
    print(f"scikit-learn PCA(svd_solver='full'), float64: {time.perf_counter() - start:.3f} s")
    rows = projected_rows(images)
    projections = pca.transform(x[rows])[:, :2]

    with open(args.model, "rb") as f:
        model_sha256 = hashlib.sha256(f.read()).hexdigest()
    fixture = {
        "about": "scikit-learn PCA (svd_solver='full', float64) of the MobileNetV2 features of every sample image",
        "made_by": "tests/reference/make_pca_reference.py",
        "model_sha256": model_sha256,
        "onnxruntime": onnxruntime.__version__,
        "pillow": PIL.__version__,
        "scikit_learn": sklearn.__version__,
        "sign_convention": "svd_flip(u_based_decision=False): the largest |entry| of each component is positive",
        "rows": int(x.shape[0]),
        "features": int(x.shape[1]),
        "explained_variance_ratio": rounded(pca.explained_variance_ratio_),
        "explained_variance": rounded(pca.explained_variance_),
        "mean": rounded(pca.mean_),
        "components": [rounded(c) for c in pca.components_[:2]],
        "projections": {paths[r]: rounded(p) for r, p in zip(rows, projections)},
    }
    with open(args.out_json, "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
        f.write("\n")
    print(f"PCA of {x.shape[0]} x {x.shape[1]} features, {len(rows)} projections -> {args.out_json}")


if __name__ == "__main__":
    main()
