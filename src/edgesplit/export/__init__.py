"""ONNX export (needs torch) and the torch-free manifest the runtime reads."""
