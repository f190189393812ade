"""Browse PyPI: the pages under ``/browse/``, read from the design document's views.

All projects (name search, Python-version filter), by classifier (a tree with counts;
several combined; a parent selects its children), by version specifier, by author,
maintainer or keyword, one page per project (its description rendered as PyPI renders
it), recent releases, the dependents of a project (who requires it), and the projects
with open advisories. Lists page by key
(``startkey``), never ``skip``-by-offset, so a far page costs what the first does.
Every list also answers JSON (``Accept: application/json``) for scripts.
Templates autoescape: every string from PyPI shows as text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Awaitable, Callable
from urllib.parse import urlencode, urlsplit

from klein import Klein
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version
from twisted.logger import Logger

from pypioncouch import couchapp, model
from pypioncouch.couch import CouchError, NotFound
from pypioncouch.opml import ATTACHMENT
from pypioncouch.web.app import NotAcceptable, not_acceptable, servable_name, wants_json
from pypioncouch.web.descriptions import DescriptionCache
from pypioncouch.web.refresh import Refreshed

log = Logger()

PAGE = 50
SCAN_LIMIT = 2000  # rows read at most to fill one filtered page
HIGH = "\ufff0"
BAD_CURSOR = "after/before must be a key as this site's own links give it"
MAX_CURSOR = 2000  # characters; keeps the URL of the CouchDB query it becomes modest
MAX_ARG = 500  # characters of a search (names, classifiers, requirements): the same


class BadQuery(ValueError):
    """A query parameter a person typed wrong; the page says which and why."""


def _arg(request, name: str, default: str = "", limit: int | None = MAX_ARG) -> str:
    values = request.args.get(name.encode())
    value = values[0].decode("utf-8", "replace").strip() if values else default
    return value if limit is None else _within(name, value, limit)


def _within(name: str, value: str, limit: int = MAX_ARG) -> str:
    """``value``, unless too long for the CouchDB request it becomes (a 503 then)."""
    if len(value) > limit:
        raise BadQuery(f"{name}= is too long: at most {limit:,} characters")
    return value


def _key_arg(request, name: str) -> Any:
    """A cursor from the URL: a view key as this site's links give it (a name, or a
    flat list of strings and numbers, perhaps ending with ``{}``, the end of a list,
    well under MAX_CURSOR characters)."""
    raw = _arg(request, name, limit=None)
    if not raw:
        return None
    if len(raw) > MAX_CURSOR:
        raise BadQuery(BAD_CURSOR)
    try:
        key = json.loads(raw)
    except (ValueError, RecursionError):  # (a few hundred "[" exhaust the parser)
        raise BadQuery(BAD_CURSOR) from None
    scalars = (str, int, float, bool, type(None))
    parts = key[:-1] if isinstance(key, list) and key and key[-1] == {} else key
    if not isinstance(key, (str, list)) or \
            (isinstance(key, list) and not all(isinstance(part, scalars) for part in parts)):
        raise BadQuery(BAD_CURSOR)
    return key


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
    """Whether a project whose Requires-Python is ``requires_python`` runs on ``python``:
    on one of its releases, when it names a series (3.8: a user on 3.8.20 installs
    what wants ``>=3.8.1``)."""
    if not requires_python:
        return True
    try:
        spec = SpecifierSet(requires_python)
        return any(spec.contains(one, prereleases=True) for one in _releases_told_apart(
            python, spec))
    except (InvalidSpecifier, TypeError):  # (another index's 3, not "3")
        return True  # PyPI holds some unparsable values; do not hide those projects


def _releases_told_apart(python: str, spec: SpecifierSet) -> list[str]:
    """``python`` itself; for a series (3.8), also each release of it a bound of
    ``spec`` names and the one after it: between them, ``spec`` says the same (a
    bound of the series itself names 3.8.0: ``>3.8`` holds of 3.8.1)."""
    series = Version(python).release
    found = [python]
    if len(series) != 2:
        return found
    for one in spec:
        try:
            bound = Version(one.version.removesuffix(".*"))
        except InvalidVersion:  # (=== of any text)
            continue
        if bound.release[:2] == series:
            micro = bound.release[2] if len(bound.release) > 2 else 0
            found += [f"{series[0]}.{series[1]}.{m}" for m in (micro, micro + 1)]
    return found


@dataclass
class Page:
    rows: list[dict]
    next: Any = None  # key to pass as ``after``
    prev: Any = None  # key to pass as ``before``


Keep = Callable[[list[dict]], Awaitable[list[dict]]]


async def keep_all(rows: list[dict]) -> list[dict]:
    return rows


def _check_cursor(key: Any, low: list, high: list) -> None:
    """A cursor from a URL must lie in the list's own facet (else CouchDB would be asked
    for a range that cannot match, or rows of another list)."""
    if key is None:
        return
    common = []
    for a, b in zip(low, high):
        if a != b:
            break
        common.append(a)
    n = len(common)
    within = isinstance(key, list) and key[:n] == common
    if within and n < min(len(low), len(high)) and isinstance(low[n], str) \
            and isinstance(high[n], str):  # a name prefix: the cursor must share it
        within = len(key) > n and isinstance(key[n], str) and low[n] <= key[n] <= high[n]
    if not within:
        raise BadQuery(BAD_CURSOR)


def _at_cursor(key: Any, cursor: Any) -> bool:
    return key == cursor or (isinstance(key, list) and isinstance(cursor, list)
                             and len(key) == len(cursor) and key[:1] == cursor[:1]
                             and key[-1] == cursor[-1])


async def keyset_page(db, *, low: list, high: list, after: Any = None, before: Any = None,
                      descending: bool = False, keep: Keep = keep_all,
                      limit: int | None = None) -> Page:
    """One page of the catalog view between ``low`` and ``high`` (in view order),
    starting after the key ``after`` or ending before ``before``. ``keep`` filters each
    batch read (it may query, e.g. to intersect with another facet); at most
    ``SCAN_LIMIT`` rows are read to fill a page."""
    _check_cursor(after, low, high)
    _check_cursor(before, low, high)
    limit = limit or PAGE
    backwards = before is not None
    order_desc = descending != backwards
    start = before if backwards else after
    first, last = (high, low) if order_desc else (low, high)
    # limit + 2: a page after a cursor reads the cursor's own row too, then one more
    # to know whether the list goes on (not a second query for it).
    params = {"descending": order_desc, "endkey": last, "limit": limit + 2, "reduce": False}
    rows: list[dict] = []
    scanned, cursor, ended = 0, start, False
    while len(rows) <= limit and scanned < SCAN_LIMIT:
        query = dict(params, startkey=cursor if cursor is not None else first)
        try:
            batch = await couchapp.query(db, **query)
        except CouchError as error:
            if error.status == 400:  # a cursor outside the list's range
                raise BadQuery("after/before is outside this list") from None
            raise
        scanned += len(batch)
        # Keys end with the document id, so they are unique: the cursor's own row is
        # dropped by key (not skipped by count, in case it was deleted meanwhile), or
        # by its id: Apache CouchDB's collation makes "José" and "Jose\u0301" one
        # string, so the row may come back with the other spelling of the cursor's.
        rows += await keep([row for row in batch if not _at_cursor(row["key"], cursor)])
        if len(batch) < params["limit"]:
            ended = True
            break
        cursor = batch[-1]["key"]
    full = len(rows) > limit
    rows = rows[:limit]
    # The list goes on after the last row shown, or, when the scan limit ended a sparse
    # page early, after the last row read.
    onward = cursor if not full and not ended else None
    # A page the scan left empty still links back to where it came from: from the
    # last key it read (cursors are exclusive), or from the list's end if it read none.
    back = (cursor if cursor != start else last) if not rows else None
    if backwards:
        rows.reverse()
        return Page(rows, next=rows[-1]["key"] if rows else back,
                    prev=rows[0]["key"] if rows and full else onward)
    return Page(rows, next=rows[-1]["key"] if rows and full else onward,
                prev=rows[0]["key"] if rows and after is not None else
                (back if after is not None else None))


def _named(request, in_path: str | None) -> str:
    """The author, maintainer or keyword a list is of: from the path, or ``?name=``."""
    named = in_path if in_path is not None else \
        (request.args.get(b"name") or [b""])[0].decode("utf-8", "replace")
    return _within("name", named)


def _pager_links(path: str, params: list[tuple[str, str]], page: Page) -> dict:
    """Links to the next and previous pages: the same query, another cursor."""
    def link(name, key):
        if key is None:
            return None
        query = [(k, v) for k, v in params if v and k not in ("after", "before")]
        query.append((name, json.dumps(key, ensure_ascii=False)))
        return f"{path}?{urlencode(query)}"
    return {"next": link("after", page.next), "prev": link("before", page.prev)}


def _query_pairs(request) -> list[tuple[str, str]]:
    return [(k.decode("utf-8", "replace"), v.decode("utf-8", "replace"))
            for k, values in request.args.items() for v in values]


class BrowsePages:
    """The ``/browse/`` pages, from the catalog view of ``db``; project pages read
    through the web front's cache (``read_project``)."""

    app = Klein()

    def __init__(self, db, *, reactor, render, read_project):
        self.db = db
        self.render = render  # (template, **context) -> bytes
        self.read_project = read_project  # key -> CachedProject or None (cached reads)
        self.descriptions = DescriptionCache(reactor)  # rendered once per release
        self.classifier_counts = Refreshed(self._count_classifiers, reactor,
                                           name="classifier counts")

    def respond(self, request, template: str, data: dict, status: int = 200, **extra):
        request.setHeader("Vary", "Accept")
        # An error page goes out whatever the client accepts (no 406 for a 404).
        as_json = wants_json(request, strict=status < 400)
        request.setResponseCode(status)
        if as_json:
            request.setHeader("Content-Type", "application/json")
            # (a lone surrogate in metadata, which CouchDB keeps, cannot be UTF-8: it
            # goes out as "?" rather than failing the page, and every page after it)
            return json.dumps(data, ensure_ascii=False).encode("utf-8", "replace")
        request.setHeader("Content-Type", "text/html; charset=utf-8")
        # The pages run no script; nor may anything in PyPI's data (descriptions are
        # sanitized already: this is the second lock).
        request.setHeader("Content-Security-Policy",
                          "script-src 'none'; object-src 'none'; base-uri 'none'")
        return self.render(template, data=data, **extra)

    @app.handle_errors(NotAcceptable)
    def not_acceptable(self, request, failure):
        return not_acceptable(request, failure.value)

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

    async def _project_values(self, ids: list[str]) -> dict[str, list]:
        """The ``["name", project]`` row values of ``ids`` (those that exist)."""
        rows = await couchapp.query(self.db, keys=[["name", i] for i in ids], reduce=False)
        return {row["id"]: row["value"] for row in rows if row.get("value")}

    async def _project_list(self, request, title: str, low: list, high: list,
                            keep: Keep = keep_all, key_of: Callable = lambda key: key,
                            extra: Callable[[dict], dict] = lambda row: {}) -> dict:
        """A page of projects from the catalog rows between ``low`` and ``high`` that
        ``keep`` keeps, narrowed to ``?python=``; ``key_of`` turns a cursor from the
        URL into a key of this range; ``extra`` adds fields to a project from its row."""
        python = _arg(request, "python")
        if python:
            try:
                Version(python)
            except InvalidVersion:
                raise BadQuery(f"python={python!r} is not a version such as 3.12") from None
        values: dict[str, list] = {}

        async def keep_projects(batch):
            batch = await keep(batch)
            if not batch:
                return []
            if batch[0]["key"][0] == "name":
                found = {row["id"]: row["value"] for row in batch}
            else:
                found = await self._project_values([row["id"] for row in batch])
            values.update(found)
            shown = {key: project_row(key, value) for key, value in found.items()}
            # (a quarantined project has a name row, and no other: PyPI lists it nowhere)
            # (with ``python``, a project with no release runs on nothing: left out)
            return [row for row in batch if row["id"] in shown
                    and shown[row["id"]]["status"] != "quarantined" and (
                        not python or shown[row["id"]]["version"] is not None
                        and python_matches(shown[row["id"]]["requires_python"], python))]

        after, before = _key_arg(request, "after"), _key_arg(request, "before")
        page = await keyset_page(self.db, low=low, high=high, keep=keep_projects,
                                 after=None if after is None else key_of(after),
                                 before=None if before is None else key_of(before))
        projects = [{**project_row(row["id"], values[row["id"]]), **extra(row)}
                    for row in page.rows]
        path = request.path.decode("utf-8", "replace")
        return {"title": title, "projects": projects, "python": python,
                **_pager_links(path, _query_pairs(request), page)}

    @app.route("/", methods=["GET", "HEAD"])
    async def all_projects(self, request):
        query = _arg(request, "q")
        prefix = model.normalize(query) if query else ""
        low, high = (["name", prefix], ["name", prefix + HIGH]) if prefix else \
            couchapp.facet_range("name")
        data = await self._project_list(
            request, f"Projects starting with “{query}”" if query else "All projects",
            low, high, key_of=lambda key: ["name", key] if isinstance(key, str) else key)
        # (a bare name is how links of versions before the catalog view gave it)
        data["q"] = query
        return self.respond(request, "projects.html", data)

    # The pages link ``/browse/author/?name=...``: any text survives a query string,
    # where a path loses "//", ".", "..", a newline. (The path form stays for old links.)
    @app.route("/author/", methods=["GET", "HEAD"])
    @app.route("/author/<path:name>", methods=["GET", "HEAD"])
    async def by_author(self, request, name=None):
        name = _named(request, name)
        return await self._by_facet(request, "author", name, f"Projects by author “{name}”")

    @app.route("/maintainer/", methods=["GET", "HEAD"])
    @app.route("/maintainer/<path:name>", methods=["GET", "HEAD"])
    async def by_maintainer(self, request, name=None):
        name = _named(request, name)
        return await self._by_facet(request, "maintainer", name,
                                    f"Projects by maintainer “{name}”")

    @app.route("/keyword/", methods=["GET", "HEAD"])
    @app.route("/keyword/<path:word>", methods=["GET", "HEAD"])
    async def by_keyword(self, request, word=None):
        word = _named(request, word)
        return await self._by_facet(request, "keyword", word,
                                    f"Projects with keyword “{word}”")

    async def _by_facet(self, request, facet: str, value: str, title: str):
        folded = value.lower()
        low, high = couchapp.facet_range(facet, folded)

        def key_of(cursor):
            # Apache CouchDB collates "José" and its decomposed spelling as one string:
            # a row of either ends a page, and the cursor goes on with the value asked.
            return [facet, folded, cursor[-1]] \
                if isinstance(cursor, list) and len(cursor) == 3 else cursor

        data = await self._project_list(request, title, low, high, key_of=key_of)
        data["name"] = value  # (the filter form keeps it)
        return self.respond(request, "projects.html", data)

    # -- classifiers ------------------------------------------------------------------

    async def _count_classifiers(self) -> dict[str, int]:
        """Projects per classifier and per parent prefix."""
        low, high = couchapp.facet_range("classifier")
        rows = await couchapp.query(self.db, startkey=low, endkey=high, group_level=2,
                                    timeout=3600)
        return {row["key"][1]: row["value"] for row in rows}

    @app.route("/classifiers/", methods=["GET", "HEAD"])
    async def classifiers(self, request):
        selected = list(dict.fromkeys(_within("c", v.decode("utf-8", "replace").strip())
                                      for v in request.args.get(b"c", []) if v.strip()))
        counts = await self.classifier_counts.get()
        data = {"title": "Projects by classifier", "selected": selected,
                "tree": classifier_tree(counts), "projects": [], "total": 0,
                "next": None, "prev": None}
        missing = [c for c in selected if c not in counts]
        if missing and len(missing) <= 5:  # first seen since the counts (a minute old)
            counts = dict(counts)
            for classifier in missing:
                found = await couchapp.count(self.db, "classifier", classifier)
                if found:
                    counts[classifier] = found
        if selected and all(c in counts for c in selected):
            data.update(await self._classified(request, selected, counts))
        return self.respond(request, "classifiers.html", data)

    async def _classified(self, request, selected: list[str], counts: dict) -> dict:
        """Projects under every ``selected`` classifier: the least common one is paged
        from the view; each batch is checked against the others with one keyed query
        per other classifier. A page reads at most ``SCAN_LIMIT`` rows, whatever the
        size of the selections (a sparse combination may show a short page with a
        link to the next)."""
        driver = min(selected, key=lambda c: counts[c])
        others = [c for c in selected if c != driver]

        async def keep(batch):
            ids = {row["id"] for row in batch}
            for other in others:
                if not ids:
                    break
                rows = await couchapp.query(self.db, reduce=False, keys=[
                    ["classifier", other, i] for i in sorted(ids)])
                ids &= {row["id"] for row in rows}
            return [row for row in batch if row["id"] in ids]

        def key_of(cursor):  # the least common classifier may change between pages
            if not isinstance(cursor, list) or not cursor:
                raise BadQuery(BAD_CURSOR)
            # (a row's key, or the list's start, as an emptied page may link to)
            if len(cursor) == 2:
                return ["classifier", driver]
            return ["classifier", driver, cursor[-1]] if len(cursor) == 3 else cursor

        low, high = couchapp.facet_range("classifier", driver)
        data = await self._project_list(request, "Projects by classifier", low, high,
                                        keep=keep, key_of=key_of)
        return {"projects": data["projects"], "next": data["next"], "prev": data["prev"],
                "python": data["python"], "total": None if others else counts[driver]}

    # -- one project, specifiers, recent releases ---------------------------------------

    @app.route("/project/<name>", methods=["GET", "HEAD"])
    async def project(self, request, name):
        if not servable_name(name):
            return self.respond(request, "error.html", {"error": "no such project"}, 404)
        key = model.normalize(name)
        if key != name:
            request.setResponseCode(301)
            request.setHeader("Location", f"/browse/project/{key}")
            return b""
        entry = await self.read_project(key)
        if entry is None:
            return self.respond(request, "error.html",
                                {"error": f"no project {name} here"}, 404)
        data = project_page_data(entry.project, entry.releases)
        data["required_by"] = await couchapp.count(self.db, "requires", key)
        latest = _latest_release(entry.project, entry.releases)
        if latest is not None and data["description"]:
            html, how = await self.descriptions.rendered(latest)
            data.update(description_html=html, description_rendered_as=how)
        return self.respond(request, "project.html", data)

    # -- dependents, advisories ----------------------------------------------------------

    @app.route("/dependents/<name>", methods=["GET", "HEAD"])
    async def dependents(self, request, name):
        if not servable_name(name):
            return self.respond(request, "error.html", {"error": "no such project"}, 404)
        key = model.normalize(name)
        if key != name:
            query = request.uri.decode("utf-8", "replace").partition("?")[2]
            request.setResponseCode(301)
            request.setHeader("Location", f"/browse/dependents/{key}"
                                          + (f"?{query}" if query else ""))
            return b""
        entry = await self.read_project(key)
        shown = entry.project.get("name") if entry is not None else key
        low, high = couchapp.facet_range("requires", key)
        data = await self._project_list(
            request, f"Projects that require {shown}", low, high,
            extra=lambda row: {"requirements": list(row["value"] or []),
                               "requirement": (row["value"] or [None])[0]})
        data.update(key=key, name=shown, stored=entry is not None,
                    total=await couchapp.count(self.db, "requires", key),
                    advisories=[] if entry is None else advisories_of(entry.project)["open"])
        return self.respond(request, "dependents.html", data)

    @app.route("/advisories/", methods=["GET", "HEAD"])
    async def advisories(self, request):
        low, high = couchapp.facet_range("advisory")
        data = await self._project_list(
            request, "Projects with open advisories", low, high,
            extra=lambda row: {"advisories": [_advisory_row(a) for a in row["value"] or []],
                               "dependents": f"/browse/dependents/{row['id']}"})
        data["total"] = await couchapp.count(self.db, "advisory")
        return self.respond(request, "advisories.html", data)

    @app.route("/project/<name>/opml.xml", methods=["GET", "HEAD"])
    async def project_opml(self, request, name):
        if not servable_name(name):
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
            entry = await self.read_project(key)
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
        low, high = couchapp.facet_range("released")
        page = await keyset_page(self.db, low=low, high=high, descending=True,
                                 after=_key_arg(request, "after"),
                                 before=_key_arg(request, "before"))
        releases = [{"key": row["value"][0], "name": row["value"][1],
                     "version": row["value"][2], "yanked": row["value"][3],
                     "uploaded": _time_text(row["key"][1:7])} for row in page.rows]
        data = {"title": "Recent releases", "releases": releases,
                **_pager_links("/browse/recent/", [], page)}
        return self.respond(request, "recent.html", data)


