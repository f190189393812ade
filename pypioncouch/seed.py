"""Seeding the file store (``pypioncouch --fetch-files``): the files of chosen
projects, and with ``with_deps`` of their dependencies, as the mirror's CouchDB
describes them; fetched from upstream, checked against their sha256, kept for good
(seeded files are never evicted by the disk budget).

Choosing is pure (:func:`pick_releases`, :func:`dependencies`, :func:`applies`); the
rest reads CouchDB and fetches. A requirement takes the newest release it allows, as
pip would (yanked releases only when pinned with ``==``), with every file of that
release (all platforms) and their PEP 658 metadata files. Dependencies come from the
release's stored Requires-Dist; markers are evaluated for the Python running this
command, with the extras asked for. This is a seed list, not a resolver: a project
required with two specifiers no single release meets gets a release for each.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version
from twisted.internet import defer, threads

from pypioncouch import model
from pypioncouch.couch import Database
from pypioncouch.filefetch import Fetcher, FetchError
from pypioncouch.files import FileStore, Wanted, wanted_files


class SeedError(ValueError):
    """A request that cannot be met (unknown project, bad requirement), in one line."""


def parse_requirement(text: str, where: str = "") -> Requirement:
    try:
        requirement = Requirement(text)
    except InvalidRequirement as error:
        cause = str(error).splitlines()[0]  # (packaging adds the text and a caret below)
        raise SeedError(f"{where}{text!r} is not a requirement: {cause}") from None
    if requirement.url:
        raise SeedError(f"{where}{text!r}: only names and version specifiers can be "
                        "seeded (not URLs)")
    return requirement


def read_requirements(path: Path | str, _seen: frozenset = frozenset()) -> list[Requirement]:
    """The requirements of a pip requirements file: names with specifiers, extras and
    markers; ``-r``/``--requirement`` includes are followed, other options skipped."""
    path = Path(path)
    if path.resolve() in _seen:
        return []
    try:
        text = path.read_text("utf-8")
    except OSError as error:
        raise SeedError(f"cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:  # (a wheel given for a requirements file, say)
        raise SeedError(f"{path} is not a requirements file: not UTF-8 text "
                        f"(byte {error.start})") from None
    found: list[Requirement] = []
    lines = text.replace("\\\n", "").splitlines()
    for number, line in enumerate(lines, 1):
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}, line {number}: "
        if line.startswith(("-r", "--requirement")):
            included = line.split("=", 1)[1] if line.startswith("--requirement=") \
                else line.removeprefix("--requirement").removeprefix("-r").strip()
            found += read_requirements(path.parent / included.strip(),
                                       _seen | {path.resolve()})
        elif line.startswith(("-e", "--editable")) or "://" in line.split(";")[0]:
            raise SeedError(f"{where}{line!r}: only names and version specifiers can be "
                            "seeded")
        elif line.startswith("-"):
            continue  # --index-url, --hash ... apply to pip, not to seeding
        else:
            found.append(parse_requirement(line.split(" --", 1)[0].strip(), where))
    return found


def pick_releases(releases: list[dict], requirement: Requirement) -> list[dict]:
    """The releases ``requirement`` takes: the newest version with files that its
    specifier allows (pre-releases only if it asks for them or nothing else matches,
    yanked ones only when pinned with ``==``). Several when releases spelled apart are
    one version (``1.0`` and ``1.0.0``: pip takes the files of both)."""
    pinned = any(spec.operator in ("==", "===") and not spec.version.endswith("*")
                 for spec in requirement.specifier)
    candidates: dict[str, tuple[Version, dict]] = {}  # by version as spelled (for ===)
    for release in releases:
        if not release.get("files") or (release.get("yanked") and not pinned):
            continue
        try:
            candidates[release["version"]] = (Version(release["version"]), release)
        except InvalidVersion:
            continue
    allowed = [candidates[v] for v in requirement.specifier.filter(candidates)]
    newest = max((version for version, _ in allowed), default=None)
    return [release for version, release in allowed if version == newest]


def dependencies(project: dict, release: dict) -> list[str] | None:
    """The release's Requires-Dist as stored; None when the mirror has not stored the
    release's own metadata (the backfill brings it)."""
    if "requires_dist" in release:
        return list(release["requires_dist"] or [])
    if release.get("version") == project.get("latest_version"):
        return list((project.get("info") or {}).get("requires_dist") or [])
    return None


