"""Debian's control-file format (deb822): ``apt-cache show`` output, ``.sources`` files.

A leaf module, so that both apt's wrapper (:mod:`cpuplug.image.apt`) and the sources of
the private apts (:mod:`cpuplug.image.apt_private`) can read it without importing each
other.
"""

from __future__ import annotations


def parse_stanzas(text: str) -> list[dict[str, str]]:
    """deb822 paragraphs (``apt-cache show`` output) -> one dict each; continuation lines
    are joined to their field."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                stanzas.append(current)
            current, key = {}, ""
        elif line[0] in " \t":
            if key:
                current[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas
