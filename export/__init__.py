"""torch -> ONNX export, the ONNX Runtime parity check and the versioned model bundle."""
