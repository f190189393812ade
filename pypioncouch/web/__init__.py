"""The web front: the klein application (app.py), browse pages, cache and metrics."""
