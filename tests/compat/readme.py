"""Reads the README's runnable snippets: the fenced block after `<!-- snippet: NAME -->`."""

import os
import re

from conftest import CLIENT_KEY, ROOT

README = os.path.join(ROOT, "README.md")


def snippet(name):
    text = open(README).read()
    match = re.search(r"<!-- snippet: %s -->\s*```[a-z]*\n(.*?)```" % re.escape(name), text, re.S)
    assert match, "README has no snippet %r" % name
    return match.group(1)


def adapted(name, base_url, token):
    """The snippet as written, pointed at a test gateway."""
    code = snippet(name)
    for placeholder in ("http://127.0.0.1:8080/v1", "your-gateway-token", "sk-your-openai-key"):
        assert placeholder in code or name == "browser" and placeholder == "sk-your-openai-key", (name, placeholder)
    return (code.replace("http://127.0.0.1:8080/v1", base_url)
            .replace("your-gateway-token", token)
            .replace("sk-your-openai-key", CLIENT_KEY))
