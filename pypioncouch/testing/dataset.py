"""Deterministic, lazily generated PyPI data sets for the simulator.

``Dataset(size, seed)`` describes ``size`` projects; project ``i`` is generated on
demand from ``(seed, i)`` alone, so 500,000 projects cost only their names in memory.
Every data set carries what real PyPI carries, the ugly parts included:

- names that need PEP 503 normalization (``Foo_Bar.baz``, mixed case);
- unicode in summaries and author names; HTML/JS injection strings in summary,
  author and keywords; empty (``""``) and missing (``None``) fields;
- keywords as comma- and space-separated strings; classifiers from PyPI's list;
- pre-, post- and dev-releases; yanked releases with and without a reason; releases
  with no files; a project created with no release at all;
- ``requires_python`` with ``<`` and ``>``;
- with ``heavy=True`` (the default from 1,000 projects): a project with 3,000
  releases and one with a 5 MB description;
- Requires-Dist on other projects of the data set, spelled as people write them
  (``Foo_Bar.baz>=1.0``, extras, markers, upper case), on projects outside it, on
  the project itself (an extra), and now and then one that does not parse, so that
  every project has dependents to find (``requirements``);
- advisories (PyPI's ``vulnerabilities``, OSV) on some latest releases, on older
  releases fixed in a later one, and withdrawn ones (``advisories``);
- releases with metadata of their own: the release PyPI shows as the latest carries
  the project's metadata, every older one its own summary, description, description
  content type and Requires-Dist (``older_metadata``), as real projects change them
  from release to release. Only PyPI's per-version JSON API shows those.

The first projects are fixed showcases of those cases (see ``SHOWCASE``), so even a
data set of 10 projects holds them; the rest are drawn at random from the seed.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from packaging.version import InvalidVersion, Version

from pypioncouch.testing.wheels import wheel_filename

EPOCH = datetime(2012, 1, 1, tzinfo=timezone.utc)

WORDS = ["zope", "flask", "couch", "twisted", "requests", "data", "tools", "sphinx",
         "async", "json", "web", "cli", "graph", "crypto", "numpy", "django", "yaml",
         "plugin", "client", "server", "test", "lint", "pack", "sync", "feed", "mirror",
         "query", "cache", "queue", "stream", "vector", "image", "audio", "parse", "build"]
FIRST_NAMES = ["Ada", "Glyph", "Amber", "Guido", "Jürgen", "Zoë", "Łukasz", "Søren",
               "José", "Amélie", "Hynek", "Brett", "Mariatta", "Raymond", "Nick"]
LAST_NAMES = ["Lovelace", "Lefkowitz", "Brown", "van Rossum", "Müller", "Núñez",
              "Langa", "Kierkegaard", "García", "Poulain", "Schlawack", "Cannon"]
CLASSIFIERS = [
    "Development Status :: 3 - Alpha", "Development Status :: 4 - Beta",
    "Development Status :: 5 - Production/Stable",
    "Framework :: Twisted", "Framework :: Django", "Framework :: Flask",
    "Intended Audience :: Developers", "Intended Audience :: System Administrators",
    "License :: OSI Approved :: MIT License", "License :: OSI Approved :: BSD License",
    "License :: OSI Approved :: Apache Software License",
    "Operating System :: OS Independent", "Operating System :: POSIX :: Linux",
    "Programming Language :: Python :: 3", "Programming Language :: Python :: 3 :: Only",
    "Programming Language :: Python :: 3.11", "Programming Language :: Python :: 3.12",
    "Programming Language :: Python :: Implementation :: PyPy",
    "Topic :: Database", "Topic :: Internet :: WWW/HTTP",
    "Topic :: Software Development :: Libraries :: Python Modules",
    "Topic :: System :: Archiving :: Mirroring", "Typing :: Typed",
]
LICENSES = ["MIT", "BSD-3-Clause", "Apache-2.0", "GPL-3.0-or-later", "ZPL 2.1"]
REQUIRES_PYTHON = [None, None, ">=3.8", ">=3.7,<4", ">=3.9", "!=3.0.*,!=3.1.*,>=2.7",
                   ">3.6", "<4,>=3.10"]
HOSTILE = ['<script>alert("pwned")</script>', '"><img src=x onerror=alert(1)>',
           "javascript:alert(document.cookie)", "</textarea><svg onload=alert(2)>",
           "{{7*7}} ${7*7} <%= 7*7 %>", "' OR '1'='1"]
UNICODE = ["Ünïcødé ☃ — façade naïve", "日本語のパッケージ", "Пакет для данных",
           "🐍 snakes all the way down", "עברית RTL text", "Zalgo z̴̢a̸l̷g̶o"]
YANK_REASONS = [None, "broken build", "security issue, use 2.x", 'bad <b>metadata</b> "quoted"']


def normalize(name: str) -> str:
    """PEP 503 normalization."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class SimFile:
    filename: str
    tag: str
    upload_time: datetime
    comment_text: str | None = None
    packagetype: str = "bdist_wheel"
    python_version: str = "py3"


