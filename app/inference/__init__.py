"""Online and batch prediction in Vertex AI's JSON, from cached ONNX Runtime sessions."""
