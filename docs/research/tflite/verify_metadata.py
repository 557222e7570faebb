"""Compare metadata.py's output with tflite-support 0.4.4's (out/ref_tfsupport.tflite)."""
import sys, zipfile
import numpy as np
from ai_edge_litert import schema_py_generated as s
from mediapipe.tasks.metadata import metadata_schema_py_generated as ms
from metadata import add_detector_metadata


def metadata_of(data: bytes):
    m = s.ModelT.InitFromObj(s.Model.GetRootAs(data, 0))
    entry = [x for x in m.metadata if x.name == b"TFLITE_METADATA"]
    assert len(entry) == 1
    raw = bytes(m.buffers[entry[0].buffer].data)
    return raw, ms.ModelMetadataT.InitFromObj(ms.ModelMetadata.GetRootAs(raw, 0))


def as_plain(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, list):
        return [as_plain(v) for v in obj]
    if hasattr(obj, "__dict__"):
        return {k: as_plain(v) for k, v in vars(obj).items()}
    if isinstance(obj, bytes):
        return obj.decode()
    return obj


base = open("out/nometa_regular.tflite", "rb").read()
ref = open("out/ref_tfsupport.tflite", "rb").read()
mine = add_detector_metadata(base, ["cat", "dog", "raccoon"], mean=127.0, std=128.0)
raw_ref, md_ref = metadata_of(ref)
raw_mine, md_mine = metadata_of(mine)
print("metadata flatbuffer bytes identical:", raw_ref == raw_mine, len(raw_ref), len(raw_mine))
a, b = as_plain(md_ref), as_plain(md_mine)
print("metadata objects equal:", a == b)
if a != b:
    import json
    print(json.dumps(a, indent=1)[:3000]); print(json.dumps(b, indent=1)[:3000])
for name, data in (("tflite-support", ref), ("metadata.py", mine)):
    z = zipfile.ZipFile(__import__("io").BytesIO(data))
    print(name, [(i.filename, z.read(i.filename), i.date_time) for i in z.infolist()], len(data))
again = add_detector_metadata(base, ["cat", "dog", "raccoon"], mean=127.0, std=128.0)
print("metadata.py deterministic:", again == mine)