@dataclass
class SimRelease:
    version: str
    metadata: dict  # summary, description, author, ... as a release's info has them
    files: list[SimFile] = field(default_factory=list)
    created: datetime = EPOCH
    yanked: bool = False
    yanked_reason: str | None = None
    quarantined: bool = False
    vulnerabilities: list[dict] = field(default_factory=list)  # OSV, as PyPI lists them
    # The Requires-Dist its wheels declare (see wheels.py): set by ``publish`` when
    # given ``requires_dist=``, so installs with dependencies resolve in the simulator.
    wheel_requires_dist: tuple[str, ...] = ()

    @property
    def requires_python(self) -> str | None:
        return self.metadata.get("requires_python")


@dataclass
class SimProject:
    name: str  # the display name
    releases: dict[str, SimRelease]  # in upload order
    last_serial: int
    created: datetime = EPOCH
    status: str = "active"  # active | archived | quarantined
    roles: list[tuple[str, str]] = field(default_factory=list)
    organization: str | None = None

    @property
    def normalized(self) -> str:
        return normalize(self.name)


def _versions(rng: random.Random, count: int) -> list[str]:
    """``count`` distinct versions in increasing PEP 440 order, with some pre/post/dev."""
    major, minor, patch = rng.randint(0, 3), rng.randint(0, 9), 0
    versions: list[str] = []
    while len(versions) < count:
        base = f"{major}.{minor}.{patch}"
        roll = rng.random()
        if roll < 0.06 and len(versions) + 2 <= count:
            versions += [f"{base}.dev{rng.randint(0, 3)}"]
        elif roll < 0.14 and len(versions) + 2 <= count:
            versions += [f"{base}{rng.choice(['a1', 'b2', 'rc1'])}"]
        versions.append(base)
        if rng.random() < 0.05 and len(versions) < count:
            versions.append(f"{base}.post1")
        roll = rng.random()
        if roll < 0.6:
            patch += 1
        elif roll < 0.9:
            minor, patch = minor + 1, 0
        else:
            major, minor, patch = major + 1, 0, 0
    return versions[:count]


def _keywords(rng: random.Random) -> str | None:
    words = rng.sample(WORDS, rng.randint(1, 4))
    return rng.choice([", ".join(words), " ".join(words), ",".join(words), "", None,
                       ", ".join(words) + ","])


def _person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def _email(person: str) -> str:
    local = re.sub(r"[^a-z]", "", person.lower().split()[0].encode("ascii", "ignore").decode())
    return f"{local or 'someone'}@example.org"


def _metadata(rng: random.Random, name: str) -> dict:
    author = _person(rng)
    maintainer = rng.choice([None, None, "", _person(rng)])
    summary = rng.choice([f"The {rng.choice(WORDS)} {rng.choice(WORDS)} toolkit"] * 6
                         + [rng.choice(UNICODE), rng.choice(HOSTILE), "", None])
    paragraphs = rng.randint(1, 6)
    description = "\n\n".join(
        f"# {name}\n" if i == 0 else " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 60)))
        for i in range(paragraphs))
    return {
        "summary": summary,
        "description": description,
        "description_content_type": rng.choice(["text/markdown", "text/x-rst", None]),
        "author": author,
        "author_email": _email(author),
        "maintainer": maintainer,
        "maintainer_email": _email(maintainer) if maintainer else maintainer,
        "license": rng.choice(LICENSES + [None, ""]),
        "license_expression": None,
        "keywords": _keywords(rng),
        "classifiers": sorted(rng.sample(CLASSIFIERS, rng.randint(0, 6))),
        "home_page": rng.choice([f"https://example.org/{normalize(name)}", None, ""]),
        "download_url": rng.choice([None, None, "", f"https://example.org/dl/{normalize(name)}"]),
        "project_urls": rng.choice([None, {"Source": f"https://example.org/src/{normalize(name)}",
                                           "Issues": f"https://example.org/issues/{normalize(name)}"}]),
        "requires_python": rng.choice(REQUIRES_PYTHON),
        "requires_dist": rng.choice([None, [], ["attrs>=20"], ["twisted[tls]>=22; python_version >= '3.8'"]]),
        "provides_extra": None,
        "platform": rng.choice([None, "", "any"]),
        "docs_url": None,
        "license_files": None,
        "dynamic": None,
    }


