"""The `victoriametrics.node_regex` rule: which part of a node label is the Slurm node name.

Pure (no I/O, no import of the rest of carbond), so both the config check and the VictoriaMetrics
client use it without importing each other.
"""

from __future__ import annotations

import re

_NODE_GROUP = "(?P<node>"


def label_pattern(node_regex: str, alternatives: str) -> str:
    """The fully anchored label regex (PromQL's) selecting values whose `node` group is one of `alternatives`.

    `^(?P<node>[^.:]+)` with `n1|n2` gives `(?:n1|n2).*`; an unanchored end becomes `.*`.
    """
    start = node_regex.index(_NODE_GROUP)
    end = _group_end(node_regex, start + len(_NODE_GROUP))
    head, tail = node_regex[:start], node_regex[end + 1 :]
    head = head[1:] if head.startswith("^") else ".*" + head
    if tail.endswith("$") and not tail.endswith("\\$"):
        tail = tail[:-1]
    else:
        tail += ".*"
    return f"{head}(?:{alternatives}){tail}"


def _group_end(pattern: str, i: int) -> int:
    """Index of the `)` closing the group whose body starts at `i` (escapes and [...] skipped)."""
    depth = 1
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "[":
            i += 2 if pattern[i + 1 : i + 2] != "^" else 3  # a `]` right after `[` or `[^` is literal
            while i < len(pattern) and pattern[i] != "]":
                i += 2 if pattern[i] == "\\" else 1
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError("unbalanced parentheses")


def node_regex_problem(node_regex: str) -> str | None:
    """Why `node_regex` cannot be used (for check-config), or None."""
    try:
        compiled = re.compile(node_regex)
    except re.error as exc:
        return f"not a valid regular expression: {exc}"
    if "node" not in compiled.groupindex or _NODE_GROUP not in node_regex:
        return "needs a group named node, e.g. '^(?P<node>[^.:]+)'"
    if any(x in node_regex for x in ("(?=", "(?!", "(?<=", "(?<!")) or re.search(r"\\[1-9]", node_regex):
        return "lookarounds and back-references are not available in VictoriaMetrics' (RE2) regexes"
    try:
        re.compile(label_pattern(node_regex, "x"))
    except (ValueError, re.error) as exc:
        return f"cannot be turned into a label selector: {exc}"
    return None
