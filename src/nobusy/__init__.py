"""nobusy: one OpenAI-compatible endpoint over many model sources; users never see "server busy"."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
