"""Browse PyPI: the pages under ``/browse/``, read from the design document's views.

All projects (name search, Python-version filter), by classifier (a tree with counts;
several combined; a parent selects its children), by version specifier, by author,
maintainer or keyword, one page per project, recent releases. Lists page by key
(``startkey``), never ``skip``-by-offset, so a far page costs what the first does.
Every list also answers JSON (``Accept: application/json``) for scripts.
Templates autoescape: every string from PyPI shows as text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlencode

from klein import Klein
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version
from twisted.logger import Logger

from pypioncouch import couchapp, model
from pypioncouch.couch import CouchError, NotFound
from pypioncouch.opml import ATTACHMENT

log = Logger()

PAGE = 50
SCAN_LIMIT = 2000  # rows read at most to fill one filtered page
HIGH = "\ufff0"


class BadQuery(ValueError):
    """A query parameter a person typed wrong; the page says which and why."""


def _arg(request, name: str, default: str = "") -> str:
    values = request.args.get(name.encode())
    return values[0].decode("utf-8", "replace").strip() if values else default


def _key_arg(request, name: str) -> Any:
    raw = _arg(request, name)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise BadQuery(f"{name} must be a key as this site's own links give it") from None


def select_versions(versions: list[str], specifier: str, prereleases: bool = False
                    ) -> list[str]:
    """The versions ``specifier`` selects, as packaging (and pip) decide: pre-releases
    only when asked, or when the specifier names one, or when nothing else matches."""
    spec = SpecifierSet(specifier)
    valid = []
    for version in versions:
        try:
            Version(version)
            valid.append(version)
        except InvalidVersion:
            continue
    chosen = set(spec.filter(valid, prereleases=True if prereleases else None))
    return [v for v in versions if v in chosen]


def python_matches(requires_python: str | None, python: str) -> bool:
    """Whether a project whose Requires-Python is ``requires_python`` runs on ``python``."""
    if not requires_python:
        return True
    try:
        return SpecifierSet(requires_python).contains(python, prereleases=True)
    except InvalidSpecifier:
        return True  # PyPI holds some unparsable values; do not hide those projects


@dataclass
class Page:
    rows: list[dict]
    next: Any = None  # key to pass as ``after``
    prev: Any = None  # key to pass as ``before``


async def keyset_page(db, view: str, *, low: Any, high: Any, after: Any = None,
                      before: Any = None, descending: bool = False,
                      accept: Callable[[dict], bool] = lambda row: True,
                      limit: int | None = None, reduce: bool | None = None) -> Page:
    """One page of ``view`` between ``low`` and ``high`` (in view order), starting after
    the key ``after`` or ending before ``before``; rows failing ``accept`` are skipped."""
    limit = limit or PAGE
    backwards = before is not None
    order_desc = descending != backwards
    start = before if backwards else after
    first, last = (high, low) if order_desc else (low, high)
    params = {"descending": order_desc, "endkey": last, "limit": limit + 1}
    if reduce is not None:
        params["reduce"] = reduce
    rows: list[dict] = []
    scanned, more, cursor = 0, False, start
    while len(rows) <= limit and scanned < SCAN_LIMIT:
        query = dict(params, startkey=cursor if cursor is not None else first)
        if cursor is not None:
            query["skip"] = 1
        batch = (await db.view(couchapp.NAME, view, **query))["rows"]
        scanned += len(batch)
        for row in batch:
            if accept(row):
                rows.append(row)
        if len(batch) < params["limit"]:
            break
        cursor = batch[-1]["key"]
    more = len(rows) > limit or scanned >= SCAN_LIMIT
    rows = rows[:limit]
    if backwards:
        rows.reverse()
        return Page(rows, next=rows[-1]["key"] if rows else None,
                    prev=rows[0]["key"] if rows and more else None)
    return Page(rows, next=rows[-1]["key"] if rows and more else None,
                prev=rows[0]["key"] if rows and after is not None else None)


def _pager_links(path: str, params: dict, page: Page) -> dict:
    def link(name, key):
        if key is None:
            return None
        query = {k: v for k, v in params.items() if v}
        query[name] = json.dumps(key, ensure_ascii=False)
        return f"{path}?{urlencode(query)}"
    return {"next": link("after", page.next), "prev": link("before", page.prev)}


class BrowsePages:
    """The ``/browse/`` pages of a :class:`~pypioncouch.web.app.WebFront`."""

    app = Klein()

    def __init__(self, front):
        self.front = front
        self.db = front.db

    def respond(self, request, template: str, data: dict, status: int = 200, **extra):
        request.setResponseCode(status)
        request.setHeader("Vary", "Accept")
        if self.front.wants_json(request):
            request.setHeader("Content-Type", "application/json")
            return json.dumps(data, ensure_ascii=False).encode("utf-8")
        request.setHeader("Content-Type", "text/html; charset=utf-8")
        return self.front.render(template, data=data, **extra)

    @app.handle_errors(BadQuery)
    def bad_query(self, request, failure):
        return self.respond(request, "error.html", {"error": str(failure.value)}, 400)

    @app.handle_errors(CouchError)
    def couch_trouble(self, request, failure):
        log.warn("browse: CouchDB: {error}", error=failure.value)
        request.setHeader("Retry-After", "5")
        return self.respond(request, "error.html",
                            {"error": "the database is not answering; try again soon"}, 503)

    # -- project lists -------------------------------------------------------------------

    async def _project_list(self, request, title: str, view: str, low, high,
                            key_of: Callable[[dict], str] | None = None, **params):
        python = _arg(request, "python")
        if python:
            try:
                Version(python)
            except InvalidVersion:
                raise BadQuery(f"python={python!r} is not a version such as 3.12") from None
        after, before = _key_arg(request, "after"), _key_arg(request, "before")
        values: dict[str, list] = {}

        def accept(row):
            if view == "projects":
                values[row["id"]] = row["value"]
                return not python or python_matches(project_row(row["id"], row["value"])
                                                    ["requires_python"], python)
            return True

        page = await keyset_page(self.db, view, low=low, high=high, after=after,
                                 before=before, accept=accept, **params)
        ids = [row["id"] for row in page.rows]
        if view != "projects":
            found = await self.db.view(couchapp.NAME, "projects", keys=ids)
            values = {row["key"]: row["value"] for row in found["rows"] if "value" in row}
            if python:
                ids = [i for i in ids if i in values and python_matches(
                    project_row(i, values[i])["requires_python"], python)]
        projects = [project_row(i, values[i]) for i in ids if i in values]
        path = request.path.decode("utf-8", "replace")
        data = {"title": title, "projects": projects, "python": python,
                **_pager_links(path, {"q": _arg(request, "q"), "python": python}, page)}
        return data

    @app.route("/", methods=["GET", "HEAD"])
    async def all_projects(self, request):
        query = _arg(request, "q")
        prefix = model.normalize(query) if query else ""
        data = await self._project_list(
            request, f"Projects starting with “{query}”" if query else "All projects",
            "projects", prefix, prefix + HIGH)
        data["q"] = query
        return self.respond(request, "projects.html", data)

    @app.route("/author/<path:name>", methods=["GET", "HEAD"])
    async def by_author(self, request, name):
        return await self._people(request, "author", name)

    @app.route("/maintainer/<path:name>", methods=["GET", "HEAD"])
    async def by_maintainer(self, request, name):
        return await self._people(request, "maintainer", name)

    async def _people(self, request, role: str, name: str):
        folded = name.lower()
        data = await self._project_list(request, f"Projects by {role} “{name}”",
                                        f"by_{role}", [folded], [folded, HIGH], reduce=False)
        return self.respond(request, "projects.html", data)

    @app.route("/keyword/<path:word>", methods=["GET", "HEAD"])
    async def by_keyword(self, request, word):
        folded = word.lower()
        data = await self._project_list(request, f"Projects with keyword “{word}”",
                                        "by_keyword", [folded], [folded, HIGH], reduce=False)
        return self.respond(request, "projects.html", data)

    # -- classifiers ------------------------------------------------------------------

    @app.route("/classifiers/", methods=["GET", "HEAD"])
    async def classifiers(self, request):
        selected = [v.decode("utf-8", "replace").strip()
                    for v in request.args.get(b"c", []) if v.strip()]
        counts = await self.db.view(couchapp.NAME, "by_classifier", group_level=1)
        tree = classifier_tree({row["key"][0]: row["value"] for row in counts["rows"]})
        data = {"title": "Projects by classifier", "selected": selected, "tree": tree,
                "projects": [], "next": None, "prev": None}
        if selected:
            data.update(await self._classified(request, selected))
        return self.respond(request, "classifiers.html", data)

    async def _ids_under(self, classifier: str) -> set[str]:
        """Projects with ``classifier`` or one of its children (PyPI's prefix match)."""
        ids: set[str] = set()
        for low, high in (([classifier], [classifier, HIGH]),
                          ([classifier + " :: "], [classifier + " :: " + HIGH])):
            rows = (await self.db.view(couchapp.NAME, "by_classifier", startkey=low,
                                       endkey=high, reduce=False))["rows"]
            ids.update(row["key"][1] for row in rows)
        return ids

    async def _classified(self, request, selected: list[str]) -> dict:
        matching: set[str] | None = None
        for classifier in selected:
            ids = await self._ids_under(classifier)
            matching = ids if matching is None else matching & ids
        ordered = sorted(matching or ())
        after, before = _key_arg(request, "after"), _key_arg(request, "before")
        if before is not None:
            end = _bisect(ordered, before)
            chosen = ordered[max(0, end - PAGE):end]
            page = Page([], next=chosen[-1] if chosen else None,
                        prev=chosen[0] if chosen and end - PAGE > 0 else None)
        else:
            begin = _bisect(ordered, after, after=True) if after is not None else 0
            chosen = ordered[begin:begin + PAGE]
            page = Page([], next=chosen[-1] if begin + PAGE < len(ordered) else None,
                        prev=chosen[0] if chosen and begin > 0 else None)
        found = await self.db.view(couchapp.NAME, "projects", keys=chosen)
        projects = [project_row(row["key"], row["value"])
                    for row in found["rows"] if "value" in row]
        params = [("c", c) for c in selected]
        links = {}
        for name, key in (("next", page.next), ("prev", page.prev)):
            links[name] = None if key is None else "/browse/classifiers/?" + urlencode(
                params + [("after" if name == "next" else "before", json.dumps(key))])
        return {"projects": projects, "total": len(ordered), **links}

    # -- one project, specifiers, recent releases ---------------------------------------

    @app.route("/project/<name>", methods=["GET", "HEAD"])
    async def project(self, request, name):
        if not model.is_valid_project_name(name):
            return self.respond(request, "error.html", {"error": "no such project"}, 404)
        key = model.normalize(name)
        if key != name:
            request.setResponseCode(301)
            request.setHeader("Location", f"/browse/project/{key}")
            return b""
        entry = await self.front.project(key)
        if entry is None:
            return self.respond(request, "error.html",
                                {"error": f"no project {name} here"}, 404)
        data = project_page_data(entry.project, entry.releases)
        return self.respond(request, "project.html", data)

    @app.route("/project/<name>/opml.xml", methods=["GET", "HEAD"])
    async def project_opml(self, request, name):
        if not model.is_valid_project_name(name):
            return self.respond(request, "error.html", {"error": "no such project"}, 404)
        try:
            content, _ = await self.db.get_attachment(model.normalize(name), ATTACHMENT)
        except NotFound:
            return self.respond(request, "error.html",
                                {"error": "no OPML for this project (yet)"}, 404)
        request.setHeader("Content-Type", "text/x-opml; charset=utf-8")
        return content

    @app.route("/specifier/", methods=["GET", "HEAD"])
    async def specifier(self, request):
        text = _arg(request, "req")
        pre = _arg(request, "pre") in ("1", "on", "true", "yes")
        data = {"title": "Releases by version specifier", "req": text, "pre": pre,
                "project": None, "releases": [], "error": None}
        if text:
            try:
                requirement = Requirement(text)
            except InvalidRequirement as error:
                raise BadQuery(f"not a requirement such as twisted>=20,<23: {error}") from None
            key = model.normalize(requirement.name)
            entry = await self.front.project(key)
            if entry is None:
                raise BadQuery(f"no project {requirement.name} here")
            by_version = {r["version"]: r for r in entry.releases}
            chosen = select_versions(list(entry.project.get("versions") or []),
                                     str(requirement.specifier), pre)
            chosen.sort(key=model.version_sort_key, reverse=True)
            data.update(project={"key": key, "name": entry.project["name"]},
                        specifier=str(requirement.specifier),
                        releases=[_release_data(by_version[v]) for v in chosen
                                  if v in by_version])
        return self.respond(request, "specifier.html", data)

    @app.route("/recent/", methods=["GET", "HEAD"])
    async def recent(self, request):
        page = await keyset_page(self.db, "releases_by_time", low=[], high=[{}],
                                 after=_key_arg(request, "after"),
                                 before=_key_arg(request, "before"), descending=True)
        releases = [{"key": row["value"][0], "name": row["value"][1],
                     "version": row["value"][2], "yanked": row["value"][3],
                     "uploaded": _time_text(row["key"][:6])} for row in page.rows]
        data = {"title": "Recent releases", "releases": releases,
                **_pager_links("/browse/recent/", {}, page)}
        return self.respond(request, "recent.html", data)


def project_row(key: str, value: list) -> dict:
    """A ``projects`` view row as the pages use it (tolerates the shorter rows of an
    older design document while a new one is being built)."""
    value = list(value) + [None] * (6 - len(value))
    return {"key": key, "name": value[0], "serial": value[1], "status": value[2],
            "summary": value[3], "version": value[4], "requires_python": value[5]}


def _bisect(ordered: list[str], key: Any, after: bool = False) -> int:
    import bisect

    key = str(key)
    return bisect.bisect_right(ordered, key) if after else bisect.bisect_left(ordered, key)


def classifier_tree(counts: dict[str, int]) -> list[dict]:
    """``{"A :: B": n}`` -> a nested list of ``{name, path, count, children}``."""
    root: dict = {"children": {}}
    for classifier, count in sorted(counts.items()):
        node = root
        parts = classifier.split(" :: ")
        for depth, part in enumerate(parts):
            path = " :: ".join(parts[: depth + 1])
            node = node["children"].setdefault(part, {"name": part, "path": path,
                                                      "count": None, "children": {}})
        node["count"] = count

    def listed(node):
        return [{**child, "children": listed(child)} for child in node["children"].values()]
    return listed(root)


def _time_text(parts) -> str:
    if not parts or len(parts) < 6:
        return ""
    return "{:04d}-{:02d}-{:02d} {:02d}:{:02d}:{:02d} UTC".format(*parts[:6])


def _release_data(release: dict) -> dict:
    return {"version": release["version"], "yanked": release.get("yanked"),
            "yanked_reason": release.get("yanked_reason"),
            "requires_python": release.get("requires_python"),
            "uploaded": _time_text(release.get("upload_time")),
            "files": [{"filename": f.get("filename"), "url": f.get("url"),
                       "size": f.get("size"), "packagetype": f.get("packagetype"),
                       "sha256": (f.get("digests") or {}).get("sha256")}
                      for f in release.get("files") or []]}


def project_page_data(project: dict, releases: list[dict]) -> dict:
    """What the project page shows, from its documents (pure)."""
    by_version = {r["version"]: r for r in releases}
    latest = by_version.get(project.get("latest_version")) or {}
    info = latest.get("info") or project.get("info") or {}
    ordered = sorted(releases, key=lambda r: model.version_sort_key(r["version"]),
                     reverse=True)
    key = project["_id"]
    return {
        "title": project.get("name") or key, "key": key, "name": project.get("name"),
        "status": project.get("status"), "version": project.get("latest_version"),
        "summary": project.get("summary"), "description": info.get("description"),
        "description_content_type": info.get("description_content_type"),
        "author": project.get("author"), "author_email": project.get("author_email"),
        "maintainer": project.get("maintainer"),
        "maintainer_email": project.get("maintainer_email"),
        "license": project.get("license"), "home_page": project.get("home_page"),
        "project_urls": project.get("project_urls") or {},
        "requires_python": project.get("requires_python"),
        "keywords": project.get("keywords") or [],
        "classifiers": project.get("classifiers") or [],
        "last_serial": project.get("last_serial"),
        "releases": [_release_data(r) for r in ordered],
        "links": {"opml": f"/browse/project/{key}/opml.xml", "simple": f"/simple/{key}/",
                  "json": f"/pypi/{key}/json"},
    }