def older_metadata(metadata: dict, version: str) -> dict:
    """What an older release said of itself: the latest release's metadata, with the
    summary, description, content type and Requires-Dist of its own. Empty stays
    empty (null and ""); a huge description is shared, not copied per release."""
    meta = dict(metadata)
    if meta.get("summary"):
        meta["summary"] = f"{meta['summary']} (as of {version})"
    if meta.get("description") and len(meta["description"]) < 100_000:
        meta["description"] = f"{meta['description']}\n\nRelease notes of {version}."
    if meta.get("description_content_type"):
        meta["description_content_type"] = {"text/markdown": "text/x-rst"}.get(
            meta["description_content_type"], "text/markdown")
    meta["requires_dist"] = list(meta.get("requires_dist") or []) + [
        f"packaging>={version}"]
    return meta


POPULAR = range(8, 14)  # the first projects after the showcases: many depend on them
FAVOURITE = 8  # ... and a third of the data set on this one (its dependents fill pages)
UNPARSABLE = ["requests >= = 2", "not a requirement!", "foo (>=1.0", "bar; python_version >>> '3'"]


def _spelled(rng: random.Random, name: str) -> str:
    """A project name as someone may write it in Requires-Dist (PEP 503 equal)."""
    style = rng.randrange(4)
    if style == 0:
        return name
    if style == 1:
        return name.upper()
    if style == 2:
        return re.sub(r"[-_.]+", lambda m: rng.choice(["_", ".", "-", "__", "-_."]), name)
    return name.lower()


def requirements(dataset: "Dataset", index: int, name: str, base: list | None
                 ) -> list | None:
    """Requires-Dist of project ``index``'s latest release: ``base`` (on projects
    outside the data set) plus requirements on other projects of it."""
    rng = random.Random(f"{dataset.seed}/requires/{index}")
    count = rng.choice([0, 0, 1, 1, 2, 3]) if dataset.size > 1 else 0
    found = list(base or [])
    if index != FAVOURITE and dataset.size > FAVOURITE and rng.random() < 0.33:
        found.append(_spelled(rng, dataset.name(FAVOURITE)) + rng.choice(["", ">=1"]))
    for _ in range(count):
        if rng.random() < 0.5 and dataset.size > POPULAR.start:
            target = rng.choice(POPULAR[:max(1, dataset.size - POPULAR.start)])
        else:
            target = rng.randrange(dataset.size)
        if target == index:
            continue
        spelled = _spelled(rng, dataset.name(target))
        found.append(spelled + rng.choice(
            ["", ">=1.0", " (>=0.5)", "[tls]>=2,<4", "~=1.2",
             "; python_version >= '3.8'", "[extra]; sys_platform == 'linux'",
             " >=1.0 ; extra == 'docs'"]))
    roll = rng.random()
    if roll < 0.06:
        found.append(rng.choice(UNPARSABLE))
    elif roll < 0.12:
        found.append(f"{name}[all]; extra == 'full'")  # an extra on itself
    return found if found or base is not None else base


def advisory(ident: str, *, fixed_in: list[str], summary: str | None = None,
             details: str = "A flaw, found and reported.", aliases: list[str] | None = None,
             link: str | None = None, withdrawn: str | None = None) -> dict:
    """One entry of PyPI's ``vulnerabilities`` (OSV)."""
    return {"aliases": aliases if aliases is not None else [ident.replace("PYSEC", "CVE", 1)],
            "details": details, "fixed_in": fixed_in, "id": ident,
            "link": link or f"https://osv.dev/vulnerability/{ident}", "source": "osv",
            "summary": summary, "withdrawn": withdrawn}


def _is_prerelease(version: str) -> bool:
    try:
        return Version(version).is_prerelease
    except InvalidVersion:
        return False


def _latest(versions: list[str], yanked: dict) -> str | None:
    """Warehouse's pick for ``info``: not yanked, then final, then newest."""
    if not versions:
        return None
    return max(versions, key=lambda v: (v not in yanked, not _is_prerelease(v), Version(v)))


