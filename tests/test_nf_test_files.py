"""Every module has an nf-test file, and every nf-test file agrees with the modules it runs.

nf-test cannot be installed here (tests/README.md), so its files would drift from the modules unseen. This test
parses each module's main.nf (process name, its `input:` declarations in order, its `emit:` names) and each
`modules/local/<step>/tests/main.nf.test` (the process under test and its script, every `run("X")` setup step and
its script, the `input[N]` each process block sets, the `<process>.out.<emit>` it reads) and fails when they
disagree:

- the file tests the process its `script` defines, and each setup step's script defines that step;
- every process block sets exactly input[0] .. input[n-1] of its process;
- an input given as a list literal (or a channel `.map`/`.flatMap` closure ending in one, or another process's
  `X.out.<emit>`) has as many elements as the tuple declared at that position (a tuple of 2 where a plain
  `path` is declared, or the other way round, is caught);
- for a module with more than one input, every `input[N] = ...` ends with a comment naming the declaration it
  feeds (`input[3] = ...  // figures`; any element name of a tuple), and that is the declaration at position N
  (so that swapped inputs are caught even where their shapes cannot be told apart from the text);
- every `process.out.<emit>` and `<SETUP_STEP>.out.<emit>` is an emit of that process.

The tests at the end feed drifted copies and check that each drift is reported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULES = REPO / "modules" / "local"

INPUT_KINDS = ("tuple", "path", "val", "env", "stdin", "each", "file")


# --- Groovy-ish scanning ----------------------------------------------------------------------------------------

def strip_comments(text: str) -> str:
    """`text` without // and /* */ comments (strings kept; a comment inside a string is left alone)."""
    out, i, n = [], 0, len(text)
    while i < n:
        if text.startswith('"""', i) or text.startswith("'''", i):
            end = text.find(text[i:i + 3], i + 3)
            end = n if end < 0 else end + 3
            out.append(text[i:end])
            i = end
        elif text[i] in "\"'":
            j = i + 1
            while j < n and text[j] != text[i] and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def block_end(text: str, open_at: int) -> int:
    """Index just past the bracket that closes the one at `open_at` ({, [ or (), skipping strings."""
    pairs = {"{": "}", "[": "]", "(": ")"}
    stack, i, n = [], open_at, len(text)
    while i < n:
        c = text[i]
        if text.startswith('"""', i) or text.startswith("'''", i):
            end = text.find(text[i:i + 3], i + 3)
            i = n if end < 0 else end + 3
            continue
        if c in "\"'":
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            continue
        if c in pairs:
            stack.append(pairs[c])
        elif c in ")]}":
            if not stack or stack.pop() != c:
                raise ValueError(f"unbalanced {c!r} at offset {i}")
            if not stack:
                return i + 1
        i += 1
    raise ValueError(f"no closing bracket for the one at offset {open_at}")


def top_level_split(text: str, sep: str = ",") -> list[str]:
    """`text` split on `sep` outside brackets and strings."""
    parts, depth, start, i, n = [], 0, 0, 0, len(text)
    while i < n:
        c = text[i]
        if c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


# --- modules --------------------------------------------------------------------------------------------------

@dataclass
class Decl:
    kind: str           # tuple, path, val, ...
    names: list[str]    # the element names (one for a plain path/val)

    @property
    def arity(self) -> int:
        return len(self.names) if self.kind == "tuple" else 1


@dataclass
class Module:
    path: Path
    process: str
    inputs: list[Decl]
    emits: list[str]
    emit_arity: dict[str, int]


def _decl(line: str) -> Decl:
    kind = line.split(None, 1)[0].split("(")[0]
    rest = line[len(kind):].strip()
    if kind == "tuple":
        elems = top_level_split(rest)
        return Decl(kind, [_decl(e).names[0] for e in elems])
    m = re.match(r"\(?\s*([A-Za-z_]\w*)", rest)
    return Decl(kind, [m.group(1) if m else rest])


