"""``make mutate``: break each promise on purpose and check that the test suite notices.

The mutants are a curated list kept in ``tests/mutants/*.toml`` (one file per
area): each names the promise it breaks (a sentence from the docs), a file, an
exact ``find`` text, its ``replace`` text and the tests that must fail with it.
Why a curated list and not a generated one (mutmut, cosmic-ray): the promises
worth guarding are behavioural (ack ordering, delete-on-PUBACK, back-pressure,
signature checks) and a generated operator swap rarely hits them; each mutant
here is a bug someone could plausibly write.

The runner never edits the worktree. It copies the tree (``git ls-files``,
tracked plus untracked-not-ignored) to a temporary directory, links the
component folders into the copy's ``edgeloop/`` the way the wheel installs them
(``[tool.setuptools.package-dir]``), so the copy is what ``import edgeloop.edge``
finds -- in pytest and in the CLI processes the tests start (``python -m``
puts the working directory first on ``sys.path``). It checks that before every
run, and a pytest plugin in this module records which file the mutated module
was imported from.

Per mutant: apply it to the copy, run its tests, restore the file. pytest
exit code 1 (tests failed) = killed, 0 = survived, a timeout = killed
(timeout); anything else (collection error, no tests) is an error, never a
kill. A ``find`` text that no longer matches exactly once stops the run before
anything is mutated: a stale mutant must not count as killed
(tests/unit/test_mutants.py checks the same in ``make test``). A baseline run
of every listed test on the unmutated copy comes first: a kill means nothing if
the test already fails.

    python -m lab.mutate                  # all mutants, report into docs/testing.md
    python -m lab.mutate --only ID ...    # some mutants (no report written)
    python -m lab.mutate --list
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[1]
MUTANTS_DIR = REPO / "tests" / "mutants"
REPORT = REPO / "docs" / "testing.md"
BEGIN, END = "<!-- mutate:begin (written by `make mutate`) -->", "<!-- mutate:end -->"
FIELDS = {"id", "promise", "file", "find", "replace", "tests"}
OPTIONAL = {"note"}
_PROBE_ENV = "EDGELOOP_MUTANT_PROBE"  # "module=path-to-write" for the pytest plugin below


class StaleMutant(Exception):
    """A mutants file is malformed, or a ``find`` text no longer matches its file exactly once."""


@dataclass(frozen=True)
class Mutant:
    id: str
    area: str  # the mutants file's stem
    promise: str
    file: str
    find: str
    replace: str
    tests: tuple[str, ...]
    note: str = ""


@dataclass
class Outcome:
    mutant: Mutant | None  # None: the baseline run
    status: str  # killed | survived | timeout | error
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    imported_from: str = ""
    detail: str = ""

    @property
    def killed(self) -> bool:
        return self.status in ("killed", "timeout")


# ---------------------------------------------------------------------- the mutants files


def load_mutants(directory: Path = MUTANTS_DIR) -> list[Mutant]:
    """Every mutant of every ``*.toml`` in ``directory``; raises StaleMutant for a malformed entry."""
    out: list[Mutant] = []
    seen: set[str] = set()
    files = sorted(directory.glob("*.toml"))
    if not files:
        raise StaleMutant(f"no mutants files in {directory}")
    for path in files:
        with path.open("rb") as fh:
            try:
                doc = tomllib.load(fh)
            except tomllib.TOMLDecodeError as exc:
                raise StaleMutant(f"{path}: {exc}") from exc
        entries = doc.get("mutant")
        if not isinstance(entries, list) or not entries:
            raise StaleMutant(f"{path}: no [[mutant]] entries")
        for i, entry in enumerate(entries):
            where = f"{path.name} [[mutant]] #{i + 1}"
            missing, unknown = FIELDS - set(entry), set(entry) - FIELDS - OPTIONAL
            if missing or unknown:
                raise StaleMutant(f"{where}: missing {sorted(missing)}, unknown {sorted(unknown)}")
            if entry["id"] in seen:
                raise StaleMutant(f"{where}: duplicate id {entry['id']!r}")
            seen.add(entry["id"])
            tests = entry["tests"]
            if not isinstance(tests, list) or not tests or not all(isinstance(t, str) and t for t in tests):
                raise StaleMutant(f"{where} ({entry['id']}): tests must be a non-empty list of pytest node ids")
            if entry["find"] == entry["replace"]:
                raise StaleMutant(f"{where} ({entry['id']}): replace is the same as find")
            out.append(Mutant(entry["id"], path.stem, entry["promise"], entry["file"], entry["find"],
                              entry["replace"], tuple(tests), entry.get("note", "")))
    return out


def check_current(mutants: list[Mutant], root: Path = REPO) -> None:
    """Every ``find`` occurs exactly once in its file and every test file exists; else StaleMutant."""
    problems = []
    for m in mutants:
        path = root / m.file
        if not path.is_file():
            problems.append(f"{m.id}: {m.file} does not exist")
            continue
        n = path.read_text().count(m.find)
        if n != 1:
            problems.append(f"{m.id}: find text occurs {n} times in {m.file} (must be exactly once)")
        for test in m.tests:
            if not (root / test.split("::")[0]).is_file():
                problems.append(f"{m.id}: test file of {test!r} does not exist")
    if problems:
        raise StaleMutant("stale mutants (fix tests/mutants/*.toml):\n  " + "\n  ".join(problems))


def module_of(file: str, root: Path = REPO) -> str:
    """``runtime/delivery.py`` -> ``edgeloop.edge.delivery``, through pyproject's package-dir mapping."""
    rel = Path(file).with_suffix("")
    for package, folder in package_dirs(root).items():
        try:
            return ".".join([package, *rel.relative_to(folder).parts])
        except ValueError:
            continue
    return ".".join(rel.parts)


