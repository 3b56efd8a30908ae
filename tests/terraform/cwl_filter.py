"""CloudWatch Logs JSON filter patterns, the part of the syntax the deployment uses:
`{ $.a.b = "text" && ($.c != "x") || $.d = 5 }` with `=`/`!=`, string (with `*` wildcards) or
number values, `&&`/`||` and parentheses. Anything else raises, so a pattern this cannot read
fails the test instead of passing it. (Reference: the CloudWatch Logs "Filter pattern syntax"
page, JSON log events.)"""

from __future__ import annotations

import fnmatch
import json
import re

TOKEN = re.compile(r'\s*(?:(\(|\)|&&|\|\|)|(\$(?:\.[A-Za-z_][\w-]*)+)\s*(=|!=)\s*("(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?))')


def matches(pattern: str, message: str) -> bool:
    pattern = pattern.strip()
    if not (pattern.startswith("{") and pattern.endswith("}")):
        raise ValueError(f"not a JSON filter pattern: {pattern}")
    try:
        event = json.loads(message)
    except ValueError:
        return False  # JSON patterns never match other lines
    if not isinstance(event, dict):
        return False
    tokens, body, i = [], pattern[1:-1], 0
    while i < len(body.rstrip()):
        m = TOKEN.match(body, i)
        if not m:
            raise ValueError(f"unsupported filter syntax at {body[i:]!r}")
        tokens.append(m.group(1) or (m.group(2), m.group(3), m.group(4)))
        i = m.end()
    value, rest = _or(tokens, event)
    if rest:
        raise ValueError(f"unbalanced filter pattern: {pattern}")
    return value


def _chain(op, operand, combine):
    """A left-to-right chain of `operand (op operand)*`."""

    def parse(tokens, event):
        value, tokens = operand(tokens, event)
        while tokens and tokens[0] == op:
            right, tokens = operand(tokens[1:], event)
            value = combine(value, right)
        return value, tokens

    return parse


def _term(tokens, event):
    if not tokens:
        raise ValueError("filter pattern ends early")
    head = tokens[0]
    if head == "(":
        value, rest = _or(tokens[1:], event)
        if not rest or rest[0] != ")":
            raise ValueError("missing )")
        return value, rest[1:]
    if not isinstance(head, tuple):
        raise ValueError(f"unexpected {head}")
    selector, op, literal = head
    node = event
    for key in selector.split(".")[1:]:
        node = node.get(key) if isinstance(node, dict) else None
    if literal.startswith('"'):
        want = json.loads(literal)
        equal = isinstance(node, str) and fnmatch.fnmatchcase(node, want)
    else:
        equal = isinstance(node, (int, float)) and not isinstance(node, bool) and node == float(literal)
    return (equal if op == "=" else (node is not None and not equal)), tokens[1:]


_and = _chain("&&", _term, lambda a, b: a and b)
_or = _chain("||", _and, lambda a, b: a or b)
