"""pypioncouch: PyPI's metadata in CouchDB, kept current by a Twisted daemon."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"', (HERE / "pypioncouch" / "__init__.py").read_text(), re.M
).group(1)

setup(
    name="pypioncouch",
    version=VERSION,
    description="Mirror PyPI's project and release metadata into CouchDB and serve it",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    # "twisted.plugins" is a namespace: no __init__.py in twisted/ or twisted/plugins/.
    packages=find_packages(include=["pypioncouch", "pypioncouch.*"]) + ["twisted.plugins"],
    package_data={
        "pypioncouch": ["couchapp/views/*/*.js", "couchapp/*.js", "web/templates/*.html",
                        "web/static/*"],
    },
    install_requires=[
        "Twisted[tls]>=24.7",  # (TLS: pyOpenSSL, service_identity)
        "treq>=24.9",
        "klein>=24.8",
        "packaging>=24",
        "packaging-legacy>=23.0",  # PyPI's order of versions PEP 440 cannot parse
        "orjson>=3.11.7",  # JSON on the hot paths (pypioncouch.jsonio)
        "ijson>=3.3",  # large CouchDB answers parsed row by row (couch.Database.rows_sized)
        "prometheus_client>=0.20",
        "Jinja2>=3.1",
        "Werkzeug>=2.3",  # RFC 9110 Accept parsing (klein brings it too)
        "readme_renderer[md]>=44",  # descriptions rendered as PyPI renders them
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-twisted>=1.14", "listparser>=0.20", "uv", "playwright>=1.40"],
    },
    entry_points={"console_scripts": ["pypioncouch = pypioncouch.cli:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: System :: Archiving :: Mirroring",
    ],
)
