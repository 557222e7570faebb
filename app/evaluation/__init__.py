"""Evaluations: Vertex-shaped metrics, the confidence/IoU slider, confusion matrices."""
