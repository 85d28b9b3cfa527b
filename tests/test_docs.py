"""The documentation: README.md is a front page whose links resolve, no
file cites documents outside the repository, and the MkDocs site builds
with warnings as errors (a broken link, anchor, page or docstring fails)."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# Markdown links and images: [text](target) and ![alt](target)
LINK = re.compile(r"\]\(([^)\s]+)\)")
# Citations of the design notes this project was written from, which live
# outside the repository: "shared/design/...", "design §12.7", "§12".
OUTSIDE = re.compile("shared/design|design \u00a7|\u00a7 ?[0-9]")


def documented_files():
    """Every file whose text users read: Markdown, Python, notebooks."""
    for pattern in ("*.md", "docs/**/*.md", "lava_spiked/**/*.py",
                    "processes/*.py", "proc_models/*.py", "benchmarks/*.py",
                    "benchmarks/results/*.md", "scripts/*.py",
                    "tutorials/*.ipynb", "tests/*.py"):
        for path in sorted(ROOT.glob(pattern)):
            if path != pathlib.Path(__file__).resolve():
                yield path


def test_readme_starts_with_the_two_commands():
    lines = README.read_text().splitlines()
    assert lines[2] == "```bash"
    assert lines[3].startswith("make demo ") and \
        lines[4].startswith("make test "), lines[:6]
    assert len(lines) <= 160, f"README.md has {len(lines)} lines"


def test_readme_links_point_to_files_of_the_repository():
    targets = [t for t in LINK.findall(README.read_text())
               if not re.match(r"[a-z]+:", t) and not t.startswith("#")]
    assert targets
    for target in targets:
        path = (ROOT / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT) and path.exists(), target


def test_nothing_cites_documents_outside_the_repository():
    found = [f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
             for path in documented_files()
             for i, line in enumerate(path.read_text().splitlines(), 1)
             if OUTSIDE.search(line)]
    assert not found, "\n".join(found)


@pytest.mark.slow
def test_site_builds_strict(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
         "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "site" / "semantics" / "index.html").exists()
