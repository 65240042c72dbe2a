"""Fixed-point quantization: formats, the integer reference (numpy), PTQ/QAT and the fake-quantized model (torch)."""
