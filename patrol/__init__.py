"""patrol: the streaming smart-patrol event processor of a county command center."""

__version__ = "0.1.0"
