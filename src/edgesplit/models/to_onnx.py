"""A PyTorch module as ONNX, in memory: what the hardware model and the quantizer read a network through.

It lives beside the models (not in ``export``) so that reading a network needs nothing of the
export and runtime packages: ``quant`` and ``hardware`` depend on ``models``, never on ``export``.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import warnings

import torch
import torch.nn as nn

from edgesplit.errors import EdgesplitError

OPSET = 17


def onnx_bytes(model: nn.Module, input_shape, constant_folding: bool = False) -> bytes:
    """``model`` (eval mode: batch norm folded into convs) as an in-memory ONNX model with a batch of 1.

    The TorchScript exporter prints its whole IR graph when it fails (torch 2.13): that
    output is silenced so the one-line error below is all the user sees.
    """
    buf = io.BytesIO()
    model.eval()
    try:
        with warnings.catch_warnings(), _silence_native_output():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (torch.zeros(1, *input_shape),),
                buf,
                dynamo=False,
                opset_version=OPSET,
                input_names=["input"],
                output_names=["output"],
                do_constant_folding=constant_folding,
            )
    except Exception as err:  # the exporter raises many types; the first line says what failed
        name = getattr(model, "model_name", type(model).__name__)
        raise EdgesplitError(
            f"cannot export {name} at input {'x'.join(map(str, input_shape))} to ONNX "
            f"({str(err).splitlines()[0][:160]}); try another --input size"
        ) from None
    return buf.getvalue()


@contextlib.contextmanager
def _silence_native_output():
    sys.stdout.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile() as sink:
        for fd in saved:
            os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
