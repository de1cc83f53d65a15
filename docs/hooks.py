"""MkDocs hooks: pages made at build time, so they cannot drift from what they describe.

- `index.md`: the README, so the home page and the repository's front page are one text;
- `cli.md`: every command's and subcommand's `--help`, from promptseg's own argparse parser;
- every `benchmarks/**/*.md` (the index and the committed results), at its path in the repository, so the pages
  link to the same paths the README does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]


def _subcommands(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def _command_sections(parser: argparse.ArgumentParser, path: str, level: int) -> list[str]:
    out = []
    for name, sub in _subcommands(parser):
        command = f"{path} {name}"
        out += [f"{'#' * level} `{command}`", "", "```text", sub.format_help().rstrip(), "```", ""]
        out += _command_sections(sub, command, level + 1)
    return out


def cli_page() -> str:
    """The command line's reference: the top-level help, then each command's."""
    from promptseg.cli import build_parser

    parser = build_parser()
    parser.prog = "promptseg"
    lines = ["# Command line", "", "Generated from the parser itself at every build (`docs/hooks.py`), so it is what "
             "`promptseg COMMAND --help` prints.", "", "```text", parser.format_help().rstrip(), "```", ""]
    return "\n".join(lines + _command_sections(parser, "promptseg", 2)) + "\n"


def readme_page() -> str:
    """The home page: the README, its links into `docs/` made relative to the site."""
    return (ROOT / "README.md").read_text().replace("](docs/", "](")


def on_files(files, config):
    files.append(File.generated(config, "cli.md", content=cli_page()))
    files.append(File.generated(config, "index.md", content=readme_page()))
    for path in sorted((ROOT / "benchmarks").rglob("*.md")):
        uri = path.relative_to(ROOT).as_posix()
        text = path.read_text().replace("](../docs/", "](../")  # docs/ is the site's root
        files.append(File.generated(config, uri, content=text))
    return files
