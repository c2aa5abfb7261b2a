"""Parses Swift files with tree-sitter's Swift grammar and fails on syntax errors.

No Swift compiler exists where these bindings are generated, so this is the check they get:
every file must parse. The grammar does not know two constructs that uniffi emits, both valid
Swift:
- `@_documentation(visibility: private)` (an underscored, compiler-internal attribute): an ERROR
  node is tolerated if its text, or its first line, is exactly that attribute;
- a closure returning the empty tuple, `let writeReturn = { () }` (for listener methods returning
  nothing): an ERROR node is tolerated if its text is `()` and its line is exactly that line.
Anything else fails.

Usage: python check_parse.py FILE.swift...
"""

import re
import sys

import tree_sitter_swift
from tree_sitter import Language, Parser

TOLERATED = re.compile(r"^\s*@_documentation\s*\(\s*visibility\s*:\s*private\s*\)\s*$")
EMPTY_TUPLE_CLOSURE = re.compile(rb"^\s*let writeReturn = \{ \(\) \}\s*$")


def line_of(source, node):
    start = source.rfind(b"\n", 0, node.start_byte) + 1
    end = source.find(b"\n", node.end_byte)
    return source[start : end if end >= 0 else len(source)]


def problems(tree, source):
    found = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.is_missing:
            found.append((node, f"missing {node.type}"))
            continue
        if node.type == "ERROR":
            text = source[node.start_byte : node.end_byte].decode("utf-8", "replace")
            first = text.splitlines()[0] if text else ""
            if TOLERATED.match(text) or TOLERATED.match(first):
                continue
            if text == "()" and EMPTY_TUPLE_CLOSURE.match(line_of(source, node)):
                continue
            found.append((node, "syntax error: " + text[:120].replace("\n", "\\n")))
            continue
        if node.has_error:
            stack.extend(node.children)
    return found


def main(paths):
    parser = Parser(Language(tree_sitter_swift.language()))
    failed = 0
    for path in paths:
        source = open(path, "rb").read()
        tree = parser.parse(source)
        bad = problems(tree, source)
        tolerated = source.count(b"@_documentation(visibility: private)") + source.count(
            b"let writeReturn = { () }"
        )
        for node, why in bad:
            line, col = node.start_point
            print(f"{path}:{line + 1}:{col + 1}: {why}")
        status = "FAIL" if bad else "ok"
        print(f"{status} {path} ({len(source)} bytes, {tolerated} known grammar gaps tolerated)")
        failed += bool(bad)
    return failed


if __name__ == "__main__":
    sys.exit(1 if main(sys.argv[1:]) else 0)