def parse_module(path: Path) -> Module:
    text = strip_comments(path.read_text())
    m = re.search(r"^\s*process\s+([A-Z_][A-Z0-9_]*)\s*\{", text, re.M)
    assert m, f"{path}: no `process NAME {{`"
    body = text[m.end() - 1:block_end(text, m.end() - 1)]
    sections = {}
    labels = list(re.finditer(r"^\s*(input|output|when|script|shell|exec|stub)\s*:", body, re.M))
    for a, b in zip(labels, labels[1:] + [None]):
        sections[a.group(1)] = body[a.end():b.start() if b else len(body) - 1]
    inputs = []
    for stmt in _statements(sections.get("input", "")):
        if stmt.split(None, 1)[0].split("(")[0] in INPUT_KINDS:
            inputs.append(_decl(stmt))
    emits, arity = [], {}
    for stmt in _statements(sections.get("output", "")):
        e = re.search(r"\bemit\s*:\s*(\w+)", stmt)
        if e:
            decl = _decl(re.split(r"\s*,\s*emit\s*:", stmt)[0])
            emits.append(e.group(1))
            arity[e.group(1)] = decl.arity
    return Module(path, m.group(1), inputs, emits, arity)


def _statements(section: str) -> list[str]:
    """The declarations of an input:/output: section, one per statement (continuation lines joined)."""
    stmts, cur = [], ""
    for line in section.splitlines():
        s = line.strip()
        if not s:
            continue
        if cur and (re.match(r"^[A-Za-z_]\w*[\s(]", s) and s.split(None, 1)[0].split("(")[0] in INPUT_KINDS
                    and _balanced(cur)):
            stmts.append(cur)
            cur = s
        else:
            cur = f"{cur} {s}".strip()
    if cur:
        stmts.append(cur)
    return stmts


def _balanced(text: str) -> bool:
    return text.count("(") == text.count(")") and text.count("[") == text.count("]")


# --- nf-test files --------------------------------------------------------------------------------------------

@dataclass
class ProcessBlock:
    target: str                                   # the process the block feeds
    inputs: dict[int, str] = field(default_factory=dict)    # N -> value text
    comments: dict[int, str] = field(default_factory=dict)  # N -> trailing // comment


@dataclass
class NfTest:
    path: Path
    process: str
    script: Path
    setup: dict[str, Path]                        # setup step -> its script
    blocks: list[ProcessBlock]
    outs: list[tuple[str, str]]                   # (process or 'process', emit)


def _process_blocks(text: str, target: str) -> list[ProcessBlock]:
    blocks = []
    for m in re.finditer(r"\bprocess\s*\{\s*(\"\"\"|''')", text):
        q = m.group(1)
        end = text.index(q, m.end())
        blocks.append(_inputs(text[m.end():end], target))
    return blocks


def _inputs(code: str, target: str) -> ProcessBlock:
    block = ProcessBlock(target)
    starts = list(re.finditer(r"^\s*input\[(\d+)\]\s*=", code, re.M))
    for a, b in zip(starts, starts[1:] + [None]):
        chunk = code[a.end():b.start() if b else len(code)]
        lines = chunk.rstrip().splitlines()
        comment = re.search(r"//\s*(\w+)\s*$", lines[-1]) if lines else None
        n = int(a.group(1))
        assert n not in block.inputs, f"input[{n}] set twice for {target}"
        block.inputs[n] = strip_comments(chunk).strip()
        if comment:
            block.comments[n] = comment.group(1)
    return block