def applies(requirement: Requirement, extras: frozenset[str]) -> bool:
    """Whether a dependency applies to this Python, given the extras asked for."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in (extras or {""}))


@dataclass
class Plan:
    files: dict[str, Wanted] = field(default_factory=dict)  # by store key
    releases: list[str] = field(default_factory=list)  # "project version"
    warnings: list[str] = field(default_factory=list)


@dataclass
class SeedSummary:
    files: int = 0
    fetched: int = 0
    fetched_bytes: int = 0
    present: int = 0
    failed: list[str] = field(default_factory=list)
    releases: int = 0

    def __str__(self) -> str:
        return (f"{self.files} files of {self.releases} releases: {self.fetched} fetched "
                f"({self.fetched_bytes / 1e6:,.1f} MB), {self.present} already stored, "
                f"{len(self.failed)} failed")


class Seeder:
    """Plans and fetches a seed from a mirror's database into a store."""

    def __init__(self, db: Database, store: FileStore, fetcher: Fetcher, *,
                 with_deps: bool = False, concurrency: int = 4,
                 progress: Callable[[int, int], None] | None = None):
        self.db = db
        self.store = store
        self.fetcher = fetcher
        self.with_deps = with_deps
        self.concurrency = concurrency
        self.progress = progress
        self._projects: dict[str, tuple[dict | None, list[dict]]] = {}

    async def _load(self, key: str) -> tuple[dict | None, list[dict]]:
        if key not in self._projects:
            project = await self.db.get_or_none(key)
            releases: list[dict] = []
            if project is not None and project.get("type") == model.PROJECT:
                start, end = model.release_id_range(key)
                rows = (await self.db.all_docs(startkey=start, endkey=end,
                                               include_docs=True))["rows"]
                # Those the project lists: on a replica a removed release's deletion
                # may come after its project (the Simple pages hide it too).
                listed = set(project.get("versions") or [])
                releases = [row["doc"] for row in rows
                            if row.get("doc") and row["doc"].get("version") in listed]
            else:
                project = None
            self._projects[key] = (project, releases)
        return self._projects[key]

    async def plan(self, requirements: list[Requirement]) -> Plan:
        plan = Plan()
        queue = deque((requirement, None) for requirement in requirements)
        done: set[tuple[str, str, frozenset]] = set()
        while queue:
            requirement, needed_by = queue.popleft()
            key = model.normalize(requirement.name)
            project, releases = await self._load(key)
            chosen = pick_releases(releases, requirement) if project else []
            if not chosen:
                why = (f"the mirror ({self.db.display_url}) has no project {requirement.name!r}"
                       if project is None else
                       f"no release of {key} with files matches {str(requirement)!r}")
                if needed_by is None:
                    raise SeedError(why)
                plan.warnings.append(f"{needed_by} needs {requirement}: {why}")
                continue
            extras = frozenset(requirement.extras)
            for release in chosen:
                mark = (key, release["version"], extras)
                if mark in done:
                    continue
                done.add(mark)
                name = f"{key} {release['version']}"
                if name not in plan.releases:
                    plan.releases.append(name)
                for entry in release.get("files") or ():
                    found = wanted_files(key, entry)
                    if not found and isinstance(entry, dict):
                        # (pip would not find it on the mirror: say so, not in silence)
                        plan.warnings.append(
                            f"{name}: skipped {entry.get('filename')!r}: without a sha256, a URL "
                            "or a plain file name, it cannot be fetched, checked or stored")
                    for wanted in found:
                        plan.files[wanted.key] = wanted
                if self.with_deps:
                    self._follow(project, release, extras, queue, plan)
        return plan

    def _follow(self, project: dict, release: dict, extras: frozenset, queue: deque,
                plan: Plan) -> None:
        name = f"{project['_id']} {release['version']}"
        needs = dependencies(project, release)
        if needs is None:
            plan.warnings.append(f"{name}: the mirror has not stored this release's own "
                                 "metadata yet, so its dependencies are not followed")
            return
        for text in needs:
            try:
                dependency = Requirement(text)
            except InvalidRequirement:
                plan.warnings.append(f"{name}: skipped a Requires-Dist that does not parse: "
                                     f"{text!r}")
                continue
            if not dependency.url and applies(dependency, extras):
                queue.append((dependency, name))

    async def fetch(self, plan: Plan) -> SeedSummary:
        """Fetch what the plan names and is not stored right. All of it is marked seeded
        first, so the disk budget never evicts a file of the seed to make room for
        another."""
        wanted = list(plan.files.values())
        summary = SeedSummary(files=len(wanted), releases=len(plan.releases))
        self.store.mark_seeded(plan.files)
        pending = iter(wanted)

        async def worker():
            for item in pending:
                # Hashed in a thread: gigabytes already stored, hashed in the reactor,
                # held back the other downloads until their stall timers fired.
                if await threads.deferToThread(self.store.has, item):
                    self.store.lookup(item.key)
                    summary.present += 1
                else:
                    download = self.fetcher.download(item)
                    try:
                        await download.finished()
                        summary.fetched += 1
                        summary.fetched_bytes += download.written
                    except FetchError as error:
                        summary.failed.append(str(error))
                if self.progress is not None:
                    self.progress(summary.present + summary.fetched + len(summary.failed),
                                  summary.files)

        await defer.gatherResults([defer.ensureDeferred(worker())
                                   for _ in range(max(1, self.concurrency))])
        return summary