def package_dirs(root: Path = REPO) -> dict[str, str]:
    with (root / "pyproject.toml").open("rb") as fh:
        return dict(tomllib.load(fh)["tool"]["setuptools"]["package-dir"])


# ---------------------------------------------------------------------- the copy


def make_copy(dest: Path, root: Path = REPO) -> Path:
    """The tree as ``git ls-files`` sees it (working copies, untracked-not-ignored included), importable."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = root / rel
        if not src.is_file():  # deleted in the worktree, not yet staged
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    for package, folder in package_dirs(root).items():
        link = dest.joinpath(*package.split("."))
        link.symlink_to(os.path.relpath(dest / folder, link.parent), target_is_directory=True)
    return dest


def copy_env(copy: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(PYTHONPATH=str(copy), PYTHONDONTWRITEBYTECODE="1")
    return env


def imported_from(copy: Path, *modules: str) -> dict[str, Path]:
    """Where a fresh interpreter in the copy (as the tests' CLI processes run) imports each module from."""
    code = f"import importlib\nfor name in {list(modules)!r}:\n    print(importlib.import_module(name).__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=copy, env=copy_env(copy), capture_output=True, text=True,
                         timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"cannot import {modules} in the copy: {out.stderr[-2000:]}")
    return dict(zip(modules, map(Path, out.stdout.split("\n"))))


def assert_in_copy(path: Path, copy: Path, what: str) -> None:
    if not path.resolve().is_relative_to(copy.resolve()):
        raise RuntimeError(f"{what} was imported from {path}, not from the mutated copy {copy}: refusing to go on")


# ---------------------------------------------------------------------- running


def run_tests(copy: Path, mutant: Mutant | None, tests: list[str], timeout_s: float, tag: str) -> Outcome:
    """pytest on ``tests`` in the copy; with a mutant, the plugin below records where its module came from."""
    module = module_of(mutant.file) if mutant else None
    junit = copy / f".mutate-{tag}.xml"
    probe = copy / f".mutate-{tag}.probe"
    for p in (junit, probe):
        p.unlink(missing_ok=True)
    env = copy_env(copy)
    if module:
        env[_PROBE_ENV] = f"{module}={probe}"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "lab.mutate", f"--junitxml={junit}",
           *tests]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout_s)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        code = None
    seconds = time.monotonic() - t0
    failed = failed_tests(junit)
    where = probe.read_text().strip() if probe.exists() else ""
    tail = "\n".join(output.splitlines()[-15:])
    if code is None:
        status = "timeout"
    elif code == 0:
        status = "survived"
    elif code == 1 and failed:
        status = "killed"
    else:
        status = "error"
    return Outcome(mutant, status, failed, round(seconds, 1), where, tail)


def failed_tests(junit: Path) -> list[str]:
    if not junit.exists():
        return []
    out = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            path = case.get("classname", "").replace(".", "/")
            out.append(f"{path}.py::{case.get('name')}")
    return out