def parse_nf_test(path: Path) -> NfTest:
    raw = path.read_text()
    text = strip_comments(raw)
    m = re.search(r"\bnextflow_process\s*\{", text)
    assert m, f"{path}: not a nextflow_process test"
    body_start = m.end() - 1
    body = text[body_start:block_end(text, body_start)]
    # setup steps: run("X") { script "..." process { """...""" } }, cut out of the body
    setup, blocks, rest, pos = {}, [], [], 0
    for r in re.finditer(r"\brun\(\s*[\"'](\w+)[\"']\s*\)\s*\{", body):
        if r.start() < pos:
            continue
        end = block_end(body, r.end() - 1)
        inner = body[r.end():end]
        s = re.search(r"\bscript\s+[\"']([^\"']+)[\"']", inner)
        assert s, f"{path}: setup step {r.group(1)} names no script"
        setup[r.group(1)] = (path.parent / s.group(1)).resolve()
        blocks += _process_blocks(inner, r.group(1))
        rest.append(body[pos:r.start()])
        pos = end
    rest.append(body[pos:])
    main = "".join(rest)
    p = re.search(r"^\s*process\s+[\"'](\w+)[\"']", main, re.M)
    s = re.search(r"^\s*script\s+[\"']([^\"']+)[\"']", main, re.M)
    assert p and s, f"{path}: no top-level `process \"NAME\"` / `script \"...\"`"
    blocks += _process_blocks(main, p.group(1))
    outs = [("process", e) for e in re.findall(r"\bprocess\.out\.(\w+)", main)]
    outs += [(x, e) for x, e in re.findall(r"\b([A-Z][A-Z0-9_]*)\.out\.(\w+)", body) if x in setup]
    return NfTest(path, p.group(1), (path.parent / s.group(1)).resolve(), setup, blocks, outs)


# --- the check ------------------------------------------------------------------------------------------------

def _value_arity(value: str, modules_by_name: dict[str, Module]) -> int | None:
    """Elements of the tuple an input value gives, where the text says so; None where it cannot be told."""
    v = value.strip()
    m = re.fullmatch(r"([A-Z][A-Z0-9_]*)\.out\.(\w+)", v)
    if m and m.group(1) in modules_by_name:
        return modules_by_name[m.group(1)].emit_arity.get(m.group(2))
    closure = re.search(r"\.(?:map|flatMap)\s*\{", v)
    if closure:
        last = [c for c in re.finditer(r"\.(?:map|flatMap)\s*\{", v)][-1]
        end = block_end(v, last.end() - 1)
        if v[end:].strip():
            return None  # more operators after the closure
        result = v[last.end():end - 1].split("->", 1)[-1].strip()
        if result.startswith("[") and block_end(result, 0) == len(result):
            return len(top_level_split(result[1:-1]))
        inner = re.search(r"->\s*(\[.*\])\s*\}\s*$", result, re.S)  # flatMap { ... collect { i -> [ ... ] } }
        if inner and block_end(inner.group(1), 0) == len(inner.group(1)):
            return len(top_level_split(inner.group(1)[1:-1]))
        return None
    if v.startswith("[") and block_end(v, 0) == len(v):
        return len(top_level_split(v[1:-1]))
    return None


def check(test: NfTest, modules_by_path: dict[Path, Module]) -> list[str]:
    """The ways `test` disagrees with its modules (empty: none)."""
    errors = []
    where = test.path.relative_to(REPO) if test.path.is_relative_to(REPO) else test.path
    by_name: dict[str, Module] = {}
    for name, script in [(test.process, test.script)] + list(test.setup.items()):
        mod = modules_by_path.get(script)
        if mod is None:
            errors.append(f"{where}: {name}'s script {script} is not a module")
            continue
        if mod.process != name:
            errors.append(f"{where}: tests process {name} but {script.parent.name}/{script.name} defines {mod.process}")
        by_name[name] = mod
    if not any(b.target == test.process for b in test.blocks):
        errors.append(f"{where}: no process block sets the inputs of {test.process}")
    for block in test.blocks:
        mod = by_name.get(block.target)
        if mod is None:
            continue
        n = len(mod.inputs)
        if sorted(block.inputs) != list(range(n)):
            errors.append(f"{where}: {block.target} declares {n} input(s) "
                          f"({', '.join('/'.join(d.names) for d in mod.inputs)}) but a process block sets "
                          f"{', '.join(f'input[{i}]' for i in sorted(block.inputs)) or 'none'}")
        for i, value in sorted(block.inputs.items()):
            if i >= n:
                continue
            decl = mod.inputs[i]
            arity = _value_arity(value, by_name)
            if arity is not None and decl.kind == "tuple" and arity != decl.arity:
                errors.append(f"{where}: {block.target} input[{i}] is declared `tuple` of {decl.arity} "
                              f"({', '.join(decl.names)}) but is given {arity} element(s): {value[:80]}")
            if arity is not None and decl.kind != "tuple" and re.fullmatch(r"[A-Z][A-Z0-9_]*\.out\.\w+", value) \
                    and arity != 1:
                errors.append(f"{where}: {block.target} input[{i}] is declared `{decl.kind} {decl.names[0]}` but is "
                              f"given a tuple of {arity}: {value}")
            named = block.comments.get(i)
            if named is not None and named != decl.names[-1] and named not in decl.names:
                errors.append(f"{where}: {block.target} input[{i}] is marked `// {named}` but input {i} is "
                              f"`{decl.kind} {', '.join(decl.names)}`")
            if named is None and n > 1:
                errors.append(f"{where}: {block.target} has {n} inputs: input[{i}] must end with "
                              f"`// {decl.names[-1]}` (the declaration it feeds)")
    for proc, emit in test.outs:
        mod = by_name.get(test.process if proc == "process" else proc)
        if mod is not None and emit not in mod.emits:
            errors.append(f"{where}: reads {proc}.out.{emit} but {mod.process} emits {', '.join(mod.emits)}")
    return errors


