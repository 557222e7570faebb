"""Reference metadata writer: tflite-support 0.4.4 (run with venv-meta/bin/python, protobuf 3.20).

usage: venv-meta/bin/python tflite_support_metadata.py IN.tflite OUT.tflite MEAN STD LABEL...
"""
import sys, tempfile, os
from tflite_support.metadata_writers import object_detector, writer_utils

src, dst, mean, std, *labels = sys.argv[1:]
with tempfile.TemporaryDirectory() as tmp:
    label_path = os.path.join(tmp, "labelmap.txt")
    with open(label_path, "w") as f:
        f.write("\n".join(labels) + "\n")
    writer = object_detector.MetadataWriter.create_for_inference(
        writer_utils.load_file(src), [float(mean)], [float(std)], [label_path]
    )
    writer_utils.save_file(writer.populate(), dst)
    print(writer.get_metadata_json())
