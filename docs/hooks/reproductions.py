"""MkDocs hook: the Reproductions pages are the experiments' own READMEs, not copies.

`experiments/README.md` and `experiments/<paper>/README.md` join the site as `reproductions/README.md` and
`reproductions/<paper>/README.md` (so `reproductions/<paper>/`), with the figures and result files beside
them, read from where they are at every build. Their relative links keep working: a link to a file under
`experiments/` lands on its copy under `reproductions/` (the same tree), and a link into `docs/` is
re-pointed to that page of the site (`../docs/speed.md` from `experiments/README.md` becomes `../speed.md`).
Any other link stays as written, so `mkdocs build --strict` names it if it leads nowhere.
"""
from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]          # the repository
EXPERIMENTS = ROOT / "experiments"
SITE_FOLDER = "reproductions"
ASSETS = {".png", ".svg", ".jpg", ".jpeg", ".gif", ".csv", ".yaml"}  # what a README may show or link
LINK = re.compile(r"(\]\()([^)\s]+)(\))")           # the target of [text](target) and ![alt](target)


def _sources() -> dict[str, Path]:
    """Site path -> file under experiments/: the READMEs and, beside each, its figures and result files
    (the folders' top level only: run folders below them are never published)."""
    found = {}
    for readme in sorted(EXPERIMENTS.glob("*/README.md")) + [EXPERIMENTS / "README.md"]:
        if not readme.is_file():
            continue
        folder = readme.parent
        for path in [readme, *sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in ASSETS)]:
            found[posixpath.join(SITE_FOLDER, path.relative_to(EXPERIMENTS).as_posix())] = path
    return found


def on_files(files: Files, config) -> Files:
    for site_path, source in _sources().items():
        files.append(File.generated(config, site_path, abs_src_path=str(source)))
    return files


def _repointed(target: str, page_source: Path, docs_dir: Path, page_site_dir: str) -> str:
    """The site's link for a relative link written in an experiments README."""
    if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target):  # a URL, an anchor on the page, an absolute path
        return target
    path, _, anchor = target.partition("#")
    resolved = Path(posixpath.normpath((page_source.parent / path).as_posix()))
    try:
        in_docs = resolved.relative_to(docs_dir).as_posix()
    except ValueError:
        return target  # inside experiments/ (the same tree in the site) or a link strict mode reports
    return posixpath.relpath(in_docs, page_site_dir) + (f"#{anchor}" if anchor else "")


def on_page_markdown(markdown: str, page, config, files) -> str:
    src_uri = page.file.src_uri
    if not src_uri.startswith(SITE_FOLDER + "/"):
        return markdown
    source = EXPERIMENTS / src_uri[len(SITE_FOLDER) + 1:]
    docs_dir = Path(config["docs_dir"]).resolve()
    site_dir = posixpath.dirname(src_uri)
    return LINK.sub(lambda m: m.group(1) + _repointed(m.group(2), source, docs_dir, site_dir) + m.group(3), markdown)


def on_serve(server, config, builder):
    server.watch(str(EXPERIMENTS))  # `mkdocs serve` rebuilds when a README or figure changes
    return server
