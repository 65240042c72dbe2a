"""The benches' figures: matplotlib without a display, one size and resolution, written where asked."""

from __future__ import annotations

from pathlib import Path


def figure(ncols: int = 1, size: tuple[float, float] = (7, 3.5)):
    """A figure of ``ncols`` plots side by side: (figure, axes)."""
    import matplotlib

    matplotlib.use("Agg")  # no display: benches run on servers and in CI
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=size, dpi=110)


def save(fig, path: str | Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
