"""Docs as tests (#27 item 3): every shell command of README.md and docs/**/*.md runs here, or its page marks it
illustrative with the reason.

What counts as a command: each command line of a fenced block labelled bash, console, sh or shell, or of an
unlabelled block whose lines start with a command (`basinlab`, `python3 -m basinlab`, `torchrun`, `pip`, `for`,
...), and each command in the `basinlab` column of the pages' "seed command | basinlab" tables. A command is
marked by an HTML comment right before its block, or inside its table row: `<!-- illustrative: REASON -->`.

How a command runs: in this process (`basinlab.cli.main`), after the page's placeholders are replaced (data
folders by a folder of tiny datasets in the real formats, run folders and checkpoints by one tiny trained run,
`my.yaml` by a small options file) and with tiny-scale overrides appended: `train` gets `--dry-run` (options
checked, data found and read, model built and probed, methods configured; nothing written), the measurements
a few examples, points and iterations. A console block's shown output (after a `$ ` command) must appear in
what the command prints; an output that is a `basinlab: error:` line means exit status 2.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from basinlab.analysis.landscape import parse_range
from basinlab.cli import build_parser, main
from basinlab.cli.analysis import LARGE_GRID
from tests.test_data import write_cifar_batch, write_idx

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), ROOT / "experiments" / "README.md",
         *sorted((ROOT / "experiments").glob("*/README.md"))]  # the site's Reproductions pages

SHELL_BLOCKS = {"bash", "console", "sh", "shell"}
COMMAND_WORDS = ("basinlab", "python", "python3", "torchrun", "pip", "for")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)\s*$")
MARK = re.compile(r"<!--\s*illustrative:(.*?)-->", re.S)
GENERATED_TABLE = re.compile(r"<!-- seed-flags:start -->.*?<!-- seed-flags:end -->", re.S)  # tests/test_hints.py's
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")
LOOP = re.compile(r"^for\s+(\w+)\s+in\s+([^;\n]+?)\s*[;\n]\s*do\s+(.+?)\s*;?\s*done$", re.S)


@dataclass(frozen=True)
class DocCommand:
    page: str            # relative to the repository
    line: int            # 1-based line of the command (or its table row)
    text: str            # the command as the page gives it (continuations joined, shell variables expanded)
    mark: str | None     # the reason of its `<!-- illustrative: ... -->` marker; None where it has none
    output: tuple[str, ...] = ()  # a console block's output lines shown after the command

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


# ------------------------------------------------------------------------------------------- collecting
def marker_reason(line: str) -> str | None:
    found = MARK.search(line)
    return None if found is None else found.group(1).strip()


def logical_lines(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Lines with their `\\` continuations joined, each with the number of its first line."""
    joined, start, parts = [], None, []
    for number, text in lines:
        if start is None:
            start = number
        if text.rstrip().endswith("\\"):
            parts.append(text.rstrip()[:-1].rstrip())
            continue
        parts.append(text.strip() if parts else text.rstrip())
        joined.append((start, " ".join(p.strip() for p in parts)))
        start, parts = None, []
    if parts:
        joined.append((start, " ".join(p.strip() for p in parts)))
    return joined


def first_word(text: str) -> str:
    words = [w for w in text.lstrip("$ ").split() if not ENV_ASSIGNMENT.match(w)]
    return words[0] if words else ""


def expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), m.group(0)), text)


def block_commands(page: str, lang: str, lines: list[tuple[int, str]], mark: str | None) -> list[DocCommand]:
    """The commands of one fenced block (none for a block of something else: a listing, a config)."""
    lines = logical_lines(lines)
    if any(text.startswith("$ ") for _, text in lines):
        return transcript_commands(page, lines, mark)
    if lang not in SHELL_BLOCKS and not any(first_word(text) in COMMAND_WORDS for _, text in lines):
        return []
    return script_commands(page, lines, mark)


def transcript_commands(page: str, lines: list[tuple[int, str]], mark: str | None) -> list[DocCommand]:
    """A console transcript: each `$ ` line is a command, the lines up to the next one its output."""
    commands = []
    for index, (number, text) in enumerate(lines):
        if text.startswith("$ "):
            output = []
            for _, after in lines[index + 1:]:
                if after.startswith("$ "):
                    break
                output += [after.strip()] if after.strip() else []
            commands.append(DocCommand(page, number, text[2:].strip(), mark, tuple(output)))
    return commands


