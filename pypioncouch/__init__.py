"""pypioncouch: all of PyPI's project and release metadata in CouchDB, kept current.

The public Python API (the 2011 original's names, kept)::

    from pypioncouch import import_all, update
    summary = import_all("http://localhost:5984/", pypi="https://pypi.org/")
    summary = update("http://localhost:5984/")

Both block until done and return a :class:`~pypioncouch.sync.Summary`.
"""

__version__ = "0.2.0"

__all__ = ["XmlRpcImporter", "import_all", "update", "__version__"]


def __getattr__(name):
    # Lazy, so that `import pypioncouch` (e.g. by setup.py or the twistd plugin scan)
    # does not import Twisted's web stack.
    if name in ("XmlRpcImporter", "import_all", "update"):
        from pypioncouch import api

        return getattr(api, name)
    raise AttributeError(name)
