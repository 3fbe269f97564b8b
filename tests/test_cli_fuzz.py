"""A fuzz of the command line: every command the parser has x every argument that takes a path
(or a name a path could be passed for) x a missing path, an empty file, and the wrong type of
file. Each must exit with code 2 and one line on stderr, never a traceback.

The commands and their arguments are read off retrofit.cli.build_parser(), so a new command or
argument is fuzzed without editing this file; only the baseline values of required arguments
(so that the fuzzed one is what is wrong) are chosen here, by argument name.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from retrofit.cli import build_parser, main
from retrofit.datasets import SyntheticConceptDataset
from retrofit.datasets.folders import to_pil

# written by the command, so a missing path is fine; an existing one must be refused
OUTPUTS = {"out", "html"}
# folders a command reuses (a cache): only a file where the folder belongs is wrong
REUSED = {"cache_dir"}
# a plain text file is a valid value (a vocabulary, one concept a line)
TEXT_OK = {"concepts"}
# settings that make a command that is (wrongly) not refused finish quickly
FAST = {
    "demo": ["--train-images", "40", "--test-images", "20", "--time-limit", "5"],
    "convert": ["--time-limit", "5", "--finetune", "none", "--batch-size", "16"],
}


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("the CLI has no subcommands")


def _string_arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The arguments that take free text (a path, a spec or a name), not flags or numbers."""
    return [
        action
        for action in parser._actions
        if action.nargs != 0
        and action.type is None
        and action.choices is None
        and not isinstance(action, argparse._HelpAction)
    ]


def _argv(action: argparse.Action, value: str) -> list[str]:
    return [value] if not action.option_strings else [action.option_strings[-1], value]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzz")
    export = root / "export"
    code = main(
        ["--quiet", "demo", "--out", str(export), "--cache-dir", str(root / "cache")]
        + ["--train-images", "200", "--test-images", "40", "--time-limit", "5"]
        + ["--n-features", "12", "--per-class", "3", "--max-pixel-images", "2"]
    )
    assert code == 0
    image, _ = SyntheticConceptDataset(1, split="test")[0]
    to_pil(image).save(root / "image.png")
    from retrofit import load
    from retrofit.editing.apply import head_fingerprint
    from retrofit.editing.file import edits_document

    edits = edits_document(
        head_fingerprint(load(export)), [{"op": "rename", "feature": 0, "name": "x"}]
    )
    (root / "edits.json").write_text(json.dumps(edits))
    answer = {"map": "0:backbone.body:0", "image": 0, "layer": "backbone.body", "depth": 1}
    answer |= {"predicted": "class_0", "guess": "class_0", "step": 1, "text": "red patch"}
    (root / "answers.json").write_text(json.dumps({"answers": [answer]}))
    (root / "empty").write_bytes(b"")
    (root / "empty-folder").mkdir()
    (root / "text.safetensors").write_text("not a safetensors file\n" * 4)
    (root / "text.json").write_text("not JSON {\n")
    (root / "full-folder").mkdir()
    (root / "full-folder" / "something.txt").write_text("x")
    return {"root": root, "export": export}


def _baseline(command: str, parser: argparse.ArgumentParser, world: dict[str, Path], out: Path):
    """Valid values for the required arguments of `command`, by argument name."""
    root = world["root"]
    values = {
        "dir": str(world["export"]),
        "images": str(root / "image.png"),
        "data": "synthetic:test:8",
        "train": "synthetic:train:16",
        "model": "demo",
        "out": str(out / ("page.html" if command == "reveal" else "new")),
        "apply": str(root / "edits.json"),
        "answers": str(root / "answers.json"),
    }
    argv: list[tuple[argparse.Action, str]] = []
    for action in parser._actions:
        if action.required or (not action.option_strings and action.nargs != 0):
            if action.dest not in values:
                raise AssertionError(f"no baseline value for {command} {action.dest}; add one")
            argv.append((action, values[action.dest]))
    return argv


def _cases(action: argparse.Action, root: Path, tmp: Path) -> list[tuple[str, str]]:
    if action.dest in REUSED:
        return [("a file where a folder belongs", str(root / "empty"))]
    if action.dest.endswith("_log"):  # a log may replace an existing file, never a folder
        return [("an existing non-empty folder", str(root / "full-folder"))]
    if action.dest in OUTPUTS:
        return [
            ("an existing file", str(root / "text.json")),
            ("an existing non-empty folder", str(root / "full-folder")),
        ]
    cases = [
        ("a missing path", str(tmp / "no" / "such.file")),
        ("an empty file", str(root / "empty")),
        ("a folder where a file belongs", str(root / "empty-folder")),
    ]
    if action.dest not in TEXT_OK:
        cases += [
            ("a text file where safetensors belongs", str(root / "text.safetensors")),
            ("a text file where JSON (or a folder) belongs", str(root / "text.json")),
        ]
    return cases


def _all_cases() -> list[tuple[str, str]]:
    return [
        (name, action.dest)
        for name, parser in _commands().items()
        for action in _string_arguments(parser)
    ]


def test_the_fuzz_covers_every_command() -> None:
    covered = {name for name, _ in _all_cases()}
    assert covered == set(_commands()), "every command has an argument that takes a path"


@pytest.mark.parametrize("command,dest", _all_cases())
def test_bad_paths_exit_2_with_one_line(
    command: str, dest: str, world: dict[str, Path], tmp_path: Path, capsys
) -> None:
    parser = _commands()[command]
    action = next(a for a in parser._actions if a.dest == dest)
    for index, (what, value) in enumerate(_cases(action, world["root"], tmp_path)):
        baseline = _baseline(command, parser, world, tmp_path / f"case{index}")
        argv = ["--quiet", command, *FAST.get(command, [])]
        for other, good in baseline:  # in the parser's order, so positionals stay in place
            argv += _argv(other, value if other is action else good)
        if action not in [other for other, _ in baseline]:
            argv += _argv(action, value)
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse
            code = exit_.code
        captured = capsys.readouterr()
        err = captured.err.strip()
        where = f"{command} {dest} = {what}: {' '.join(argv)}"
        assert code == 2, f"{where}: exit {code}\n{err}\n{captured.out[-2000:]}"
        assert len(err.splitlines()) == 1 and "Traceback" not in err, f"{where}:\n{err}"
        assert Path(value).name in err, f"{where}: the error does not name the value: {err}"