def project_row(key: str, value: list) -> dict:
    """A ``projects`` view row as the pages use it (tolerates the shorter rows of an
    older design document while a new one is being built)."""
    value = list(value) + [None] * (6 - len(value))
    return {"key": key, "name": value[0], "serial": value[1], "status": value[2],
            "summary": value[3], "version": value[4], "requires_python": value[5]}


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


def safe_link(url: Any) -> str | None:
    """A URL from PyPI's data to link to: http(s) to a host only (never ``javascript:``;
    ``HTTPS://x`` and `` https://x``, as some projects give them, are fine)."""
    if not isinstance(url, str):
        return None
    url = url.strip()
    try:
        parts = urlsplit(url)
    except ValueError:  # (a bad IPv6 literal)
        return None
    return url if parts.scheme.lower() in ("http", "https") and parts.netloc else None


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _url_labels(value: Any) -> dict[str, str]:
    """``project_urls`` as label -> URL text (another index may give it another shape:
    a list, null URLs)."""
    if not isinstance(value, dict):
        return {}
    return {str(label): url for label, url in value.items() if isinstance(url, str)}


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _advisory_row(advisory: dict) -> dict:
    """An advisory as the pages show it (OSV fields, only the shapes expected)."""
    advisory = advisory if isinstance(advisory, dict) else {}
    return {"id": str(advisory.get("id") or ""), "aliases": _strings(advisory.get("aliases")),
            "fixed_in": _strings(advisory.get("fixed_in")),
            "link": safe_link(advisory.get("link")), "summary": advisory.get("summary"),
            "withdrawn": advisory.get("withdrawn")}