def all_modules() -> dict[Path, Module]:
    return {p.resolve(): parse_module(p) for p in sorted(MODULES.glob("*/main.nf"))}


MODULE_DIRS = sorted(p.parent.name for p in MODULES.glob("*/main.nf"))


@pytest.mark.parametrize("step", MODULE_DIRS)
def test_every_module_has_an_nf_test(step):
    assert (MODULES / step / "tests" / "main.nf.test").is_file(), f"modules/local/{step} has no tests/main.nf.test"


@pytest.mark.parametrize("step", MODULE_DIRS)
def test_nf_test_agrees_with_its_modules(step):
    path = MODULES / step / "tests" / "main.nf.test"
    if not path.is_file():
        pytest.fail(f"modules/local/{step} has no tests/main.nf.test")
    assert check(parse_nf_test(path), all_modules()) == []


def test_module_parser_reads_the_declarations():
    """The parser against what the modules declare (so that a parser bug cannot make the check vacuous)."""
    mods = {m.process: m for m in all_modules().values()}
    assert set(mods) == {"READ_VISIUM", "FILTER_REFERENCE", "TRAIN_REFERENCE", "MAP_CELLS", "MERGE_SHARDS",
                         "PLOT_SPATIAL", "REGIONS", "COLOCATION", "MULTIQC"}
    assert [(d.kind, d.names) for d in mods["MAP_CELLS"].inputs] == [("tuple", ["meta", "sections"]),
                                                                     ("path", ["signatures"])]
    assert [(d.kind, d.names) for d in mods["MERGE_SHARDS"].inputs] == [("tuple", ["meta", "sections", "shards"])]
    assert [d.names[0] for d in mods["MULTIQC"].inputs] == ["sections", "reference", "models", "figures", "versions",
                                                             "params_json", "expected_sections"]
    assert mods["REGIONS"].inputs[0].names == ["variant", "ids", "sections"]
    assert mods["TRAIN_REFERENCE"].emits[0] == "signatures" and mods["TRAIN_REFERENCE"].emit_arity["signatures"] == 2
    assert mods["MULTIQC"].emits == ["report", "data", "content", "warnings", "versions"]
    assert mods["COLOCATION"].emit_arity == {"factors": 1, "warnings": 1, "versions": 1}


def test_nf_test_parser_reads_a_file():
    t = parse_nf_test(MODULES / "map_cells" / "tests" / "main.nf.test")
    assert t.process == "MAP_CELLS" and t.script == (MODULES / "map_cells" / "main.nf").resolve()
    assert set(t.setup) == {"READ_VISIUM", "FILTER_REFERENCE", "TRAIN_REFERENCE"}
    own = [b for b in t.blocks if b.target == "MAP_CELLS"]
    assert len(own) == 2 and all(sorted(b.inputs) == [0, 1] for b in own)
    assert ("process", "csv") in t.outs and ("TRAIN_REFERENCE", "signatures") in t.outs


# --- the check can fail: drifted copies -----------------------------------------------------------------------

