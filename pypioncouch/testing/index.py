"""The simulated package index: projects, the journal (changelog), mutations, and the
payloads PyPI answers with (JSON API, Simple API). No I/O here; ``server.py`` serves it.

State = a lazily generated :class:`Dataset` + an overlay of projects changed at run
time + the journal rows written since. Every mutation writes journal rows and moves
serials exactly as Warehouse does (reference §2 and §5).
"""

from __future__ import annotations

import copy
import json
import random
import time
from datetime import datetime, timezone

from packaging.utils import canonicalize_version
from packaging.version import InvalidVersion, Version

from pypioncouch.testing import simple_pages
from pypioncouch.testing.dataset import (
    Dataset, SimFile, SimProject, SimRelease, build_release, normalize, _metadata)
from pypioncouch.testing.wheels import wheel_digests

CHANGELOG_LIMIT = 50_000


class IndexError_(LookupError):
    """A mutation names a project, release or file that does not exist."""


def _is_prerelease(version: str) -> bool:
    try:
        return Version(version).is_prerelease
    except InvalidVersion:
        return False


def _iso_z(moment: datetime) -> str:
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}"
    return text + "Z"


class PackageIndex:
    """The simulated PyPI. ``base_url`` is where its JSON, Simple and file URLs point."""

    def __init__(self, dataset: Dataset, *, base_url: str = "http://127.0.0.1:8000",
                 stale_seconds: float = 0.0, clock=time.time):
        self.dataset = dataset
        self.base_url = base_url.rstrip("/")
        self.stale_seconds = stale_seconds
        # The CDN caches Simple pages apart from the JSON API: with this set, a project's
        # Simple page is served from the same stale copy too (its serial, its files).
        self.stale_simple = False
        # Cleared, the JSON API's answers say their serial in X-PyPI-Last-Serial only
        # (another index may leave ``last_serial`` out of the body).
        self.body_serial = True
        self.clock = clock
        self._changed: dict[str, SimProject] = {}
        self._removed: set[str] = set()
        self._journal: list[tuple] = []  # (name, version, timestamp, action, serial)
        self._serial = dataset.last_serial
        self._stale: dict[str, tuple[float, SimProject | None]] = {}
        self._held: dict[tuple[str, str | None], tuple] = {}  # JSON API answers a CDN holds
        self._listing: list[tuple[str, str]] | None = None  # (normalized, display)
        self._rng = random.Random(f"{dataset.seed}/mutations")

    # -- reading -----------------------------------------------------------------

    @property
    def last_serial(self) -> int:
        return self._serial

    def get(self, name: str) -> SimProject | None:
        """The project, by any spelling of its name; None if it does not exist."""
        key = normalize(name)
        if key in self._changed:
            return self._changed[key]
        if key in self._removed:
            return None
        index = self.dataset.index_of(key)
        return None if index is None else self.dataset.project(index)

    def is_quarantined(self, normalized: str) -> bool:
        """(Only a change quarantines: the data set makes none, so the 700,000 projects
        of a bench's listing are not each made to ask.)"""
        changed = self._changed.get(normalized)
        return changed is not None and changed.status == "quarantined"

    def listing(self) -> list[tuple[str, str]]:
        """``(normalized, display)`` of every project, by normalized name."""
        if self._listing is None:
            names = {normalize(n): n for n in self.dataset.names()}
            for key in self._removed:
                names.pop(key, None)
            names.update({key: p.name for key, p in self._changed.items()})
            self._listing = sorted(names.items())
        return self._listing

    def last_serial_of(self, normalized: str) -> int:
        project = self._changed.get(normalized)
        if project is not None:
            return project.last_serial
        return self.dataset.base_serial(self.dataset.index_of(normalized))

    def changelog_since(self, serial: int, limit: int = CHANGELOG_LIMIT) -> list[list]:
        """Journal rows with serial > ``serial``, ascending, at most ``limit``."""
        rows: list[list] = []
        first = 0 if serial < 1 else (serial - 1) // 2 + 1
        for index in range(max(first, 0), self.dataset.size):
            if len(rows) >= limit:
                return rows
            created = int(self.dataset.created(index).timestamp())
            rows.append([self.dataset.name(index), None, created, "create",
                         self.dataset.base_serial(index)])
        for row in self._journal:
            if len(rows) >= limit:
                break
            if row[4] > serial:
                rows.append(list(row))
        return rows

    # -- mutations ---------------------------------------------------------------

    def _write_journal(self, project: SimProject, version: str | None, action: str) -> int:
        self._serial += self._rng.choice([1, 1, 2, 5])  # ids have gaps
        self._journal.append((project.name, version, int(self.clock()), action, self._serial))
        project.last_serial = self._serial
        return self._serial

    def _editable(self, name: str) -> SimProject:
        project = self.get(name)
        if project is None:
            raise IndexError_(f"no project {name!r}")
        key = project.normalized
        if self.stale_seconds and key not in self._stale:
            self._stale[key] = (self.clock() + self.stale_seconds, copy.deepcopy(project))
        self._changed[key] = project
        return project

    def _release(self, project: SimProject, version: str) -> SimRelease:
        if version not in project.releases:
            raise IndexError_(f"{project.name} has no release {version!r}")
        return project.releases[version]

    def create_project(self, name: str, owner: str = "simulator") -> int:
        key = normalize(name)
        if self.get(key) is not None:
            raise IndexError_(f"project {name!r} exists")
        if self.stale_seconds:
            self._stale[key] = (self.clock() + self.stale_seconds, None)
        now = datetime.fromtimestamp(self.clock(), timezone.utc)
        project = SimProject(name=name, releases={}, last_serial=0, created=now,
                             roles=[("Owner", owner)])
        self._changed[key] = project
        self._removed.discard(key)
        self._listing = None
        self._write_journal(project, None, "create")
        return self._write_journal(project, None, f"add Owner {owner}")

    def publish(self, name: str, version: str, *, files: int = 1, **metadata) -> int:
        """Upload a new release (creating the project if needed), as twine would."""
        if self.get(name) is None:
            self.create_project(name)
        project = self._editable(name)
        if version in project.releases:
            raise IndexError_(f"{project.name} {version} exists")
        latest = self.latest(project)  # a new upload starts from what the project shows
        base = dict(latest.metadata) if latest else _metadata(self._rng, project.name)
        base.update(metadata)
        now = datetime.fromtimestamp(self.clock(), timezone.utc).replace(microsecond=0)
        release = build_release(version, base, now, files, project.name, self._rng)
        if "requires_dist" in metadata:
            release.wheel_requires_dist = tuple(metadata["requires_dist"] or ())
        project.releases[version] = release
        serial = self._write_journal(project, version, "new release")
        for file in release.files:
            serial = self._write_journal(project, version,
                                         f"add {file.python_version} file {file.filename}")
        return serial

    def add_file(self, name: str, version: str, tag: str = "py2.py3-none-any") -> int:
        project = self._editable(name)
        release = self._release(project, version)
        now = datetime.fromtimestamp(self.clock(), timezone.utc)
        extra = build_release(version, release.metadata, now, 2, project.name, self._rng).files[1]
        if any(f.filename == extra.filename for f in release.files):
            raise IndexError_(f"{extra.filename} exists")
        release.files.append(extra)
        return self._write_journal(project, version, f"add {extra.python_version} file "
                                                     f"{extra.filename}")

    def remove_file(self, name: str, version: str, filename: str) -> int:
        project = self._editable(name)
        release = self._release(project, version)
        kept = [f for f in release.files if f.filename != filename]
        if len(kept) == len(release.files):
            raise IndexError_(f"{project.name} {version} has no file {filename!r}")
        release.files = kept
        return self._write_journal(project, version, f"remove file {filename}")

    def yank(self, name: str, version: str, reason: str | None = None) -> int:
        project = self._editable(name)
        release = self._release(project, version)
        release.yanked, release.yanked_reason = True, reason
        return self._write_journal(project, version, "yank release")

    def unyank(self, name: str, version: str) -> int:
        project = self._editable(name)
        release = self._release(project, version)
        release.yanked, release.yanked_reason = False, None
        return self._write_journal(project, version, "unyank release")

    def remove_release(self, name: str, version: str) -> int:
        project = self._editable(name)
        self._release(project, version)
        del project.releases[version]
        return self._write_journal(project, version, "remove release")

    def remove_project(self, name: str) -> int:
        project = self._editable(name)
        key = project.normalized
        serial = self._write_journal(project, None, "remove project")
        del self._changed[key]
        self._removed.add(key)
        self._listing = None
        return serial

    def quarantine(self, name: str) -> int:
        project = self._editable(name)
        project.status = "quarantined"
        self._listing = None
        return self._write_journal(project, None, "project quarantined")

    def clear_quarantine(self, name: str) -> int:
        project = self._editable(name)
        project.status = "active"
        return self._write_journal(project, None, "project quarantine cleared")

    def quarantine_release(self, name: str, version: str) -> int:
        """One release hidden from the JSON and Simple APIs (reference §2, [2026-05])."""
        project = self._editable(name)
        self._release(project, version).quarantined = True
        return self._write_journal(project, version, "release quarantined")

    def clear_release_quarantine(self, name: str, version: str) -> int:
        project = self._editable(name)
        self._release(project, version).quarantined = False
        return self._write_journal(project, version, "release quarantine cleared")

    def archive(self, name: str) -> None:
        """Archive (PEP 792): like PyPI, this writes no journal row."""
        self._editable(name).status = "archived"

    def unarchive(self, name: str) -> None:
        """Unarchive: no journal row either."""
        self._editable(name).status = "active"

    def add_role(self, name: str, role: str, user: str) -> int:
        project = self._editable(name)
        project.roles.append((role, user))
        return self._write_journal(project, None, f"add {role} {user}")

    def remove_role(self, name: str, role: str, user: str) -> int:
        project = self._editable(name)
        if (role, user) not in project.roles:
            raise IndexError_(f"{user} is not {role} of {project.name}")
        project.roles.remove((role, user))
        return self._write_journal(project, None, f"remove {role} {user}")

    def cdn_hold(self, name: str, version: str | None = None) -> None:
        """The CDN keeps serving ``/pypi/<name>[/<version>]/json`` as it is now (it
        caches each URL apart), until :meth:`cdn_release`."""
        self._held[(normalize(name), version)] = self.json_api(name, version)

    def cdn_release(self, name: str, version: str | None = None) -> None:
        self._held.pop((normalize(name), version), None)

    # -- payloads ------------------------------------------------------------------

    def _served(self, name: str) -> SimProject | None:
        """The project as the CDN serves it: a stale copy for a while after a change."""
        key = normalize(name)
        stale = self._stale.get(key)
        if stale is not None:
            if self.clock() < stale[0]:
                return stale[1]
            del self._stale[key]
        return self.get(key)

    def file_url(self, digests, filename: str) -> str:
        b = digests.blake2b_256
        return f"{self.base_url}/packages/{b[:2]}/{b[2:4]}/{b[4:]}/{filename}"

    def file_entry(self, project: SimProject, release: SimRelease, file: SimFile) -> dict:
        digests = self.digests(project, release, file)
        return {
            "comment_text": file.comment_text,
            "core-metadata": {"sha256": digests.metadata_sha256},
            "digests": {"blake2b_256": digests.blake2b_256, "md5": digests.md5,
                        "sha256": digests.sha256},
            "downloads": -1,
            "filename": file.filename,
            "has_sig": False,
            "md5_digest": digests.md5,
            "packagetype": file.packagetype,
            "python_version": file.python_version,
            "requires_python": release.requires_python,
            "size": digests.size,
            "upload_time": file.upload_time.strftime("%Y-%m-%dT%H:%M:%S"),
            "upload_time_iso_8601": _iso_z(file.upload_time),
            "url": self.file_url(digests, file.filename),
            "yanked": release.yanked,
            "yanked_reason": release.yanked_reason,
        }

    @staticmethod
    def digests(project: SimProject, release: SimRelease, file: SimFile):
        return wheel_digests(project.name, release.version, release.requires_python,
                             release.metadata.get("summary"), file.tag,
                             release.wheel_requires_dist)

    def visible_releases(self, project: SimProject) -> dict[str, SimRelease]:
        return {v: r for v, r in project.releases.items() if not r.quarantined}

    def latest(self, project: SimProject) -> SimRelease | None:
        """Warehouse's pick for ``info``: not yanked, then final, then newest."""
        releases = list(self.visible_releases(project).values())
        if not releases:
            return None
        return max(releases, key=lambda r: (not r.yanked, not _is_prerelease(r.version),
                                            simple_pages.version_order(r.version)))

    def info(self, project: SimProject, release: SimRelease) -> dict:
        meta = release.metadata
        urls = {}
        if meta.get("home_page"):
            urls["Homepage"] = meta["home_page"]
        if meta.get("download_url"):
            urls["Download"] = meta["download_url"]
        urls.update(meta.get("project_urls") or {})
        key = project.normalized
        info = {k: meta.get(k) for k in (
            "author", "author_email", "classifiers", "description",
            "description_content_type", "docs_url", "download_url", "dynamic", "home_page",
            "keywords", "license", "license_expression", "license_files", "maintainer",
            "maintainer_email", "platform", "provides_extra", "requires_dist",
            "requires_python", "summary")}
        info.update(
            bugtrack_url=None, downloads={"last_day": -1, "last_month": -1, "last_week": -1},
            name=project.name, version=release.version,
            package_url=f"{self.base_url}/project/{key}/",
            project_url=f"{self.base_url}/project/{key}/",
            release_url=f"{self.base_url}/project/{key}/{release.version}/",
            project_urls=urls or None, yanked=release.yanked,
            yanked_reason=release.yanked_reason)
        info["classifiers"] = list(info["classifiers"] or [])
        return info

    def json_api(self, name: str, version: str | None = None) -> tuple[int, bytes, int | None]:
        """``(status, body, X-PyPI-Last-Serial)`` of ``/pypi/<name>[/<version>]/json``."""
        held = self._held.get((normalize(name), version))
        if held is not None:
            return held
        not_found = (404, b'{"message": "Not Found"}', None)
        project = self._served(name)
        if project is None or project.status == "quarantined":
            return not_found
        releases = self.visible_releases(project)
        if not releases:
            return not_found
        if version is None:
            release = self.latest(project)
        else:
            release = releases.get(version) or self._by_canonical(releases, version)
            if release is None:
                return not_found
        body = {
            "info": self.info(project, release),
            **({"last_serial": project.last_serial} if self.body_serial else {}),
            "urls": [self.file_entry(project, release, f) for f in release.files],
            "vulnerabilities": [dict(v) for v in release.vulnerabilities],
            "ownership": {"roles": [{"role": r, "user": u} for r, u in project.roles],
                          "organization": project.organization},
        }
        if version is None:
            body["releases"] = {v: [self.file_entry(project, r, f) for f in r.files]
                                for v, r in releases.items()}
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        try:
            return 200, (text + "\n").encode("utf-8"), project.last_serial
        except UnicodeEncodeError:  # a lone surrogate: UTF-8 cannot carry it, \u can
            text = json.dumps(body, sort_keys=True, separators=(",", ":"))
            return 200, (text + "\n").encode("ascii"), project.last_serial

    @staticmethod
    def _by_canonical(releases: dict[str, SimRelease], version: str) -> SimRelease | None:
        try:
            wanted = canonicalize_version(version)
        except InvalidVersion:
            return None
        matches = [r for v, r in releases.items() if canonicalize_version(v) == wanted]
        return matches[0] if len(matches) == 1 else None

    def simple_file(self, project: SimProject, release: SimRelease, file: SimFile) -> dict:
        """One file of the project's PEP 691 page, from the data (not the JSON API)."""
        digests = self.digests(project, release, file)
        uploaded = file.upload_time.astimezone(timezone.utc).replace(tzinfo=None)
        return simple_pages.pep691_file(
            filename=file.filename, url=self.file_url(digests, file.filename),
            sha256=digests.sha256, requires_python=release.requires_python,
            size=digests.size, upload_time=uploaded.isoformat() + "Z",
            yanked=release.yanked, yanked_reason=release.yanked_reason,
            metadata_sha256=digests.metadata_sha256)

    def simple_project(self, name: str) -> tuple[list[str], list[dict], int, str] | None:
        """``(versions, PEP 691 files, last serial, status)``, or None if unknown."""
        project = self._served(name) if self.stale_simple else self.get(name)
        if project is None:
            return None
        if project.status == "quarantined":
            return [], [], project.last_serial, "quarantined"
        order = simple_pages.version_order
        with_files = sorted((r for r in self.visible_releases(project).values() if r.files),
                            key=lambda r: order(r.version))
        files = [self.simple_file(project, release, file) for release in with_files
                 for file in sorted(release.files, key=lambda f: f.filename)]
        return [r.version for r in with_files], files, project.last_serial, project.status

    def find_file(self, filename: str) -> tuple[bytes, str] | None:
        """The bytes of a distribution (or of its ``.metadata``) by file name."""
        from pypioncouch.testing.wheels import build_wheel, core_metadata

        want_metadata = filename.endswith(".metadata")
        wheel_name = filename[:-len(".metadata")] if want_metadata else filename
        parts = wheel_name[:-len(".whl")].split("-") if wheel_name.endswith(".whl") else []
        if len(parts) < 5:
            return None
        project = self.get(parts[0])
        if project is None:
            return None
        release = project.releases.get(parts[1]) or self._by_canonical(project.releases,
                                                                        parts[1])
        if release is None:
            return None
        for file in release.files:
            if file.filename == wheel_name:
                meta = release.metadata
                if want_metadata:
                    return core_metadata(project.name, release.version,
                                         release.requires_python, meta.get("summary"),
                                         release.wheel_requires_dist), \
                        "application/octet-stream"
                return build_wheel(project.name, release.version, release.requires_python,
                                   meta.get("summary"), file.tag,
                                   release.wheel_requires_dist), "application/octet-stream"
        return None