def run(mutants: list[Mutant], *, baseline: bool, timeout_s: float, keep: bool = False) -> list[Outcome]:
    check_current(mutants)
    tmp = Path(tempfile.mkdtemp(prefix="edgeloop-mutate-"))
    copy = make_copy(tmp / "tree")
    print(f"mutate: a copy of the tree in {copy}", flush=True)
    try:
        for module, where in imported_from(copy, *sorted({module_of(m.file) for m in mutants})).items():
            assert_in_copy(where, copy, module)
        print("mutate: each mutated module imports from the copy", flush=True)
        if baseline:
            tests = sorted({t for m in mutants for t in m.tests})
            print(f"mutate: baseline, {len(tests)} tests on the unmutated copy ...", flush=True)
            base = run_tests(copy, None, tests, timeout_s * 2, "baseline")
            if base.status != "survived":
                raise RuntimeError(f"baseline run is not green ({base.status}; failed: {base.failed}):\n{base.detail}")
            print(f"mutate: baseline green in {base.seconds:.0f}s", flush=True)
        results = []
        for i, m in enumerate(mutants, 1):
            target = copy / m.file
            original = target.read_text()
            if original.count(m.find) != 1:
                raise StaleMutant(f"{m.id}: find text does not match exactly once in the copy")
            target.write_text(original.replace(m.find, m.replace))
            module = module_of(m.file)
            try:
                assert_in_copy(imported_from(copy, module)[module], copy, module)
                res = run_tests(copy, m, list(m.tests), timeout_s, m.id)
            finally:
                target.write_text(original)
            if res.imported_from and not res.imported_from.startswith("-"):
                assert_in_copy(Path(res.imported_from), copy, f"{module} (inside pytest)")
            print(f"[{i}/{len(mutants)}] {m.id:<40} {res.status:<8} {res.seconds:6.1f}s  "
                  f"{', '.join(short(t) for t in res.failed[:3])}", flush=True)
            if res.status == "error":
                print(res.detail, flush=True)
            results.append(res)
        return results
    finally:
        if keep:
            print(f"mutate: kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def short(test: str) -> str:
    return test.split("/")[-1]


# ---------------------------------------------------------------------- report


def table(results: list[Outcome]) -> str:
    lines = ["| mutant | area | behaviour broken | result | killed by | s |", "|---|---|---|---|---|---|"]
    for r in results:
        by = "<br>".join(f"`{short(t)}`" for t in r.failed) or "—"
        lines.append(f"| `{r.mutant.id}` | {r.mutant.area} | {r.mutant.promise} | **{r.status}** | {by} | {r.seconds:.0f} |")
    return "\n".join(lines)


def write_report(results: list[Outcome], elapsed_s: float, path: Path = REPORT) -> None:
    killed = sum(r.killed for r in results)
    survivors = [r for r in results if not r.killed]
    body = [BEGIN, "",
            f"Last run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {killed} of {len(results)} mutants "
            f"killed, {len(survivors)} not; {elapsed_s / 60:.0f} min with the baseline run (s: each mutant's test run).",
            "", table(results), ""]
    if survivors:
        body += ["Not killed:", ""]
        body += [f"- `{r.mutant.id}` ({r.status}): {r.mutant.note or 'no explanation recorded in its mutants file'}"
                 for r in survivors]
        body.append("")
    body.append(END)
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + "\n".join(body) + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + "\n".join(body) + "\n"
    path.write_text(text)


# ---------------------------------------------------------------------- pytest plugin (-p lab.mutate)


def pytest_sessionfinish(session, exitstatus):  # noqa: ANN001, ARG001 -- pytest hook
    """Inside a mutant's pytest run: record the file the mutated module was imported from."""
    spec = os.environ.get(_PROBE_ENV)
    if not spec:
        return
    module, out = spec.split("=", 1)
    mod = sys.modules.get(module)
    Path(out).write_text(getattr(mod, "__file__", "") if mod else "-not imported in the pytest process")


# ---------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.mutate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", metavar="ID", help="run these mutants only (no report written)")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--no-baseline", action="store_true", help="skip the baseline run of the unmutated copy")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant's test run (default 900)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy")
    ap.add_argument("--no-report", action="store_true", help=f"do not write the report into {REPORT.relative_to(REPO)}")
    args = ap.parse_args(argv)
    try:
        mutants = load_mutants()
        check_current(mutants)
    except StaleMutant as exc:
        print(f"mutate: {exc}", file=sys.stderr)
        return 2
    if args.list:
        for m in mutants:
            print(f"{m.id:<40} {m.area:<12} {m.file}\n    {m.promise}\n    tests: {', '.join(m.tests)}")
        return 0
    if args.only:
        unknown = set(args.only) - {m.id for m in mutants}
        if unknown:
            print(f"mutate: unknown mutant ids {sorted(unknown)}", file=sys.stderr)
            return 2
        mutants = [m for m in mutants if m.id in args.only]
    t0 = time.monotonic()
    try:
        results = run(mutants, baseline=not args.no_baseline, timeout_s=args.timeout, keep=args.keep)
    except (StaleMutant, RuntimeError) as exc:
        print(f"mutate: {exc}", file=sys.stderr)
        return 2
    print()
    print(table(results))
    survivors = [r for r in results if not r.killed]
    if not args.only and not args.no_report:
        write_report(results, time.monotonic() - t0)
        print(f"\nmutate: report written to {REPORT.relative_to(REPO)}")
    if survivors:
        print(f"\nmutate: {len(survivors)} mutant(s) not killed: {', '.join(r.mutant.id for r in survivors)}")
        return 1
    print(f"\nmutate: all {len(results)} mutants killed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
