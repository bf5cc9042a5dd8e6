"""The documentation: docs/cli.md is what `make docs` generates now, every relative link resolves, and the
README stays a short read for users of the package."""

import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# The same command as the Makefile's `docs` target (checked below), writing to a given file.
CLI_DOCS = ["-m", "typer", "adcli.cli", "utils", "docs", "--name", "adcli", "--title", "adcli command reference",
            "--output"]
CLI_DOCS_ENV = {"COLUMNS": "100", "TERM": "dumb", "NO_COLOR": "1"}


def markdown_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").glob("*.md"))]


def test_makefile_docs_target_is_the_command_this_test_runs():
    makefile = (ROOT / "Makefile").read_text()
    env = " ".join(f"{k}={v}" for k, v in CLI_DOCS_ENV.items())
    args = " ".join(f'"{a}"' if " " in a else a for a in CLI_DOCS)
    assert f"{env} $(PY) {args} docs/cli.md" in makefile, "the Makefile's docs target and tests/test_docs.py differ"
    assert re.search(r"^\.PHONY:.*\bdocs\b", makefile, re.M)


def test_cli_docs_are_current(tmp_path):
    out = tmp_path / "cli.md"
    env = {**os.environ, **CLI_DOCS_ENV}
    env.pop("FORCE_COLOR", None)
    subprocess.run([sys.executable, *CLI_DOCS, str(out)], cwd=ROOT, env=env, check=True, capture_output=True)
    committed = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert out.read_text(encoding="utf-8") == committed, "docs/cli.md is stale: run make docs"


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lowercase, punctuation other than '-' and '_' removed,
    spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images: their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    in_fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        match = None if in_fence else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = github_slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def relative_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)  # code blocks are not links
    text = re.sub(r"`[^`\n]*`", "", text)
    return [t for t in re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
            if not re.match(r"[a-z][a-z0-9+.-]*:", t, re.I)]  # http:, https:, mailto: ... are not ours


def test_github_slug():
    assert github_slug("Exit codes") == "exit-codes"
    assert github_slug("`adcli calibrate`") == "adcli-calibrate"
    assert github_slug("Which recipe?") == "which-recipe"
    assert github_slug("UniAD (`--recipe uniad`) and DRDC") == "uniad---recipe-uniad-and-drdc"
    assert github_slug("Speed: 2-core CPU, bench_metrics") == "speed-2-core-cpu-bench_metrics"


def test_relative_links_resolve():
    broken = []
    for md in markdown_files():
        for target in relative_links(md):
            file_part, _, anchor = target.partition("#")
            dest = md if not file_part else (md.parent / unquote(file_part)).resolve()
            where = f"{md.relative_to(ROOT)} -> {target}"
            if not dest.exists():
                broken.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{where}: no heading with that anchor in {dest.relative_to(ROOT)}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in relative_links(README)}
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"README.md does not link {', '.join(missing)}"


def test_readme_is_short_and_self_contained():
    text = README.read_text(encoding="utf-8")
    lines = text.count("\n") + (not text.endswith("\n"))
    assert lines <= 250, f"README.md has {lines} lines; keep it to 250 (reference belongs in docs/)"
    assert "../shared" not in text, "README.md refers to ../shared, which users of the package do not have"
    first_block = re.search(r"```[a-z]*\n(.*?)```", text, re.S).group(1).splitlines()
    assert first_block[0].startswith("make demo") and first_block[1].startswith("make test"), \
        "the README's first commands are `make demo` and `make test`"