def _name(rng: random.Random, index: int) -> str:
    first, second = rng.choice(WORDS), rng.choice(WORDS)
    style = rng.randrange(5)
    if style == 0:
        return f"{first}-{second}-{index}"
    if style == 1:
        return f"{first.title()}_{second.title()}_{index}"
    if style == 2:
        return f"{first.title()}.{second}-{index}"
    if style == 3:
        return f"{first}{second.title()}{index}"
    return f"{first.upper()}__{second}..{index}"


def build_release(version: str, metadata: dict, created: datetime, n_files: int,
                  project_name: str, rng: random.Random) -> SimRelease:
    release = SimRelease(version=version, metadata=metadata, created=created)
    tags = ["py3-none-any", "py2.py3-none-any"][:n_files]
    for offset, tag in enumerate(tags):
        release.files.append(SimFile(
            filename=wheel_filename(project_name, version, tag), tag=tag,
            python_version="py3" if tag.startswith("py3") else "py2.py3",
            upload_time=created + timedelta(seconds=offset * 7,
                                            microseconds=rng.choice([0, rng.randint(1, 999999)])),
            comment_text=rng.choice([None, ""])))
    return release


class Dataset:
    """``size`` projects from ``seed``; :meth:`project` builds one on demand."""

    SHOWCASE = ("hostile", "unicode", "versions", "no-releases", "empty-fields",
                "requires-python", "many-releases", "huge-description")

    def __init__(self, size: int, seed: int = 0, heavy: bool | None = None):
        self.size = size
        self.seed = seed
        self.heavy = size >= 1000 if heavy is None else heavy
        self._names: list[str] | None = None

    def base_serial(self, index: int) -> int:
        """The journal id of project ``index``'s creation (ids have gaps, as PyPI's do)."""
        return 2 * index + 1

    @property
    def last_serial(self) -> int:
        return self.base_serial(self.size - 1) if self.size else 0

    def name(self, index: int) -> str:
        return _name(random.Random(f"{self.seed}/name/{index}"), index)

    def names(self) -> list[str]:
        """All display names, by index (computed once)."""
        if self._names is None:
            self._names = [self.name(i) for i in range(self.size)]
        return self._names

    def index_of(self, normalized: str) -> int | None:
        """The index of the project with this normalized name, or None."""
        match = re.search(r"(\d+)$", normalized)
        if not match or len(match.group(1)) > 7:
            return None
        index = int(match.group(1))
        if index < self.size and normalize(self.name(index)) == normalized:
            return index
        return None

    def created(self, index: int) -> datetime:
        return EPOCH + timedelta(minutes=index * 3)

    def project(self, index: int) -> SimProject:
        rng = random.Random(f"{self.seed}/project/{index}")
        name = self.name(index)
        created = self.created(index)
        case = self.SHOWCASE[index] if index < len(self.SHOWCASE) else None
        if case in ("many-releases", "huge-description") and not self.heavy:
            case = None
        metadata = _metadata(rng, name)
        metadata["requires_dist"] = requirements(self, index, name, metadata["requires_dist"])
        count = rng.choice([1, 1, 1, 2, 3, 4, 5, 8, 13, 20])
        versions = _versions(rng, count)
        yanked = {v: rng.choice(YANK_REASONS) for v in versions if rng.random() < 0.05}
        no_files = {v for v in versions if rng.random() < 0.03}
        per_release_python = {}
        if case == "hostile":
            metadata.update(summary=HOSTILE[0], author=HOSTILE[1], maintainer=HOSTILE[3],
                            keywords=f"{HOSTILE[4]}, <b>bold</b>, {HOSTILE[2]}",
                            description=f"<h1>{HOSTILE[0]}</h1>\n\n{HOSTILE[1]}",
                            home_page=HOSTILE[2], license=HOSTILE[5])
        elif case == "unicode":
            metadata.update(summary=UNICODE[0] + " " + UNICODE[3], author="Jürgen Müller",
                            maintainer="Zoë Núñez", keywords="données, データ, 🐍")
        elif case == "versions":
            versions = ["1.0.0", "1.1.0a1", "1.1.0", "1.1.0.post1", "1.2.0", "2.0.0.dev1"]
            yanked = {"1.2.0": "broken build", "1.1.0a1": None}
            no_files = {"2.0.0.dev1"}
        elif case == "no-releases":
            versions = []
        elif case == "empty-fields":
            metadata.update(summary="", description="", author=None, author_email=None,
                            maintainer=None, maintainer_email=None, keywords="",
                            classifiers=[], license=None, home_page=None, download_url=None,
                            project_urls=None, requires_python=None, requires_dist=None,
                            description_content_type=None, platform=None)
        elif case == "requires-python":
            versions = ["0.9", "1.0", "1.1"]
            per_release_python = {"0.9": "<3", "1.0": ">=3.8,<3.99", "1.1": ">3.10"}
            yanked, no_files = {}, set()
        elif case == "many-releases":
            versions = [f"1.0.{n}" for n in range(3000)]
        elif case == "huge-description":
            line = "pypioncouch keeps every byte of a long description. ☃\n"
            metadata["description"] = line * (5 * 1024 * 1024 // len(line.encode()))
        releases = {}
        latest = _latest(versions, yanked)
        for number, version in enumerate(versions):
            release_meta = dict(metadata) if version == latest else older_metadata(
                metadata, version)
            if version in per_release_python:
                release_meta["requires_python"] = per_release_python[version]
            moment = created + timedelta(days=number * 11, seconds=rng.randint(0, 86399))
            n_files = 0 if version in no_files else (2 if rng.random() < 0.2 else 1)
            release = build_release(version, release_meta, moment, n_files, name, rng)
            if version in yanked:
                release.yanked, release.yanked_reason = True, yanked[version]
            releases[version] = release
        self._advisories(index, case, releases, latest)
        owner = re.sub(r"[^a-z]", "", metadata["author"].lower().encode("ascii", "ignore").decode()
                       if metadata["author"] else "") or "owner"
        roles = [("Owner", owner)] + ([("Maintainer", "helper")] if rng.random() < 0.3 else [])
        return SimProject(name=name, releases=releases, last_serial=self.base_serial(index),
                          created=created, roles=roles)

    def _advisories(self, index: int, case: str | None, releases: dict[str, SimRelease],
                    latest: str | None) -> None:
        """Advisories: open on the latest release, fixed in a later release, withdrawn."""
        if not releases or latest is None:
            return
        rng = random.Random(f"{self.seed}/advisories/{index}")
        year = 2020 + index % 6
        ident = f"PYSEC-{year}-{index + 100}"
        order = list(releases)  # upload order = version order here
        if case == "hostile":
            releases[latest].vulnerabilities.append(advisory(
                f"PYSEC-{year}-<script>alert(9)</script>", fixed_in=[],
                summary=HOSTILE[0], details=HOSTILE[1],
                aliases=[HOSTILE[3], "CVE-2024-0001"], link=HOSTILE[2]))
        elif case == "unicode":
            releases[latest].vulnerabilities.append(advisory(
                ident, fixed_in=[], summary="Not a flaw after all",
                withdrawn="2024-03-01T12:00:00Z"))
        elif case == "versions":
            fixed = advisory(ident, fixed_in=[latest], summary="Fixed in the latest release")
            for version in order[:order.index(latest)]:
                releases[version].vulnerabilities.append(dict(fixed))
        elif case == "requires-python":
            releases[latest].vulnerabilities += [
                advisory(ident, fixed_in=[], summary="Open, no fix yet",
                         aliases=[f"CVE-{year}-{index + 3100}", f"GHSA-{index:04d}-abcd-efgh"]),
                advisory(f"PYSEC-{year}-{index + 900}", fixed_in=["2.0"],
                         summary="Fixed in a release to come")]
        elif index == FAVOURITE:  # what many require: who is exposed is a long list
            releases[latest].vulnerabilities.append(advisory(
                ident, fixed_in=[f"{latest}.post1"], summary="Denial of service"))
        elif case is None:
            roll = rng.random()
            if roll < 0.07:
                releases[latest].vulnerabilities.append(advisory(
                    ident, fixed_in=[rng.choice(["99.0", f"{latest}.post9"])],
                    summary=rng.choice([None, "Remote code execution", rng.choice(UNICODE)])))
            elif roll < 0.12 and len(order) > 1 and order[0] != latest:
                releases[order[0]].vulnerabilities.append(advisory(
                    ident, fixed_in=[order[1]], summary="Fixed in the next release"))
            elif roll < 0.14:
                releases[latest].vulnerabilities.append(advisory(
                    ident, fixed_in=[], withdrawn="2023-11-05T08:00:00Z"))
