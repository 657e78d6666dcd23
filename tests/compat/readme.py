"""Reads the documentation's runnable snippets: the fenced block after
`<!-- snippet: NAME -->`, in README.md or any page under docs/."""

import glob
import os
import re

from conftest import CLIENT_KEY, ROOT

PAGES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


def snippet(name):
    found = []
    for page in PAGES:
        text = open(page).read()
        found += re.findall(r"<!-- snippet: %s -->\s*```[a-z]*\n(.*?)```" % re.escape(name), text, re.S)
    assert len(found) == 1, "expected one snippet %r in README.md and docs/, found %d" % (name, len(found))
    return found[0]


def adapted(name, base_url, token):
    """The snippet as written, pointed at a test gateway."""
    code = snippet(name)
    for placeholder in ("http://127.0.0.1:8080/v1", "your-gateway-token", "sk-your-openai-key"):
        assert placeholder in code or name == "browser" and placeholder == "sk-your-openai-key", (name, placeholder)
    return (code.replace("http://127.0.0.1:8080/v1", base_url)
            .replace("your-gateway-token", token)
            .replace("sk-your-openai-key", CLIENT_KEY))
