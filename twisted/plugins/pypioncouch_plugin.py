from twisted.application.service import ServiceMaker

pypioncouch = ServiceMaker(
    "pypioncouch",
    "pypioncouch.service",
    "Keep a CouchDB copy of PyPI's metadata current and serve it over HTTP.",
    "pypioncouch",
)