def advisories_of(project: dict) -> dict[str, list[dict]]:
    """The latest release's advisories (PyPI's ``vulnerabilities``): open and
    withdrawn."""
    found = (project.get("pypi") or {}).get("vulnerabilities") if project.get(
        "latest_version") else None
    found = [v for v in found if isinstance(v, dict)] if isinstance(found, list) else []
    still_open = model.open_advisories(found)
    return {"open": [_advisory_row(v) for v in still_open],
            "withdrawn": [_advisory_row(v) for v in found if v not in still_open]}


def _latest_release(project: dict, releases: list[dict]) -> dict | None:
    latest = project.get("latest_version")
    return next((r for r in releases if r["version"] == latest), None)


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
        # (linked to their lists: the names the catalog view lists the project by)
        "authors": model.person_names(project.get("author"), project.get("author_email")),
        "maintainers": model.person_names(project.get("maintainer"),
                                          project.get("maintainer_email")),
        "license": project.get("license"), "home_page": _text_or_none(project.get("home_page")),
        "project_urls": _url_labels(project.get("project_urls")),
        "requires_python": project.get("requires_python"),
        "keywords": project.get("keywords") or [],
        "classifiers": project.get("classifiers") or [],
        "last_serial": project.get("last_serial"),
        "releases": [_release_data(r) for r in ordered],
        "requires": [{"key": name, "requirements": list(texts)}
                     for name, texts in sorted((project.get("requires") or {}).items())],
        "advisories": advisories_of(project),
        "links": {"opml": f"/browse/project/{key}/opml.xml", "simple": f"/simple/{key}/",
                  "json": f"/pypi/{key}/json", "dependents": f"/browse/dependents/{key}"},
        "description_html": None, "description_rendered_as": "raw",
    }
