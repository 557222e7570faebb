"""int8 (uint8-input) model vs the float model: LiteRT (1 thread) detections and raw outputs,
and MediaPipe on the uint8 model.

usage: verify_int8.py FLOAT.tflite UINT8.tflite RAW_INT8.tflite [--threshold T]
"""
import argparse
import numpy as np
import torch
from ai_edge_litert.interpreter import Interpreter
from common import make_model, test_images
from export_tflite import MEAN, STD, DetectorForExport
from verify_mediapipe import mediapipe_detections


def litert(path, x):
    it = Interpreter(model_path=path, num_threads=1)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return [it.get_tensor(d["index"]) for d in it.get_output_details()]


def dets(outs, thr):
    b, c, s, n = outs
    n = int(n[0]); keep = s[0, :n] > thr
    return b[0, :n][keep], c[0, :n][keep].astype(int), s[0, :n][keep]


def iou(a, b):
    y1, x1 = np.maximum(a[0], b[0]), np.maximum(a[1], b[1]); y2, x2 = np.minimum(a[2], b[2]), np.minimum(a[3], b[3])
    inter = max(0, y2 - y1) * max(0, x2 - x1)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter + 1e-12)


def main():
    ap = argparse.ArgumentParser(); ap.add_argument("float"); ap.add_argument("uint8"); ap.add_argument("raw")
    ap.add_argument("--threshold", type=float, default=0.3); a = ap.parse_args()
    model, labels = make_model()
    wrapped = DetectorForExport(model, clip_boxes=True).eval()
    tot = {"float": 0, "int8": 0, "matched": 0, "top1_same": 0, "mp_equal_litert": 0}
    ious, sdiffs = [], []
    for i, im in enumerate(test_images(5)):
        xf = ((im.astype(np.float32) - MEAN) / STD)[None]
        fb, fc, fs = dets(litert(a.float, xf), a.threshold)
        qb, qc, qs = dets(litert(a.uint8, im[None]), a.threshold)
        # raw head: int8 model (int8 input, float outputs) vs PyTorch
        it = Interpreter(model_path=a.raw, num_threads=1); it.allocate_tensors()
        d = it.get_input_details()[0]; sc, zp = d["quantization"]
        it.set_tensor(d["index"], np.clip(np.round(xf / sc) + zp, -128, 127).astype(np.int8)); it.invoke()
        raw = [it.get_tensor(o["index"]) for o in it.get_output_details()]
        qscore = next(r for r in raw if r.shape[-1] != 4); qenc = next(r for r in raw if r.shape[-1] == 4)
        with torch.no_grad():
            renc, rscore = wrapped(torch.from_numpy(xf))
        used = set(); m = 0
        for j in range(len(fs)):
            best, bi = 0.0, -1
            for k in range(len(qs)):
                if k in used or qc[k] != fc[j]:
                    continue
                v = iou(fb[j], qb[k])
                if v > best: best, bi = v, k
            if best >= 0.5:
                used.add(bi); m += 1; ious.append(best); sdiffs.append(abs(qs[bi] - fs[j]))
        tot["float"] += len(fs); tot["int8"] += len(qs); tot["matched"] += m
        tot["top1_same"] += int(len(fs) > 0 and len(qs) > 0 and fc[0] == qc[0] and iou(fb[0], qb[0]) >= 0.5)
        mp = mediapipe_detections(a.uint8, im, a.threshold, labels)
        first = [j for j in range(len(qs)) if not any(np.array_equal(qb[j], qb[q]) for q in range(j))]
        same = len(mp) == len(first) and all(mp[t][1] == qc[first[t]] and abs(mp[t][2] - qs[first[t]]) < 1e-5 for t in range(len(mp)))
        tot["mp_equal_litert"] += int(same)
        print(f"image {i}: float {len(fs)} dets, int8 {len(qs)}, matched {m} (same label, IoU>=0.5); "
              f"raw int8-vs-torch max|score diff| {np.abs(qscore - rscore.numpy()).max():.3f} "
              f"mean {np.abs(qscore - rscore.numpy()).mean():.4f}, max|enc diff| {np.abs(qenc - renc.numpy()).max():.3f}; "
              f"top-1 float {labels[fc[0]] if len(fc) else None} {fs[0] if len(fs) else 0:.3f} / int8 "
              f"{labels[qc[0]] if len(qc) else None} {qs[0] if len(qs) else 0:.3f}; MediaPipe(uint8 file)==LiteRT: {same}")
    print("TOTAL", tot, f"mean IoU of matched {np.mean(ious) if ious else float('nan'):.3f}, "
          f"mean |score diff| {np.mean(sdiffs) if sdiffs else float('nan'):.3f}")


if __name__ == "__main__":
    main()
