"""Serving's inference: the model bundle, the request features, ONNX Runtime sessions
behind the micro-batchers, scoring within the budget and the reloadable model holder."""
