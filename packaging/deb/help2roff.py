#!/usr/bin/env python3
"""Writes a man page (roff) for a clap binary from its own --help output, with a section for
every subcommand (recursively), so that the page cannot drift from the binary it documents.

help2man would do the top level only, and is one more build dependency; clap's long help has a
small, regular layout (an about text, "Usage:", then "Options:" / "Commands:" / "Arguments:"
blocks of two-space-indented items), which is all this parses.

usage: help2roff.py BINARY NAME VERSION DATE > NAME.1
"""

import re
import subprocess
import sys

HEADING = re.compile(r"^([A-Z][A-Za-z ]*):$")
USAGE = re.compile(r"^Usage: (.*)$")
# An item line: indented 2 (or 6: a long option without a short one, aligned under the
# others), then the item, then (short help) two or more spaces and its text. Descriptions in
# long help are indented further (10), wrapped short help is aligned to its column.
ITEM = re.compile(r"^(?:  |      )(\S.*?)(?: {2,}(\S.*))?$")


def help_text(binary, path):
    out = subprocess.run([binary, *path, "--help"], check=True, capture_output=True, text=True)
    return out.stdout


def parse(text):
    """Returns (about paragraphs, usage, [(heading, [(item, [description lines])])])."""
    about, usage, sections = [], None, []
    lines = text.rstrip("\n").split("\n")
    i = 0
    para = []
    while i < len(lines) and not USAGE.match(lines[i]):
        if lines[i].strip():
            para.append(lines[i].strip())
        elif para:
            about.append(" ".join(para))
            para = []
        i += 1
    if para:
        about.append(" ".join(para))
    if i == len(lines):
        sys.exit("help2roff: no 'Usage:' line in the help output")
    usage = USAGE.match(lines[i]).group(1)
    i += 1
    for line in lines[i:]:
        m = HEADING.match(line)
        if m:
            sections.append((m.group(1), []))
            continue
        if not sections:
            if line.strip():
                sys.exit(f"help2roff: text outside a section: {line!r}")
            continue
        items = sections[-1][1]
        m = ITEM.match(line)
        if m and (sections[-1][0] != "Options" or m.group(1).startswith("-")):
            items.append((m.group(1), [m.group(2)] if m.group(2) else []))
        elif line.strip():
            if not items:
                sys.exit(f"help2roff: description before any item: {line!r}")
            items[-1][1].append(line.strip())
        elif items:
            items[-1][1].append("")  # a paragraph break inside one item's description
    return about, usage, sections


def esc(s):
    """Escapes text for roff: backslashes, every '-' (so options are minus signs, as
    lintian wants), and a leading control character."""
    s = s.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + s if s[:1] in (".", "'") else s


def option(item):
    """`-c, --config <CONFIG>` -> bold flags, italic placeholders."""
    parts = re.split(r"(<[^>]+>)", item)
    out = []
    for p in parts:
        if p.startswith("<"):
            out.append("\\fI" + esc(p[1:-1]) + "\\fR")
        elif p:
            out.append("\\fB" + esc(p) + "\\fR")
    return "".join(out)


def description(lines):
    """Paragraphs of one item; 'Possible values:' lists become indented items."""
    out, para = [], []

    def flush():
        if para:
            out.append(esc(" ".join(para)))
            para.clear()

    for line in lines + [""]:
        if not line:
            flush()
            if out and out[-1] != ".IP":
                out.append(".IP")
        elif line.startswith("- "):
            flush()
            name, _, text = line[2:].partition(": ")
            out.append(".RS")
            out.append(".TP")
            out.append("\\fB" + esc(name) + "\\fR")
            out.append(esc(text))
            out.append(".RE")
        elif line.startswith("[") and line.endswith("]"):
            flush()
            out.append(".br")
            out.append(esc(line))
        else:
            para.append(line)
    while out and out[-1] == ".IP":
        out.pop()
    return out


def render_items(heading, items, out):
    for item, desc in items:
        out.append(".TP")
        out.append(option(item) if heading in ("Options", "Arguments") else "\\fB" + esc(item) + "\\fR")
        out.extend(description(desc) or ["\\&"])


def page(binary, name, version, date):
    about, usage, sections = parse(help_text(binary, []))
    out = [
        f'.TH {esc(name.upper())} 1 "{date}" "ringmesh {esc(version)}" "User Commands"',
        ".SH NAME",
        f"{esc(name)} \\- {esc(about[0].rstrip('.') if about else name)}",
        ".SH SYNOPSIS",
        f".B {esc(name)}",
        esc(usage.split(" ", 1)[1]) if " " in usage else "",
    ]
    if len(about) > 1:
        out.append(".SH DESCRIPTION")
        for p in about[1:]:
            out += [".PP", esc(p)]
    commands = []
    for heading, items in sections:
        out.append(".SH " + esc(heading.upper()))
        render_items(heading, items, out)
        if heading == "Commands":
            commands = [c for c, _ in items if c != "help"]
    if commands:
        out.append(".SH \"COMMAND DETAILS\"")
        for c in commands:
            subcommand(binary, name, [c], out)
    out += [
        ".SH \"SEE ALSO\"",
        ".BR uring\\-proxy (1),",
        ".BR mesh\\-redirect (1),",
        ".BR meshctl (1);",
        "/usr/share/doc/ringmesh/ and the unit ringmesh.service.",
    ]
    return "\n".join(line for line in out if line != "") + "\n"


def subcommand(binary, name, path, out):
    about, usage, sections = parse(help_text(binary, path))
    out.append(".SS \"" + esc(" ".join([name, *path])) + "\"")
    out.append(".B " + esc(usage))
    for p in about:
        out += [".PP", esc(p)]
    children = []
    for heading, items in sections:
        if heading == "Commands":
            children = [c for c, _ in items if c != "help"]
            continue  # each child gets its own subsection below
        out += [".PP", "\\fI" + esc(heading) + ":\\fR"]
        render_items(heading, items, out)
    for c in children:
        subcommand(binary, name, [*path, c], out)


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    sys.stdout.write(page(*sys.argv[1:]))
