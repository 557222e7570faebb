"""LiteRT interpreter latency at 2 threads (default XNNPACK delegate) for the given files."""
import sys, time, json
import numpy as np
from ai_edge_litert.interpreter import Interpreter
from common import test_images

results = {}
image = test_images(1)[0]
for path in sys.argv[1:]:
    it = Interpreter(model_path=path, num_threads=int(__import__("os").environ.get("BENCH_THREADS", "2")))
    it.allocate_tensors()
    d = it.get_input_details()[0]
    if d["dtype"] == np.uint8:
        x = image[None]
    elif d["dtype"] == np.int8:
        s, z = d["quantization"]
        x = np.clip(np.round((image.astype(np.float32) - 127) / 128 / s) + z, -128, 127).astype(np.int8)[None]
    else:
        x = ((image.astype(np.float32) - 127) / 128)[None]
    it.set_tensor(d["index"], x)
    for _ in range(10):
        it.invoke()
    times = []
    for _ in range(60):
        t = time.perf_counter(); it.invoke(); times.append((time.perf_counter() - t) * 1000)
    times = np.array(times)
    results[path] = {"p50_ms": round(float(np.median(times)), 2), "p90_ms": round(float(np.percentile(times, 90)), 2),
                     "min_ms": round(float(times.min()), 2)}
    print(path, results[path], flush=True)
print(json.dumps(results))
