"""Check LiteRT's TFLite_Detection_PostProcess regular NMS for dropped classes vs num_threads.
Standalone: needs only ai_edge_litert, numpy, flatbuffers (the op-only model is built in
op_harness.py). Prints one row per (classes, threads)."""
import numpy as np
from ai_edge_litert.interpreter import Interpreter
import ai_edge_litert
from op_harness import op_only_model

rng = np.random.default_rng(0)
N = 50
anchors = np.stack([rng.uniform(0, 1, N), rng.uniform(0, 1, N), np.full(N, 0.1), np.full(N, 0.1)], 1).astype(np.float32)
enc = np.zeros((1, N, 4), np.float32)
try:
    from importlib.metadata import version
    print("ai-edge-litert", version("ai-edge-litert"))
except Exception:
    pass
bad = 0
for K in (2, 3, 5, 7, 10):
    for nt in (1, 2, 3, 4):
        dropped = []
        for hot in range(K):
            scores = np.full((1, N, K), 0.001, np.float32)
            scores[0, 5, hot] = 0.9
            it = Interpreter(model_content=op_only_model(anchors, K, max_detections=10, score_threshold=0.01,
                                                         iou_threshold=0.6, use_regular_nms=True), num_threads=nt)
            it.allocate_tensors()
            for d in it.get_input_details():
                it.set_tensor(d["index"], enc if d["shape"][-1] == 4 else scores)
            it.invoke()
            b, c, s, n = [it.get_tensor(d["index"]) for d in it.get_output_details()]
            if not (int(n[0]) >= 1 and int(c[0, 0]) == hot):
                dropped.append(hot)
        bad += bool(dropped)
        print(f"classes={K} threads={nt}: dropped classes {dropped}")
print("BUG PRESENT" if bad else "no dropped classes")
