#!/usr/bin/env python3
"""House rules for src/: no file over MAX_FILE lines, no function over
MAX_FN, and no top-level module that imports one that imports it back.

A function is counted from its `fn` line to the closing brace at the same
indentation (rustfmt's layout); declarations without a body are skipped.
Imports are the `crate::name` paths outside comments and test code (a test
may reach up to build its fixtures). Prints every offender and exits 1 if
there is one.
"""
import os
import re
import sys

MAX_FILE = 500
MAX_FN = 80
FN = re.compile(r"^(\s*)(?:pub(?:\([^)]*\))? )?(?:async )?(?:const )?(?:unsafe )?fn (\w+)")


def functions(lines):
    for i, line in enumerate(lines):
        m = FN.match(line)
        if not m:
            continue
        indent, name = m.group(1), m.group(2)
        j = i
        while j < len(lines) and not lines[j].rstrip().endswith(("{", ";", "{}")):
            j += 1
        if j == len(lines) or lines[j].rstrip().endswith((";", "{}")):
            continue  # a declaration in a trait, or an empty or one-line body
        end = next((k for k in range(j + 1, len(lines)) if lines[k] == indent + "}"), None)
        if end is not None:
            yield name, i + 1, end - i + 1


USES = re.compile(r"crate::(?:(\w+)|\{([^}]*)\})")


def uses(text):
    """The top-level modules a file's code (not comments, not tests) names."""
    code = text.split("#[cfg(test)]")[0]
    code = "\n".join(l for l in code.split("\n") if not l.lstrip().startswith("//"))
    for m in USES.finditer(code):
        names = [m.group(1)] if m.group(1) else re.findall(r"(?:^|,)\s*(\w+)", m.group(2))
        yield from names


def cycles(edges):
    """Each module from which its own imports lead back to it."""
    def reach(a):
        seen, todo = set(), [a]
        while todo:
            for b in edges.get(todo.pop(), ()):
                if b not in seen:
                    seen.add(b)
                    todo.append(b)
        return seen

    return [a for a in sorted(edges) if a in reach(a)]


def main(root="src"):
    bad = []
    edges = {}
    for dirpath, _, files in os.walk(root):
        for f in sorted(files):
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            lines = open(path, encoding="utf-8").read().split("\n")
            if len(lines) - 1 > MAX_FILE:
                bad.append(f"{path}: {len(lines) - 1} lines (at most {MAX_FILE})")
            for name, at, n in functions(lines):
                if n > MAX_FN:
                    bad.append(f"{path}:{at}: fn {name} is {n} lines (at most {MAX_FN})")
            rel = os.path.relpath(path, root)
            if "tests" in rel or rel in ("lib.rs", "main.rs"):
                continue
            top = rel.split(os.sep)[0].removesuffix(".rs")
            edges.setdefault(top, set()).update(u for u in uses("\n".join(lines)) if u != top)
    for module in cycles(edges):
        bad.append(f"{root}/{module}: imports lead back to it ({', '.join(sorted(edges[module]))})")
    for b in bad:
        print(b, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
