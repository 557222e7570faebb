import numpy as np, torch
from ai_edge_litert.interpreter import Interpreter
from app.detector.model import Detector
from app.detector.spec import spec_for
from app.detector.predict import postprocess
from export_tflite import export_float
from common import make_image
for name in ("mobile-versatile", "mobile-high-accuracy"):
    torch.manual_seed(0)
    m = Detector(spec_for(name), 3, pretrained=True).eval()
    with torch.no_grad():
        for h in m.heads:
            h.cls_out.weight.mul_(300.0); h.cls_out.bias.fill_(-4.0); h.box_out.weight.mul_(30.0)
    S = m.spec.input_size
    data = export_float(m, ["a", "b", "c"])
    it = Interpreter(model_content=data, num_threads=1); it.allocate_tensors()
    im = make_image(1000, S)
    it.set_tensor(it.get_input_details()[0]['index'], ((im.astype(np.float32)-127)/128)[None]); it.invoke()
    b, c, s, n = [it.get_tensor(d['index']) for d in it.get_output_details()]
    with torch.no_grad(): lg, off = m(torch.from_numpy(im.copy()).permute(2,0,1)[None].float())
    ref = postprocess(lg, off, m.anchors, S)[0]
    k = min(int(n[0]), len(ref.scores))
    same = (c[0,:k].astype(int) == ref.labels[:k]).all()
    bd = np.abs(b[0,:k][:, [1,0,3,2]] - ref.boxes[:k]).max()
    print(name, S, "size", len(data), "n", int(n[0]), len(ref.scores), "labels same", same, "max box diff", bd, "top scores", s[0,:3], ref.scores[:3])
