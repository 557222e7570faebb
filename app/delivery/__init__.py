"""Mobile delivery: apps ask for a published model by name and download its TFLite file.

``GET /v1/models/{modelName}:download`` answers Firebase ML's download call (304 when the
app's ``modelHash`` is current); the file comes from a signed Cloud Storage URL or, for a
local blob store, from a short-lived link this service signs itself (:mod:`app.delivery.links`).
"""
