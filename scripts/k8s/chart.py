"""A small, strict renderer for the subset of Helm's template language the Aisle chart uses.

No helm binary exists on our CI machines, yet the chart must be rendered to be checked (schema validation of every
manifest, the node's arguments and environment run against the real binary, k8s/ kept equal to the chart's
defaults). This module renders `helm/aisle` the way `helm template` does for that subset, and refuses anything
outside it — an unknown function, a missing value, a construct it does not know — with an error naming the template,
rather than rendering something helm would not. Where a helm binary exists, scripts/k8s/check.py also renders with
helm and requires both renderings to be equal, so this renderer cannot drift from helm unnoticed.

Supported: text/template actions `if`/`else if`/`else`, `with`/`else`, `range` (lists and maps, one or two
variables), `define`, `end`, comments, trim markers, variables (`:=` and `=`), parenthesised pipelines, and the
functions in FUNCS below (Go template builtins and the Sprig/Helm functions the chart uses), with Helm's meaning.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

import yaml


class RenderError(Exception):
    """The chart cannot be rendered: a template error or a `fail` in the chart (the message says which)."""


class ChartFail(RenderError):
    """The chart's own `fail` was called (helm reports it the same way)."""


# ---------------------------------------------------------------------------------------------------------------
# Lexing: split a template into text and actions, applying the trim markers.

ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)


@dataclass
class Text:
    text: str


@dataclass
class Action:
    src: str
    line: int


