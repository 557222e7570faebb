"""A TFLite model made of TFLite_Detection_PostProcess alone (inputs: encodings [1,N,4], scores
[1,N,K]; anchors constant), built with the schema object API, to test the op's semantics directly."""
import numpy as np
import flatbuffers
from ai_edge_litert import schema_py_generated as schema
from flatbuffers import flexbuffers

POSTPROCESS_OP = "TFLite_Detection_PostProcess"


def postprocess_options(num_classes, *, max_detections, score_threshold, iou_threshold,
                        use_regular_nms, detections_per_class=100):
    """Same as export_tflite.postprocess_options (kept torch-free here)."""
    fbb = flexbuffers.Builder()
    with fbb.Map():
        fbb.Int("max_detections", max_detections)
        fbb.Int("max_classes_per_detection", 1)
        fbb.Int("detections_per_class", detections_per_class)
        fbb.Bool("use_regular_nms", use_regular_nms)
        fbb.Float("nms_score_threshold", score_threshold)
        fbb.Float("nms_iou_threshold", iou_threshold)
        fbb.Int("num_classes", num_classes)
        for key in ("y_scale", "x_scale", "h_scale", "w_scale"):
            fbb.Float(key, 1.0)
    return bytes(fbb.Finish())


def _write_model(model):
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def op_only_model(anchors: np.ndarray, num_classes: int, **options) -> bytes:
    n = anchors.shape[0]
    model = schema.ModelT()
    model.version = 3
    model.buffers = [schema.BufferT()]
    anchor_buffer = schema.BufferT(); anchor_buffer.data = np.frombuffer(anchors.astype(np.float32).tobytes(), np.uint8)
    model.buffers.append(anchor_buffer)
    sg = schema.SubGraphT(); sg.tensors = []
    def tensor(name, shape, buffer=0):
        t = schema.TensorT(); t.name = name.encode(); t.shape = shape; t.type = schema.TensorType.FLOAT32; t.buffer = buffer
        sg.tensors.append(t); return len(sg.tensors) - 1
    enc = tensor("encodings", [1, n, 4]); sco = tensor("scores", [1, n, num_classes]); anc = tensor("anchors", [n, 4], 1)
    md = options.get("max_detections", 100)
    outs = [tensor("boxes", [1, md, 4]), tensor("classes", [1, md]), tensor("scores_out", [1, md]), tensor("count", [1])]
    code = schema.OperatorCodeT(); code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode = POSTPROCESS_OP.encode(); code.version = 1
    model.operatorCodes = [code]
    op = schema.OperatorT(); op.opcodeIndex = 0; op.inputs = [enc, sco, anc]; op.outputs = outs
    op.customOptions = np.frombuffer(postprocess_options(num_classes, **options), np.uint8)
    op.customOptionsFormat = schema.CustomOptionsFormat.FLEXBUFFERS
    sg.operators = [op]; sg.inputs = [enc, sco]; sg.outputs = outs
    model.subgraphs = [sg]
    return _write_model(model)
