"""matplotlib for the reports' plots, loaded on demand (the ``plot`` extra), and PNGs inlined in HTML."""

from __future__ import annotations

import base64
import html
import io

from intsim.errors import ValidationError


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend; :class:`~intsim.errors.ValidationError`
    naming the extra to install when matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValidationError("plotting needs matplotlib: pip install 'intsim[plot]'") from None
    return plt


def inline_png(plot, alt: str) -> str:
    """An ``<img>`` holding the PNG that ``plot(file)`` writes, or a note where matplotlib is absent."""
    buffer = io.BytesIO()
    try:
        plot(buffer)
    except ValidationError:
        return "<p>(install matplotlib for the plot: pip install 'intsim[plot]')</p>"
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"