def script_commands(page: str, lines: list[tuple[int, str]], mark: str | None) -> list[DocCommand]:
    """A shell script: one command a line, with its `NAME="..."` variables expanded and `for` loops unrolled;
    comment lines are skipped, and a line starting with `[` continues a usage synopsis."""
    commands, variables, loop = [], {}, None
    for number, text in lines:
        text = text.strip()
        if loop is not None:  # a `for ...; do` spread over lines, up to its `done`
            loop = (loop[0], loop[1] + "\n" + text)
            if re.search(r"\bdone$", text):
                commands += loop_commands(page, *loop, variables, mark)
                loop = None
        elif not text or text.startswith("#"):
            continue
        elif text.startswith("[") and commands:
            commands[-1] = replace(commands[-1], text=f"{commands[-1].text} {text}")
        elif len(shlex.split(text, comments=True)) == 1 and ENV_ASSIGNMENT.match(text):
            name, value = shlex.split(text)[0].split("=", 1)
            variables[name] = expand(value, variables)
        elif text.startswith("for "):
            if re.search(r"\bdone$", text):
                commands += loop_commands(page, number, text, variables, mark)
            else:
                loop = (number, text)
        else:
            commands.append(DocCommand(page, number, expand(text, variables), mark))
    if loop is not None:  # never closed: the loop as written, which no test can run
        commands.append(DocCommand(page, loop[0], loop[1], mark))
    return commands


def loop_commands(page: str, number: int, text: str, variables: dict, mark: str | None) -> list[DocCommand]:
    """`for V in a b; do BODY; done`: BODY once per word (a loop that is not of this form stays one command)."""
    loop = LOOP.match(text)
    if loop is None:
        return [DocCommand(page, number, text, mark)]
    name, words, body = loop.groups()
    return [DocCommand(page, number, expand(body, {**variables, name: word}), mark) for word in words.split()]


def table_commands(page: str, rows: list[tuple[int, str]]) -> list[DocCommand]:
    """The commands in the `basinlab` column of a table (code spans that start as a command or with `...`)."""
    def cells(row: str) -> list[str]:
        return [c.strip() for c in re.split(r"(?<!\\)\|", row.strip().strip("|"))]
    header = [re.sub(r"[`*]", "", c).strip().lower() for c in cells(rows[0][1])]
    columns = [i for i, name in enumerate(header) if name == "basinlab"]
    commands = []
    for number, row in rows[2:]:
        for column in columns:
            cell = cells(row)[column] if column < len(cells(row)) else ""
            for span in re.findall(r"`([^`]+)`", cell):
                span = span.replace("\\|", "|").strip()
                if first_word(span) in COMMAND_WORDS or span.startswith("..."):
                    commands.append(DocCommand(page, number, span, marker_reason(row)))
    return commands


def page_commands(page: str, text: str) -> list[DocCommand]:
    """Every command of a Markdown page, in page order."""
    text = GENERATED_TABLE.sub(lambda m: "\n" * m.group(0).count("\n"), text)  # keep the line numbers
    lines = text.splitlines()
    commands, index, previous = [], 0, ""
    while index < len(lines):
        line = lines[index]
        fence = FENCE.match(line)
        if fence:
            indent, ticks, lang = fence.groups()
            body, index = [], index + 1
            while index < len(lines) and not lines[index].strip().startswith(ticks):
                body.append((index + 1, lines[index].removeprefix(indent)))
                index += 1
            commands += block_commands(page, lang.lower(), body, marker_reason(previous)
                                       if previous.strip().startswith("<!--") else None)
            previous, index = "", index + 1
            continue
        if line.lstrip().startswith("|"):
            rows = []
            while index < len(lines) and lines[index].lstrip().startswith("|"):
                rows.append((index + 1, lines[index]))
                index += 1
            if len(rows) > 2:
                commands += table_commands(page, rows)
            previous = ""
            continue
        if line.strip():
            previous = line
        index += 1
    return commands


def collect() -> list[DocCommand]:
    return [c for page in PAGES for c in page_commands(str(page.relative_to(ROOT)), page.read_text())]


COMMANDS = collect()


