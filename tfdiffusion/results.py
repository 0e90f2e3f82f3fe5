"""Dated result rows appended to a Markdown file, with the machine and the command that produced them.

A results file (docs/BENCHMARKS.md, a sweep's report) is a header naming the machine and versions,
then `## section`s of tables. `append_row` adds one row (and a `command` cell) to a section's last
table, starting a new table below it when the columns differ and a new section when there is none,
under a file lock so that concurrent writers never lose a row. The cells are `format_value`'s; the
machine facts are `tfdiffusion.machine.describe`'s dict. The JSON-lines files beside them are
`json_line`'s and `read_records`'. No TensorFlow is imported.
"""

import fcntl
import json
import os
import shlex
import subprocess
import sys

# The environment variables that change what a measurement measures, quoted in front of its command.
COMMAND_ENVIRONMENT = ("TF_ENABLE_ONEDNN_OPTS", "CUDA_VISIBLE_DEVICES", "TFDIFFUSION_PRECISION")


def format_value(value, digits=3):
    """A compact table cell: floats to `digits` significant figures, None empty, bools yes/no."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.0f}" if abs(value) >= 10**digits else f"{value:.{digits}g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def git_revision(root):
    """The short revision of the git checkout at `root`, "+dirty" when tracked files changed (None without git)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        revision, dirty = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
        return (revision + ("+dirty" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        return None


def command_line(root, argv=None):
    """The command that reproduces this run from `root` (with the environment variables that matter)."""
    argv = sys.argv if argv is None else argv
    script = os.path.relpath(os.path.abspath(argv[0]), root) if argv and argv[0].endswith(".py") else argv[0]
    env = [f"{name}={shlex.quote(os.environ[name])}" for name in COMMAND_ENVIRONMENT if name in os.environ]
    return " ".join(env + ["python", shlex.quote(script)] + [shlex.quote(a) for a in argv[1:]])


def short_environment(info):
    """One cell summarising the environment of a row (the file header has the details)."""
    versions = (f"PyTorch {info['torch']}, {info['torch_threads']} threads" if "torch" in info
                else f"TF {info['tensorflow']}, Keras {info['keras']}")
    return (f"{versions}, {info['cores']} cores, oneDNN {'on' if info['onednn'] else 'off'}"
            + (f", git {info['git']}" if info.get("git") else ""))


def row_date(info):
    """The "date" cell of a row: `info["date"]` to the minute."""
    return info["date"][:16].replace("T", " ")


def file_header(info, title="Benchmarks"):
    """The opening paragraph of a new results file: the machine and versions it was created on."""
    return (f"# {title}\n\nRows appended by the scripts of `benchmarks/` (see its README.md). File created on "
            f"{info['date']}: {info['cpu_model']}, flags: {', '.join(info['cpu_flags']) or 'n/a'}; Python "
            f"{info['python']}, NumPy {info['numpy']}, {short_environment(info)}.")


def insert_row(lines, title, head, line):
    """`lines` with `line` added to the last table of section `title`, under a new `head` if its columns differ."""
    if title not in lines:
        while lines and lines[-1] == "":
            lines.pop()
        return lines + ["", title, ""] + head + [line]
    start = lines.index(title)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    table = [i for i in range(start + 1, end) if lines[i].lstrip().startswith("|")]
    if table:
        first = end = table[-1] + 1
        while first - 1 > start and lines[first - 1].lstrip().startswith("|"):
            first -= 1
        if lines[first].strip() == head[0]:
            return lines[:end] + [line] + lines[end:]
    while end - 1 > start and lines[end - 1] == "":
        end -= 1
    return lines[:end] + [""] + head + [line] + lines[end:]


def append_row(path, section, row, command, info):
    """Appends `row` (column → value) and a `command` cell to the table `## section` of the file `path`.

    A missing file starts with `file_header(info)`; a row with other columns starts a new table below
    the section's last one. Concurrent writers are serialised by a file lock.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    command_cell = "`" + command.replace("`", "'").replace("|", "\\|") + "`"
    cells = [format_value(value) for value in row.values()] + [command_cell]
    head = ["| " + " | ".join(list(row) + ["command"]) + " |", "|" + "---|" * len(cells)]
    with open(path, "a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        lines = (f.read() or file_header(info) + "\n").split("\n")
        lines = insert_row(lines[:-1] if lines[-1] == "" else lines, f"## {section}", head,
                           "| " + " | ".join(cells) + " |")
        f.truncate(0)
        f.write("\n".join(lines) + "\n")


def json_line(record):
    """`record` as one line of JSON (arrays as lists, anything else unknown as its text)."""
    return json.dumps(record, default=lambda value: value.tolist() if hasattr(value, "tolist") else str(value))


def read_records(path, event=None):
    """The JSON objects of a JSON-lines file (of one `event`, if given); log lines and a line cut short are skipped."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return [r for r in records if isinstance(r, dict) and event in (None, r.get("event"))]


class Metrics(list):
    """Figures of one run, each checked against its target: [{metric, value, target, met, contended}].

    A target is a text such as ">= 1.0" or "<= 20 (at equal FID)": its first two words are checked
    against the value (met None without a target); the rest qualifies it in the table.
    """

    def add(self, name, value, target=None, contended=False):
        """Appends the metric `name` of `value`; `contended`: whether a figure it came from was."""
        op, bound = target.split()[:2] if target else (None, None)
        met = None if op is None else value >= float(bound) if op == ">=" else value <= float(bound)
        self.append({"metric": name, "value": value, "target": target, "met": met, "contended": bool(contended)})

    def value(self, name, record, key, target=None, flag="contended"):
        """`record[key]` (when the run has `record`), contended as `record[flag]`."""
        if record and key in record:
            self.add(name, record[key], target, record.get(flag))

    def ratio(self, name, mine, theirs, key, target=None, flag="contended"):
        """`mine[key] / theirs[key]` (when the run has both), contended if either is."""
        if mine and theirs and key in mine and key in theirs:
            self.add(name, mine[key] / theirs[key], target, mine.get(flag) or theirs.get(flag))
