"""Python onnxruntime's rate on tensors that `fruits bench` prepared: the reference ceiling.

Run by `fruits bench` with the Python of `scripts/setup-quantize.sh` (or --python). Each of
SESSIONS threads owns one InferenceSession of THREADS intra-op threads and runs batches of BATCH
images from TENSORS (a .npy of preprocessed images) for SECONDS, as fruits' own sessions do;
onnxruntime releases the GIL while it runs. Prints one JSON line: the version and images/s.
"""

import argparse
import json
import threading
import time

import numpy as np
import onnxruntime as ort


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--tensors", required=True)
    parser.add_argument("--input-name", required=True)
    parser.add_argument("--sessions", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args()

    tensors = np.load(args.tensors)
    if len(tensors) < args.batch:
        raise SystemExit(f"{args.tensors} holds {len(tensors)} images, fewer than a batch of {args.batch}")
    batches = [tensors[i : i + args.batch] for i in range(0, len(tensors) - args.batch + 1, args.batch)]

    def session():
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])

    sessions = [session() for _ in range(args.sessions)]
    for s in sessions:
        s.run(None, {args.input_name: batches[0]})  # warm-up, not timed

    done = [0] * args.sessions
    start = threading.Barrier(args.sessions + 1)

    def work(index):
        s = sessions[index]
        start.wait()
        deadline = time.perf_counter() + args.seconds
        i = index
        while time.perf_counter() < deadline:
            s.run(None, {args.input_name: batches[i % len(batches)]})
            done[index] += args.batch
            i += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(args.sessions)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    print(json.dumps({"onnxruntime": ort.__version__, "images_per_second": sum(done) / elapsed}))


if __name__ == "__main__":
    main()