def words_of(text: str) -> list[str]:
    """The shell words of a command line; operators (`&&`, `|`, `;`, `>`) are words of their own."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    return list(lexer)


def argv_of(text: str) -> list[str] | None:
    """The `basinlab` arguments of a command that can run in this process, else None (another program, shell
    syntax, or placeholders of alternatives and elisions: `a|b`, `[--flag]`, `<lr>`, `...`)."""
    words = words_of(text)
    while words and ENV_ASSIGNMENT.match(words[0]):
        words = words[1:]
    if any(set(w) <= set("();<>|&") or "..." in w or "$" in w or w.startswith("[") for w in words):
        return None
    if words[:3] in (["python3", "-m", "basinlab"], ["python", "-m", "basinlab"]):
        return words[3:]
    return words[1:] if words[:1] == ["basinlab"] else None


RUNNABLE = [c for c in COMMANDS if c.mark is None and argv_of(c.text) is not None]


# --------------------------------------------------------------------------------------------- the data
CIFAR10_TRAIN = 2048    # the largest documented CIFAR-10 batch (C1 with SAM, SmoothOut's ResNet-44)
CIFAR100_TRAIN = 128    # onlinenorm-cifar100
MNIST_TRAIN = 4096      # the SmoothOut MNIST preset's batch
IMAGENET_TRAIN = 256    # onlinenorm-imagenet's batch; streamed images are decoded at setup, so they stay few


@pytest.fixture(scope="session")
def doc_data(tmp_path_factory) -> Path:
    """A datasets folder in basinlab's layout with tiny random datasets in the real formats: the CIFAR pickles,
    MNIST's gzipped IDX files, an ImageNet tree of JPEGs (as large as the documented batches need)."""
    root = tmp_path_factory.mktemp("datasets")
    rng = np.random.default_rng(27)
    cifar10 = root / "cifar10" / "cifar-10-batches-py"
    per_batch = -(-CIFAR10_TRAIN // 5)
    for k in range(1, 6):
        write_cifar_batch(cifar10 / f"data_batch_{k}", rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                          rng.integers(0, 10, per_batch))
    write_cifar_batch(cifar10 / "test_batch", rng.integers(0, 256, (64, 3072), dtype=np.uint8), rng.integers(0, 10, 64))
    cifar100 = root / "cifar100" / "cifar-100-python"
    for split, count in (("train", CIFAR100_TRAIN), ("test", 32)):
        write_cifar_batch(cifar100 / split, rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                          rng.integers(0, 100, count), label_key=b"fine_labels")
    mnist = root / "mnist"
    for prefix, count in (("train", MNIST_TRAIN), ("t10k", 64)):
        write_idx(mnist / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28), np.uint8), gz=True)
        write_idx(mnist / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, count, np.uint8), gz=True)
    for split, per_class in (("train", IMAGENET_TRAIN // 2), ("val", 4)):
        for wnid in ("n01440764", "n01443537"):
            folder = root / "imagenet" / split / wnid
            folder.mkdir(parents=True)
            for k in range(per_class):
                Image.fromarray(rng.integers(0, 256, (12, 16, 3), np.uint8)).save(folder / f"{wnid}_{k}.JPEG",
                                                                                  format="JPEG")
    return root


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """The run folder that stands for every run of the pages: one epoch of the default model on 64 digits."""
    folder = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("basinlab.records.plots.plot_run", lambda *args, **kwargs: [])
        assert main(["train", "--train-limit", "64", "--val-limit", "32", "-b", "32", "--epochs", "1",
                     "--results-dir", str(folder), "--save", "run", "--quiet"]) == 0
    return folder / "run"


# ----------------------------------------------------------------------------------------- substitutions
DATA_PLACEHOLDERS = {"DIR", "~/data", "/path/to/data"}
RUN_PLACEHOLDER = re.compile(r"^(RUN|RUN_DIR|RUN_FOLDER|CHECKPOINT|PATH|R|A|B|(results|runs)/[\w.-]+)"
                             r"(/(best|last)\.pt)?$")
OPTIONS_FILE = "my.yaml"   # training.md's `--config my.yaml`: a file of train options
# Appended to what the page gives (later flags win): a few examples, points and iterations
SCALE = {
    "train": ["--dry-run"],
    "evaluate": ["--limit", "16"],
    "sharpness": ["--limit", "16", "--max-iter", "3", "--iterations", "3", "--keskar-iter", "1", "--subspace-dim", "8"],
    "landscape": ["--alpha", "0,0.5", "--limit", "16", "-b", "8", "--bn-batches", "1", "--quiet"],
    "lr-range": ["--num-steps", "3", "--train-limit", "256"],
}


def substituted(argv: list[str], data: Path, run: Path) -> list[str]:
    out = []
    for word in argv:
        if word in DATA_PLACEHOLDERS:
            word = str(data)
        elif RUN_PLACEHOLDER.match(word):
            checkpoint = RUN_PLACEHOLDER.match(word).group(3)
            word = str(run) + (checkpoint or "")
        out.append(word)
    return out


def scaled(argv: list[str]) -> list[str]:
    if "-h" in argv or "--help" in argv:
        return argv
    extra = list(SCALE.get(argv[0], []))
    if argv[:2] == ["landscape", "directions"] and "--beta" in argv:
        extra += ["--beta", "0,0.5"]
    return argv + extra


def documented_grid_fits(argv: list[str]) -> bool:
    """A landscape grid as the page gives it runs without --yes, or the page says --yes."""
    args = build_parser().parse_args(argv)
    points = len(parse_range(args.alpha, "--alpha"))
    if getattr(args, "beta", None) is not None:
        points *= len(parse_range(args.beta, "--beta"))
    return points <= LARGE_GRID or args.yes


# ----------------------------------------------------------------------------------------------- tests
SAMPLE_PAGE = """\
```bash
basinlab train --epochs 1 \\
    --lr 0.1   # a comment
# a comment line
X="--seed 1 -b 8"
OMP_NUM_THREADS=1 basinlab train $X
for r in a b; do
  basinlab evaluate runs/$r
done
```

<!-- illustrative: needs a GPU -->
```
torchrun --nproc_per_node 2 -m basinlab train ...
```

<!-- illustrative: a usage synopsis -->
```
basinlab sharpness RUN [--measure hessian]
                       [--limit N]
```

```
results/run/   a folder listing, not commands
```

```python
basinlab.train()
```

```console
$ basinlab stability --delays 1
| tau | gamma=0 |
```

| seed command | basinlab |
|---|---|
| `main.py -b 1` | `basinlab train -b 1` with `--flag` |
| `main.py -e` | <!-- illustrative: --> `... --x` |

<!-- seed-flags:start -->
| seed flag | basinlab |
|---|---|
| `--x` | `basinlab train --x` |
<!-- seed-flags:end -->
"""


def test_the_collector_finds_block_lines_loops_table_cells_and_markers():
    found = [(c.line, c.text, c.mark, c.output) for c in page_commands("p.md", SAMPLE_PAGE)]
    assert found == [
        (2, "basinlab train --epochs 1 --lr 0.1   # a comment", None, ()),
        (6, "OMP_NUM_THREADS=1 basinlab train --seed 1 -b 8", None, ()),
        (7, "basinlab evaluate runs/a", None, ()),
        (7, "basinlab evaluate runs/b", None, ()),
        (14, "torchrun --nproc_per_node 2 -m basinlab train ...", "needs a GPU", ()),
        (19, "basinlab sharpness RUN [--measure hessian] [--limit N]", "a usage synopsis", ()),
        (32, "basinlab stability --delays 1", None, ("| tau | gamma=0 |",)),
        (38, "basinlab train -b 1", None, ()),
        (39, "... --x", "", ()),
    ]
    assert [argv_of(text) for _, text, _, _ in found] == [
        ["train", "--epochs", "1", "--lr", "0.1"], ["train", "--seed", "1", "-b", "8"], ["evaluate", "runs/a"],
        ["evaluate", "runs/b"], None, None, ["stability", "--delays", "1"], ["train", "-b", "1"], None]
    assert argv_of("basinlab train --server ssgd|asgd [--delay d]") is None
    assert argv_of("pip install -e . && basinlab train") is None
    quoted = "basinlab train --model-config \"{'data_regime': [{'epoch': 0}]}\""  # brackets inside quotes
    assert argv_of(quoted) == ["train", "--model-config", "{'data_regime': [{'epoch': 0}]}"]


def test_every_command_runs_here_or_is_marked_with_a_reason():
    unmarked = [f"{c.where}: {c.text}" for c in COMMANDS if c.mark is None and argv_of(c.text) is None]
    assert not unmarked, ("commands neither runnable here nor marked `<!-- illustrative: REASON -->` in their "
                          "page:\n" + "\n".join(unmarked))
    reasonless = [c.where for c in COMMANDS if c.mark is not None and len(c.mark.split()) < 2]
    assert not reasonless, f"illustrative markers without a reason (a few words, not a tag): {reasonless}"


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # the image folders' 4 loaders on 2 cores
@pytest.mark.parametrize("command", RUNNABLE, ids=lambda c: f"{c.where}:{argv_of(c.text)[0]}")
def test_documented_command_runs(command, doc_data, tiny_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # outputs (-o, --output, default names) go to a folder of its own
    monkeypatch.setenv("BASINLAB_DATASETS", str(tmp_path / "no-datasets"))  # a page must say where its data is
    (tmp_path / OPTIONS_FILE).write_text("model: mnist\nepochs: 1\ntrain-limit: 128\n")
    argv = substituted(argv_of(command.text), doc_data, tiny_run)
    if argv[0] == "landscape":
        assert documented_grid_fits(argv), f"{command.where}: a grid of more than {LARGE_GRID} points without --yes"
    expected = 2 if command.output[:1] and command.output[0].startswith("basinlab: error:") else 0
    try:
        status = main(scaled(argv))
    except SystemExit as exc:  # --help
        status = exc.code
    printed = capsys.readouterr()
    shown = printed.out + printed.err
    assert status == expected, f"{command.where}: `{command.text}` exited {status}:\n{shown[-3000:]}"
    missing = [line for line in command.output if line not in shown]
    assert not missing, f"{command.where}: the page shows output the command does not print: {missing}"
