"""The model registry: versions, publishing, Firebase ML's shape, mobile download."""