def _drifted(tmp_path: Path, step: str, module_edit=None, test_edit=None) -> list[str]:
    """check() on a copy of modules/local (in tmp_path) with `module_edit`/`test_edit` applied to `step`."""
    import shutil

    root = tmp_path / "modules" / "local"
    shutil.copytree(MODULES, root)
    if module_edit:
        p = root / step / "main.nf"
        new = module_edit(p.read_text())
        assert new != p.read_text(), "the module edit changed nothing"
        p.write_text(new)
    if test_edit:
        p = root / step / "tests" / "main.nf.test"
        new = test_edit(p.read_text())
        assert new != p.read_text(), "the nf-test edit changed nothing"
        p.write_text(new)
    mods = {p.resolve(): parse_module(p) for p in sorted(root.glob("*/main.nf"))}
    return check(parse_nf_test(root / step / "tests" / "main.nf.test"), mods)


def test_drift_an_input_added_to_the_module(tmp_path):
    errors = _drifted(tmp_path, "regions", module_edit=lambda t: t.replace(
        "    output:", "    val resolution\n\n    output:", 1))
    assert any("REGIONS declares 2 input(s)" in e for e in errors), errors


def test_drift_inputs_reordered(tmp_path):
    def swap(t):
        a = "    tuple val(meta), path(sections, stageAs: 'sections/*')"
        first = t.index(a)
        end = t.index("\n    path signatures\n")
        return t[:first] + "    path signatures\n" + t[first:end] + t[end + len("\n    path signatures"):]
    errors = _drifted(tmp_path, "map_cells", module_edit=swap)
    assert any("MAP_CELLS input[0] is marked `// sections` but input 0 is `path signatures`" in e for e in errors), errors
    assert any("MAP_CELLS input[1] is marked `// signatures` but input 1 is `tuple meta, sections`" in e for e in errors), errors


def test_drift_multiqc_inputs_swapped(tmp_path):
    errors = _drifted(tmp_path, "multiqc", module_edit=lambda t: t.replace(
        "    path(models,    stageAs: 'models/*')     // <run>_training.json, <run>_history.csv of every mapping model\n"
        "    path(figures,   stageAs: 'figures/f?/*') // PLOT_SPATIAL's and REGIONS' PNGs (one folder each: names may repeat)\n",
        "    path(figures,   stageAs: 'figures/f?/*')\n    path(models,    stageAs: 'models/*')\n"))
    assert any("MULTIQC input[2] is marked `// models`" in e for e in errors), errors


def test_drift_emit_renamed(tmp_path):
    errors = _drifted(tmp_path, "merge_shards", module_edit=lambda t: t.replace("emit: history_plot", "emit: history_png"))
    assert any("reads process.out.history_plot but MERGE_SHARDS emits" in e for e in errors), errors


def test_drift_setup_step_emit_renamed(tmp_path):
    errors = _drifted(tmp_path, "map_cells", test_edit=lambda t: t.replace(
        "TRAIN_REFERENCE.out.signatures.map", "TRAIN_REFERENCE.out.signature.map"))
    assert any("reads TRAIN_REFERENCE.out.signature but TRAIN_REFERENCE emits" in e for e in errors), errors


def test_drift_process_renamed(tmp_path):
    errors = _drifted(tmp_path, "colocation", module_edit=lambda t: t.replace("process COLOCATION {", "process COLOC {"))
    assert any("tests process COLOCATION but" in e and "defines COLOC" in e for e in errors), errors


def test_drift_tuple_shape(tmp_path):
    errors = _drifted(tmp_path, "merge_shards", module_edit=lambda t: t.replace(
        ", path(shards, stageAs: 'shards/*')", ""))
    assert any("MERGE_SHARDS input[0] is declared `tuple` of 2" in e for e in errors), errors


def test_drift_input_not_named(tmp_path):
    errors = _drifted(tmp_path, "plot_spatial", test_edit=lambda t: t.replace("csv -> csv }  // signatures", "csv -> csv }"))
    assert any("MAP_CELLS has 2 inputs: input[1] must end with `// signatures`" in e for e in errors), errors


def test_drift_input_missing_in_the_test(tmp_path):
    errors = _drifted(tmp_path, "plot_spatial", test_edit=lambda t: t.replace("input[0] = MAP_CELLS", "x = MAP_CELLS"))
    assert any("PLOT_SPATIAL declares 1 input(s)" in e for e in errors), errors
