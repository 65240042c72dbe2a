"""KServe v2 (Open Inference Protocol) over gRPC. Protobuf types never leave this folder:
the rest of the runtime sees numpy arrays, :class:`ModelMeta` and :class:`InferError`."""

TRANSPORTS = ("ipc", "grpc")  # how a coordinator reaches workers on its own machine: Unix socket, or loopback gRPC
