"""Batch prediction: a list of images run through a model version's ONNX file by a worker,
results in JSON Lines in the blob store (Vertex AI's BatchPredictionJob)."""
