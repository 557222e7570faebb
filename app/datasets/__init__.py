"""Datasets: import (AutoML/Vertex CSV, JSONL, zip, gs://), images and boxes, stats, export."""
