"""The sample app that Headway's local fleet rolls out (``app.py``, standard library only)."""
