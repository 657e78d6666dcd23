#!/usr/bin/env python3
"""Rewrites the settings table of docs/configuration.md from the one the
`the_documentation_shows_the_table` test prints (config.rs is its source)."""
import subprocess, sys, os

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
out = subprocess.run(
    ["cargo", "test", "--lib", "the_documentation_shows_the_table"],
    cwd=root, capture_output=True, text=True,
).stdout
marker = "must hold this table exactly:\n"
if marker not in out:
    print("the table is already current")
    sys.exit(0)
lines = []
for line in out[out.index(marker) + len(marker):].split("\n"):
    if line.startswith("|"):
        lines.append(line)
    elif lines:
        break
path = os.path.join(root, "docs", "configuration.md")
doc = open(path).read().split("\n")
start = doc.index(lines[0])
end = start
while end < len(doc) and doc[end].startswith("|"):
    end += 1
doc[start:end] = lines
open(path, "w").write("\n".join(doc))
print("docs/configuration.md: settings table rewritten")
