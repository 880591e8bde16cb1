"""mkdocs hook: fills docs/reference.md with every command's keys, from the same field help that
`hiprm COMMAND --help` prints (`hiprm.cli.command_help`), so the page cannot drift from the code."""

from __future__ import annotations

MARKER = "{{ config_reference }}"


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 - mkdocs' hook signature
    if MARKER not in markdown:
        return markdown
    from hiprm.cli import COMMANDS, command_help

    parts = []
    for name in COMMANDS:
        parts.append(f"## hiprm {name}\n\n```text\n{command_help(name)}\n```\n")
    return markdown.replace(MARKER, "\n".join(parts))
