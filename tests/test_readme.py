"""The CLI as the README describes it: its "Commands and flags" table names every flag of every command
(`landmark COMMAND --help`), neither the table nor a command's details section below it names a flag that does
not exist, and every option has a help string."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

from jobs.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]


def _commands_section() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Commands and flags") :]
    return section[: section.index("\n## ")]


def _table_rows() -> dict[str, str]:
    rows = {}
    for line in _commands_section().splitlines():
        if m := re.match(r"\| `landmark ([a-z]+(?: [a-z]+)?)[^`]*` \|(.*)\|\s*$", line):
            rows[m.group(1)] = m.group(2)
    return rows


def _details_sections() -> dict[str, str]:
    """The text under each `### `landmark COMMAND`` heading of the section: the longer commands' details."""
    parts = re.split(r"^### `landmark ([a-z]+)[^`]*`\s*$", _commands_section(), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def _parsers_of(command: str, monkeypatch) -> list[argparse.ArgumentParser]:
    """Every parser of `landmark COMMAND`, subcommands' included, reached without running anything."""
    seen: list[argparse.ArgumentParser] = []

    def record(self, *_args, **_kwargs):
        seen.append(self)
        raise SystemExit(0)

    module = importlib.import_module(COMMANDS[command][0])
    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", record)
        with pytest.raises(SystemExit):
            module.main(["x"])
    assert seen, f"`landmark {command}` built no parser"
    parsers, todo = [], list(seen)
    while todo:
        p = todo.pop()
        parsers.append(p)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())
    return parsers


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_option_has_help(command, monkeypatch):
    missing = sorted(
        f"{p.prog} {'/'.join(a.option_strings)}"
        for p in _parsers_of(command, monkeypatch)
        for a in p._actions
        if a.option_strings and not {"-h", "--help"} & set(a.option_strings) and not (a.help or "").strip()
    )
    assert not missing, f"options without a help string: {missing}"


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_flag_is_in_the_readme_table(command, monkeypatch):
    """Each parser's flags (a subcommand's in its own row, `bench tag`, else in its command's) are named in the row."""
    rows = _table_rows()
    for p in _parsers_of(command, monkeypatch):
        if any(isinstance(a, argparse._SubParsersAction) for a in p._actions):
            continue  # `landmark catalog` itself: its subcommands hold the flags
        name = p.prog.removeprefix("landmark ")
        row = rows.get(name) or rows.get(command)
        assert row, f"README's table has no row for `{p.prog}`"
        flags = {max(a.option_strings, key=len) for a in p._actions if a.option_strings} - {"--help"}
        assert flags, f"no flags in `{p.prog}`"
        missing = sorted(f for f in flags if not re.search(re.escape(f) + r"(?![a-z0-9-])", row))
        assert not missing, f"`{p.prog}`: README's table does not name {missing}"


# flags a row names as another command's: predict finds a folder's photos as `tag` lists `--input`; `bench store`
# measures `landmark query --summary` and `--near`
OTHER_COMMANDS_FLAGS = {"predict": {"--input"}, "bench": {"--summary", "--near"}}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_flag_the_readme_table_names_exists(command, monkeypatch):
    """The other way round: a flag named in a command's rows is one of its parsers' (a renamed or removed flag
    left in the README fails here)."""
    known = {s for p in _parsers_of(command, monkeypatch) for a in p._actions for s in a.option_strings}
    known |= OTHER_COMMANDS_FLAGS.get(command, set())
    rows = {name: row for name, row in _table_rows().items() if name.split()[0] == command}
    assert rows, f"README's table has no row for `landmark {command}`"
    if command in _details_sections():
        rows[f"{command} (details)"] = _details_sections()[command]
    stale = sorted(
        {f"{name}: {f}" for name, row in rows.items() for f in re.findall(r"--[a-z][a-z0-9-]*", row)}
        - {f"{name}: {f}" for name in rows for f in known}
    )
    assert not stale, f"README's table or details names flags `landmark {command}` does not have: {stale}"


@pytest.mark.parametrize("doc", ["README.md", "RELIABILITY.md", "docs/open-world.md"])
def test_relative_links_resolve(doc):
    """A link from one of the project's documents to another file of the project names a file that exists (a
    moved or renamed document fails here, not in a reader's browser)."""
    text = (ROOT / doc).read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert doc != "README.md" or local, "README.md links no project file: the pattern no longer matches its links"
    missing = sorted({t for t in local if not ((ROOT / doc).parent / t).exists()})
    assert not missing, f"{doc} links files that do not exist: {missing}"


def test_details_sections_are_linked_from_their_rows():
    """Each details section has a command's row linking to it, and only commands with a row have one (a details
    section under a misspelt heading would otherwise escape the stale-flag check above)."""
    rows, sections = _table_rows(), _details_sections()
    assert sections, "no details section found: the heading pattern no longer matches the README"
    for command in sections:
        assert command in COMMANDS, f"details section for an unknown command `landmark {command}`"
        assert f"(#landmark-{command})" in rows.get(command, ""), (
            f"`landmark {command}`'s row does not link its details"
        )
