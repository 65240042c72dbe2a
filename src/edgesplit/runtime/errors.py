"""Errors of the runtime, free of gRPC: the transport maps each to its status code."""

from __future__ import annotations

from edgesplit.errors import EdgesplitError


class InferError(EdgesplitError):
    """The request is wrong (shape, dtype, bytes, values, model name): INVALID_ARGUMENT."""


class OverLimit(InferError):
    """The request is larger than the server takes (bytes, batch): RESOURCE_EXHAUSTED."""


class PartUnavailable(EdgesplitError):
    """A part could not be reached or failed on every replica before the deadline: UNAVAILABLE."""


class DeadlineExceeded(EdgesplitError):
    """The request's deadline passed: DEADLINE_EXCEEDED."""
