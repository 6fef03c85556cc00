"""``python -m regionclip.cli``."""

from . import app

app()
