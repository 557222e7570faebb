"""Export twice (same process) and compare bytes; report where two files differ.

usage: verify_determinism.py [A.tflite B.tflite]   (with files: compare them; else export twice)
"""
import hashlib, sys
from pathlib import Path
import numpy as np
from ai_edge_litert import schema_py_generated as s


def describe_diff(a: bytes, b: bytes) -> None:
    ma = s.ModelT.InitFromObj(s.Model.GetRootAs(a, 0))
    mb = s.ModelT.InitFromObj(s.Model.GetRootAs(b, 0))
    print(" sizes", len(a), len(b), "buffers", len(ma.buffers), len(mb.buffers))
    sa, sb = ma.subgraphs[0], mb.subgraphs[0]
    print(" tensors", len(sa.tensors), len(sb.tensors), "ops", len(sa.operators), len(sb.operators))
    print(" metadata", [(m.name, len(ma.buffers[m.buffer].data) if ma.buffers[m.buffer].data is not None else 0) for m in ma.metadata or []])
    print(" metadata", [(m.name, len(mb.buffers[m.buffer].data) if mb.buffers[m.buffer].data is not None else 0) for m in mb.metadata or []])
    names_a = [t.name for t in sa.tensors]; names_b = [t.name for t in sb.tensors]
    print(" tensor names equal:", names_a == names_b)
    if names_a != names_b:
        diff = [(x, y) for x, y in zip(names_a, names_b) if x != y]
        print("  first differing names:", diff[:5], "count", len(diff))
    for i, (ta, tb) in enumerate(zip(sa.tensors, sb.tensors)):
        da = ma.buffers[ta.buffer].data; db = mb.buffers[tb.buffer].data
        if (da is None) != (db is None) or (da is not None and not np.array_equal(da, db)):
            print("  tensor", i, ta.name, "data differs"); break
    ops_a = [(o.opcodeIndex, list(o.inputs), list(o.outputs)) for o in sa.operators]
    ops_b = [(o.opcodeIndex, list(o.inputs), list(o.outputs)) for o in sb.operators]
    print(" operator lists equal:", ops_a == ops_b)


def main() -> None:
    if len(sys.argv) == 3:
        a, b = (Path(p).read_bytes() for p in sys.argv[1:])
    else:
        from common import make_model
        from export_tflite import export_float
        model, labels = make_model()
        a = export_float(model, labels)
        b = export_float(model, labels)
    print("sha256", hashlib.sha256(a).hexdigest()[:16], hashlib.sha256(b).hexdigest()[:16], "identical:", a == b)
    if a != b:
        describe_diff(a, b)


if __name__ == "__main__":
    main()