def split(src: str) -> list[Text | Action]:
    parts: list[Text | Action] = []
    pos = 0
    trim_next = False
    for m in ACTION.finditer(src):
        text = src[pos:m.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        parts.append(Text(text))
        line = src.count("\n", 0, m.start()) + 1
        parts.append(Action(m.group(2).strip(), line))
        trim_next = bool(m.group(3))
        pos = m.end()
    text = src[pos:]
    if trim_next:
        text = text.lstrip(" \t\r\n")
    parts.append(Text(text))
    return parts


# ---------------------------------------------------------------------------------------------------------------
# Parsing actions into pipelines.

TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>"(?:[^"\\]|\\.)*")
    | (?P<raw>`[^`]*`)
    | (?P<num>-?\d+(?:\.\d+)?)
    | (?P<decl>:=)
    | (?P<assign>=)
    | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)
    | (?P<field>(?:\.[A-Za-z0-9_]+)+|\.)
    | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<lp>\()
    | (?P<rp>\))
    | (?P<pipe>\|)
    | (?P<comma>,)
    )""",
    re.X,
)


def tokenize(s: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    s = s.rstrip()
    while pos < len(s):
        m = TOKEN.match(s, pos)
        if not m or m.end() == pos:
            raise RenderError(f"cannot parse {s[pos:]!r}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


@dataclass
class Pipeline:
    decl: list[str]
    assign: bool  # `=` rather than `:=`
    cmds: list[list[Any]]  # each command: a list of operands; operands are tuples


def parse_pipeline(tokens: list[tuple[str, str]]) -> Pipeline:
    decl: list[str] = []
    assign = False
    # `$a :=`, `$a, $b :=`, `$a =`
    i = 0
    names = []
    while i < len(tokens) and tokens[i][0] == "var":
        names.append(tokens[i][1])
        if i + 1 < len(tokens) and tokens[i + 1][0] == "comma":
            i += 2
            continue
        if i + 1 < len(tokens) and tokens[i + 1][0] in ("decl", "assign"):
            decl = names
            assign = tokens[i + 1][0] == "assign"
            i += 2
        break
    if not decl:
        i = 0
    cmds, pos = parse_cmds(tokens, i, top=True)
    if pos != len(tokens):
        raise RenderError(f"unexpected {tokens[pos][1]!r}")
    return Pipeline(decl, assign, cmds)


def parse_cmds(tokens, pos, top):
    cmds: list[list[Any]] = [[]]
    while pos < len(tokens):
        kind, val = tokens[pos]
        if kind == "rp":
            if top:
                raise RenderError("unbalanced ')'")
            break
        if kind == "pipe":
            cmds.append([])
            pos += 1
            continue
        if kind == "lp":
            sub, pos = parse_cmds(tokens, pos + 1, top=False)
            if pos >= len(tokens) or tokens[pos][0] != "rp":
                raise RenderError("unbalanced '('")
            cmds[-1].append(("pipe", Pipeline([], False, sub)))
            pos += 1
            continue
        if kind == "str":
            cmds[-1].append(("lit", json.loads(val)))
        elif kind == "raw":
            cmds[-1].append(("lit", val[1:-1]))
        elif kind == "num":
            cmds[-1].append(("lit", float(val) if "." in val else int(val)))
        elif kind == "var":
            cmds[-1].append(("var", val))
        elif kind == "field":
            cmds[-1].append(("field", val))
        elif kind == "ident":
            if val in ("true", "false"):
                cmds[-1].append(("lit", val == "true"))
            elif val == "nil":
                cmds[-1].append(("lit", None))
            else:
                cmds[-1].append(("fn", val))
        else:
            raise RenderError(f"unexpected {val!r}")
        pos += 1
    if any(not c for c in cmds):
        raise RenderError("empty command in pipeline")
    return cmds, pos


# ---------------------------------------------------------------------------------------------------------------
# The tree.

@dataclass
class Node:
    kind: str  # text, out, if, range, with
    text: str = ""
    pipe: Pipeline | None = None
    body: list["Node"] = field(default_factory=list)
    branches: list[tuple[str, Pipeline | None, list["Node"]]] = field(default_factory=list)
    line: int = 0


KEYWORDS = ("if", "else", "end", "range", "with", "define", "template", "block", "break", "continue")


def parse(src: str, name: str, defines: dict[str, list[Node]]) -> list[Node]:
    """Parses a template; `define` blocks go into `defines`, the rest is returned."""
    parts = split(src)
    root: list[Node] = []
    # Stack of (node, current body list, kind); `define` uses a pseudo node.
    stack: list[tuple[Node | None, list[Node], str, str]] = [(None, root, "root", "")]

    def err(msg, line):
        raise RenderError(f"{name}:{line}: {msg}")

    for part in parts:
        body = stack[-1][1]
        if isinstance(part, Text):
            if part.text:
                body.append(Node("text", text=part.text))
            continue
        src_a, line = part.src, part.line
        if src_a.startswith("/*"):
            if not src_a.endswith("*/"):
                err("unterminated comment", line)
            continue
        word = src_a.split(None, 1)[0] if src_a else ""
        rest = src_a[len(word):].strip()
        try:
            if word in ("if", "range", "with"):
                node = Node(word, line=line)
                node.branches.append((word, parse_pipeline(tokenize(rest)), []))
                body.append(node)
                stack.append((node, node.branches[-1][2], word, ""))
            elif word == "else":
                node, _, kind, _ = stack[-1]
                if kind not in ("if", "range", "with"):
                    err("else outside if/range/with", line)
                if rest:
                    sub = rest.split(None, 1)
                    if sub[0] != kind or kind == "range":
                        err(f"'else {sub[0]}' in {kind}", line)
                    node.branches.append((kind, parse_pipeline(tokenize(sub[1] if len(sub) > 1 else "")), []))
                else:
                    node.branches.append(("else", None, []))
                stack[-1] = (node, node.branches[-1][2], kind, "")
            elif word == "end":
                node, b, kind, dname = stack.pop()
                if kind == "root":
                    err("unexpected end", line)
                if kind == "define":
                    defines[dname] = b
            elif word == "define":
                if len(stack) != 1:
                    err("define must be at the top level", line)
                dname = json.loads(rest)
                stack.append((None, [], "define", dname))
            elif word in KEYWORDS:
                err(f"'{word}' is not supported by this renderer", line)
            else:
                body.append(Node("out", pipe=parse_pipeline(tokenize(src_a)), line=line))
        except RenderError as e:
            if str(e).startswith(f"{name}:"):
                raise
            err(str(e), line)
    if len(stack) != 1:
        raise RenderError(f"{name}: missing end for {stack[-1][2]}")
    return root


# ---------------------------------------------------------------------------------------------------------------
# Values and functions with Helm's meaning.

def truthy(v: Any) -> bool:
    if v is None or v is False:
        return False
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v != 0
    if isinstance(v, (str, list, dict, tuple)):
        return len(v) > 0
    return True


def go_float(v: float) -> str:
    """Go's %v of a float64 (strconv 'g', shortest): 3 -> "3", 0.5 -> "0.5", 1000000 -> "1e+06" — as Helm prints a
    number from a values file, all of which are float64 (so large numbers need `int` before printing)."""
    if v == 0:
        return "0"
    if v != v or v in (float("inf"), float("-inf")):
        raise RenderError(f"printing {v}")
    from decimal import Decimal

    sign, digits, exponent = Decimal(repr(v)).as_tuple()
    ds = "".join(map(str, digits)).rstrip("0") or "0"
    exponent += len(digits) - len(ds)
    nd = len(ds)
    dp = nd + exponent  # position of the decimal point in ds
    exp = dp - 1
    neg = "-" if sign else ""
    if exp < -4 or exp >= 6:
        mant = ds[0] + ("." + ds[1:] if nd > 1 else "")
        return f"{neg}{mant}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if dp <= 0:
        return f"{neg}0.{'0' * -dp}{ds}"
    if dp >= nd:
        return f"{neg}{ds}{'0' * (dp - nd)}"
    return f"{neg}{ds[:dp]}.{ds[dp:]}"


def helm_numbers(v: Any) -> Any:
    """Values as Helm holds them after reading a values file: every number a float64."""
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, int):
        return float(v)
    if isinstance(v, dict):
        return {k: helm_numbers(x) for k, x in v.items()}
    if isinstance(v, list):
        return [helm_numbers(x) for x in v]
    return v


def to_str(v: Any) -> str:
    """Go's fmt %v of a value as Helm holds it."""
    if v is None:
        raise RenderError("printing a nil value")
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return go_float(v)
    if isinstance(v, (int, str)):
        return str(v)
    raise RenderError(f"printing a {type(v).__name__} (use toYaml or toJson)")


def go_quote(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def sprintf(fmt: str, *args: Any) -> str:
    out, ai, i = [], 0, 0
    while i < len(fmt):
        ch = fmt[i]
        if ch != "%":
            out.append(ch)
            i += 1
            continue
        verb = fmt[i + 1] if i + 1 < len(fmt) else ""
        i += 2
        if verb == "%":
            out.append("%")
            continue
        if ai >= len(args):
            raise RenderError(f"printf {fmt!r}: missing argument")
        a = args[ai]
        ai += 1
        if verb == "s":
            if not isinstance(a, str):
                raise RenderError(f"printf %s of a {type(a).__name__}")
            out.append(a)
        elif verb == "d":
            if isinstance(a, bool) or not isinstance(a, int):
                raise RenderError(f"printf %d of a {type(a).__name__} (wrap it in int)")
            out.append(str(a))
        elif verb == "v":
            out.append(to_str(a))
        elif verb == "q":
            out.append(go_quote(to_str(a)))
        else:
            raise RenderError(f"printf verb %{verb} is not supported")
    if ai != len(args):
        raise RenderError(f"printf {fmt!r}: too many arguments")
    return "".join(out)


def to_int(v: Any) -> int:
    if isinstance(v, bool):
        return 1 if v else 0
    if isinstance(v, (int, float)):
        return int(v)
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            return 0
    if v is None:
        return 0
    raise RenderError(f"int of a {type(v).__name__}")


def integral(x: Any) -> Any:
    """Numbers as Go's encoding/json writes them (Helm's toYaml and toJson go through it): 3.0 -> 3."""
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e21:
        return int(x)
    if isinstance(x, dict):
        return {k: integral(e) for k, e in x.items()}
    if isinstance(x, list):
        return [integral(e) for e in x]
    return x


def to_yaml(v: Any) -> str:
    if v is None:
        return "null"
    return yaml.safe_dump(integral(v), default_flow_style=False, sort_keys=True, allow_unicode=True, width=1_000_000).rstrip("\n")


def go_json(v: Any) -> str:
    s = json.dumps(integral(v), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # Go's encoding/json escapes these for HTML safety.
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def kind_of(v: Any) -> str:
    if isinstance(v, dict):
        return "map"
    if isinstance(v, list):
        return "slice"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, str):
        return "string"
    if isinstance(v, (int, float)):
        return "float64"  # numbers from values files are float64 in Helm
    if v is None:
        return "invalid"
    raise RenderError(f"kindIs of a {type(v).__name__}")


def compare(a: Any, b: Any) -> tuple[Any, Any]:
    """Go's template comparison: same basic kind only (an int against a float64 from values is an error there)."""
    def kind(x):
        if isinstance(x, bool):
            return "bool"
        if isinstance(x, int):
            return "int"
        if isinstance(x, float):
            return "float"
        if isinstance(x, str):
            return "string"
        raise RenderError(f"cannot compare a {type(x).__name__}")

    if kind(a) != kind(b):
        raise RenderError(f"incompatible types for comparison: {kind(a)} and {kind(b)} (wrap numbers in int)")
    return a, b


def fn_and(*a):
    for x in a:
        if not truthy(x):
            return x
    return a[-1]


def fn_or(*a):
    for x in a:
        if truthy(x):
            return x
    return a[-1]


def fn_fail(msg):
    raise ChartFail(msg)


def fn_required(msg, value=None):
    """Helm's `required`: fails with the message on a missing value or an empty string (not on other empty values)."""
    if value is None or (isinstance(value, str) and value == ""):
        raise ChartFail(msg)
    return value


def fn_has_prefix(prefix, s):
    if not isinstance(prefix, str) or not isinstance(s, str):
        raise RenderError("hasPrefix takes two strings")
    return s.startswith(prefix)


FUNCS = {
    "default": lambda d, v=None: v if truthy(v) else d,
    "trunc": lambda n, s: s[:n] if n >= 0 else s[n:],
    "trimSuffix": lambda suf, s: s[: -len(suf)] if suf and s.endswith(suf) else s,
    "replace": lambda old, new, s: s.replace(old, new),
    "contains": lambda sub, s: sub in s,
    "printf": sprintf,
    "quote": lambda *a: " ".join(go_quote(to_str(x)) for x in a if x is not None),
    "toString": to_str,
    "int": to_int,
    "int64": to_int,
    "add1": lambda x: to_int(x) + 1,
    "list": lambda *a: list(a),
    "append": lambda lst, v: list(lst) + [v],
    "until": lambda n: list(range(to_int(n))),
    "join": lambda sep, lst: sep.join(to_str(x) for x in lst),
    "toJson": go_json,
    "toYaml": to_yaml,
    "kindIs": lambda k, v: kind_of(v) == k,
    "not": lambda v: not truthy(v),
    "and": fn_and,
    "or": fn_or,
    "eq": lambda a, *bs: any(x == y for x, y in (compare(a, b) for b in bs)),
    "ne": lambda a, b: (lambda x, y: x != y)(*compare(a, b)),
    "gt": lambda a, b: (lambda x, y: x > y)(*compare(a, b)),
    "lt": lambda a, b: (lambda x, y: x < y)(*compare(a, b)),
    "ge": lambda a, b: (lambda x, y: x >= y)(*compare(a, b)),
    "le": lambda a, b: (lambda x, y: x <= y)(*compare(a, b)),
    "nindent": lambda n, s: "\n" + "\n".join((" " * n + line) for line in s.split("\n")),
    "indent": lambda n, s: "\n".join((" " * n + line) for line in s.split("\n")),
    "sha256sum": lambda s: hashlib.sha256(s.encode()).hexdigest(),
    "fail": fn_fail,
    "required": fn_required,
    "hasPrefix": fn_has_prefix,
}


# ---------------------------------------------------------------------------------------------------------------
# Evaluation.

class Scope:
    def __init__(self, parent: "Scope | None" = None):
        self.vars: dict[str, Any] = {}
        self.parent = parent

    def get(self, name):
        s = self
        while s:
            if name in s.vars:
                return s.vars[name]
            s = s.parent
        raise RenderError(f"undefined variable {name}")

    def set(self, name, value):
        s = self
        while s:
            if name in s.vars:
                s.vars[name] = value
                return
            s = s.parent
        raise RenderError(f"assignment to undefined variable {name}")


def lookup(v: Any, path: list[str], what: str) -> Any:
    for p in path:
        if not isinstance(v, dict):
            raise RenderError(f"{what}: cannot take .{p} of a {type(v).__name__}")
        if p not in v:
            raise RenderError(f"{what}: no value .{p} (strict: every value the chart reads must exist)")
        v = v[p]
    return v


class Renderer:
    def __init__(self, defines: dict[str, list[Node]]):
        self.defines = defines
        self.depth = 0

    def include(self, name: str, data: Any) -> str:
        if name not in self.defines:
            raise RenderError(f"include of undefined template {name!r}")
        self.depth += 1
        if self.depth > 50:
            raise RenderError("include nested too deeply")
        scope = Scope()
        scope.vars["$"] = data
        out = self.run(self.defines[name], data, scope)
        self.depth -= 1
        return out

    def operand(self, op, dot, scope):
        kind, val = op
        if kind == "lit":
            return val
        if kind == "field":
            return dot if val == "." else lookup(dot, val[1:].split("."), val)
        if kind == "var":
            name, *path = val.split(".")
            return lookup(scope.get(name), path, val)
        if kind == "pipe":
            return self.pipeline(val, dot, scope)
        if kind == "fn":
            return self.call(val, [], dot, scope)
        raise RenderError(f"bad operand {op}")

    def call(self, name, args, dot, scope):
        if name == "include":
            if len(args) != 2:
                raise RenderError("include takes a name and a value")
            return self.include(*args)
        if name not in FUNCS:
            raise RenderError(f"function {name!r} is not supported by this renderer")
        try:
            return FUNCS[name](*args)
        except ChartFail:
            raise
        except RenderError:
            raise
        except TypeError as e:
            raise RenderError(f"{name}: wrong arguments ({e})") from None

    def pipeline(self, pipe: Pipeline, dot, scope) -> Any:
        value, have = None, False
        for cmd in pipe.cmds:
            head = cmd[0]
            if head[0] == "fn":
                args = [self.operand(o, dot, scope) for o in cmd[1:]]
                if have:
                    args.append(value)
                value = self.call(head[1], args, dot, scope)
            else:
                if len(cmd) > 1:
                    raise RenderError("method calls are not supported")
                if have:
                    raise RenderError("cannot pipe into a value")
                value = self.operand(head, dot, scope)
            have = True
        if pipe.decl:
            if len(pipe.decl) != 1:
                raise RenderError("only range declares two variables")
            if pipe.assign:
                scope.set(pipe.decl[0], value)
            else:
                scope.vars[pipe.decl[0]] = value
            return None
        return value

    def run(self, nodes: list[Node], dot, scope: Scope) -> str:
        out: list[str] = []
        for n in nodes:
            if n.kind == "text":
                out.append(n.text)
            elif n.kind == "out":
                v = self.pipeline(n.pipe, dot, scope)
                if not n.pipe.decl:
                    out.append(to_str(v))
            elif n.kind in ("if", "with"):
                for kind, pipe, body in n.branches:
                    if kind == "else":
                        out.append(self.run(body, dot, Scope(scope)))
                        break
                    inner = Scope(scope)
                    v = self.pipeline(Pipeline([], False, pipe.cmds), dot, inner)
                    if pipe.decl:
                        inner.vars[pipe.decl[0]] = v
                    if truthy(v):
                        out.append(self.run(body, v if kind == "with" else dot, inner))
                        break
            elif n.kind == "range":
                _, pipe, body = n.branches[0]
                v = self.pipeline(Pipeline([], False, pipe.cmds), dot, scope)
                if isinstance(v, dict):
                    items = [(k, v[k]) for k in sorted(v)]
                elif isinstance(v, list):
                    items = list(enumerate(v))
                elif v is None:
                    items = []
                else:
                    raise RenderError(f"range over a {type(v).__name__}")
                if not items and len(n.branches) > 1:
                    out.append(self.run(n.branches[1][2], dot, Scope(scope)))
                for k, e in items:
                    inner = Scope(scope)
                    if len(pipe.decl) == 1:
                        inner.vars[pipe.decl[0]] = e
                    elif len(pipe.decl) == 2:
                        inner.vars[pipe.decl[0]] = k
                        inner.vars[pipe.decl[1]] = e
                    out.append(self.run(body, e, inner))
        return "".join(out)


# ---------------------------------------------------------------------------------------------------------------
# Charts.

def merge(base: Any, over: Any) -> Any:
    """Helm's coalescing of values: maps merge key by key, anything else replaces; null removes a key."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = copy.deepcopy(base)
        for k, v in over.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = merge(out[k], v)
            else:
                out[k] = copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def set_path(values: dict, dotted: str, value: Any) -> dict:
    """`--set a.b=c` as an override map (value already typed)."""
    out: dict = {}
    cur = out
    keys = dotted.split(".")
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
    cur[keys[-1]] = value
    return merge(values, out)


@dataclass
class Chart:
    path: str
    meta: dict
    values: dict
    templates: dict[str, str]


def load(path: str) -> Chart:
    with open(os.path.join(path, "Chart.yaml")) as f:
        meta = yaml.safe_load(f)
    with open(os.path.join(path, "values.yaml")) as f:
        values = yaml.safe_load(f) or {}
    templates = {}
    tdir = os.path.join(path, "templates")
    for dirpath, _, files in os.walk(tdir):
        for name in files:
            full = os.path.join(dirpath, name)
            with open(full) as f:
                templates[os.path.relpath(full, tdir)] = f.read()
    templates = dict(sorted(templates.items()))
    return Chart(path, meta, values, templates)


def render(chart: Chart, values: dict | None = None, release: str = "aisle", namespace: str = "aisle",
           service: str = "Helm") -> dict[str, str]:
    """Renders every template: {file name: text}. `values` are merged over the chart's defaults."""
    # Numbers from values files are float64 in Helm (`--set` gives integers, which print the same below 1e6).
    vals = helm_numbers(merge(chart.values, values or {}))
    defines: dict[str, list[Node]] = {}
    trees = {name: parse(src, name, defines) for name, src in chart.templates.items()}
    root = {
        "Values": vals,
        "Release": {"Name": release, "Namespace": namespace, "Service": service, "IsInstall": True,
                    "IsUpgrade": False, "Revision": 1},
        "Chart": {"Name": chart.meta["name"], "Version": chart.meta["version"],
                  "AppVersion": str(chart.meta.get("appVersion", ""))},
        "Template": {"BasePath": f"{chart.meta['name']}/templates"},
    }
    r = Renderer(defines)
    out = {}
    for name, tree in trees.items():
        if os.path.basename(name).startswith("_"):
            continue
        scope = Scope()
        scope.vars["$"] = root
        try:
            out[name] = r.run(tree, root, scope)
        except ChartFail as e:
            raise ChartFail(f"{name}: {e}") from None
        except RenderError as e:
            raise RenderError(f"{name}: {e}") from None
    return out


def manifests(rendered: dict[str, str]) -> list[dict]:
    """The Kubernetes objects of a rendering (NOTES.txt and empty documents left out), as helm installs them."""
    docs = []
    for name, text in sorted(rendered.items()):
        if not name.endswith((".yaml", ".yml")):
            continue
        try:
            for doc in yaml.safe_load_all(text):
                if doc is not None:
                    docs.append(doc)
        except yaml.YAMLError as e:
            raise RenderError(f"{name}: the rendering is not YAML: {e}\n---\n{text}") from None
    return docs


def main(argv: list[str]) -> int:
    """`chart.py CHART_DIR [-f values.yaml]... [--set key=yaml-value]...`: prints the rendering, as helm template."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("chart")
    ap.add_argument("-f", "--values", action="append", default=[])
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--release", default="aisle")
    ap.add_argument("--namespace", default="aisle")
    a = ap.parse_args(argv)
    chart = load(a.chart)
    values: dict = {}
    for f in a.values:
        with open(f) as fh:
            values = merge(values, yaml.safe_load(fh) or {})
    for s in a.set:
        k, _, v = s.partition("=")
        values = set_path(values, k, yaml.safe_load(v))
    try:
        out = render(chart, values, a.release, a.namespace)
    except RenderError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for name, text in out.items():
        if name.endswith(".txt") or not text.strip():
            continue
        print(f"---\n# Source: {chart.meta['name']}/templates/{name}\n{text.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
