"""The README: its shape (the two commands first, at most 200 lines, nothing outside the repository), every
shell command in it run on a tiny dataset (or marked ``# long run`` and checked against its command's
help), its links, and the results pages it points to regenerated from their JSON."""

from __future__ import annotations

import ast
import json
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lifelong.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LONG = "# long run"
TINY = {"n_users": 40, "events_per_user": [155, 175], "n_items": 400, "n_categories": 10, "n_interests": 4,
        "seed": 1}
runner = CliRunner()


def fenced(language: str) -> list[str]:
    """The bodies of the README's fenced blocks in ``language``."""
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), re.S | re.M)


def shell_commands() -> list[str]:
    """Every command of the README's bash blocks, continuation lines joined, comment lines dropped."""
    commands = []
    for block in fenced("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(line.strip())
    return commands


def split(command: str) -> tuple[list[str], str]:
    """A command's words and its trailing comment (from the first ``#`` outside quotes after a blank)."""
    quote, cut = None, len(command)
    for i, char in enumerate(command):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and i > 0 and command[i - 1] == " ":
            cut = i
            break
    return shlex.split(command[:cut]), command[cut:].strip()


def test_the_readme_puts_the_two_commands_first_and_stays_short():
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= 200
    head = "\n".join(lines[:40])
    assert "make demo" in head and "make test" in head
    assert "../shared" not in text and "/work/" not in text


def test_every_link_of_the_readme_is_a_file_of_the_repository():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text())
    assert links
    for link in links:
        assert not re.match(r"[a-z]+://", link), f"README links outside the repository: {link}"
        assert (ROOT / link).exists(), f"README links to {link}, which is not in the repository"


def test_long_commands_are_marked_and_name_real_targets_options_and_extras():
    makefile = (ROOT / "Makefile").read_text()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for command in shell_commands():
        words, comment = split(command)
        if words[0] in ("lifelong", "curl") and not comment.startswith(LONG):
            continue  # run by the tour test below
        assert comment.startswith(LONG), f"README command neither runs in a test nor is marked {LONG!r}: {command}"
        if words[0] == "make":
            assert re.search(rf"^{re.escape(words[1])}:", makefile, re.M), command
        elif words[0] == "pip":
            for word in words:
                for extra in re.findall(r"\[([a-z,]+)\]", word):
                    assert set(extra.split(",")) <= set(extras), command
        elif words[0] == "lifelong":  # a long lifelong command: its options are the command's own
            shown = runner.invoke(app, [words[1], "--help"], terminal_width=200)
            assert shown.exit_code == 0, shown.output
            for option in (w for w in words if w.startswith("--")):
                assert option in shown.output, f"{command}: `lifelong {words[1]}` has no {option}"
        else:
            pytest.fail(f"README command of an unknown program: {command}")
    documented = " ".join(re.findall(r"`([a-z]+)`", README.read_text()))
    for extra in ("test", "report", "bench", "serve"):
        assert extra in documented


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(server: subprocess.Popen, port: int, log: Path, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"lifelong serve exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"lifelong serve did not answer /healthz within {seconds} s:\n{log.read_text()[-3000:]}")


def test_every_readme_command_runs_on_a_tiny_dataset(tmp_path):
    """The README's commands in order on a tiny copy of the shipped log (one epoch each); the servers it
    starts (marked long: they run until stopped) are started here, and its curl requests sent to them."""
    spec = tmp_path / "tiny.toml"
    spec.write_text("\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in TINY.items()) + "\n")
    ran, servers, ports = [], [], {}

    def local(word: str) -> str:
        return str(spec) if word == "examples/tour.toml" else word.replace("runs/", f"{tmp_path}/runs/", 1)

    try:
        for command in shell_commands():
            words, comment = split(command)
            if words[0] == "lifelong" and words[1] == "serve":
                port = words[words.index("--port") + 1]
                ports[port] = free_port()
                words = [local(w) for w in words]
                words[words.index("--port") + 1] = str(ports[port])
                log = tmp_path / f"serve-{port}.log"
                servers.append((subprocess.Popen([sys.executable, "-m", "lifelong", *words[1:]], cwd=tmp_path,
                                                 stdout=log.open("w"), stderr=subprocess.STDOUT), ports[port], log))
                ran.append("serve")
            elif words[0] == "lifelong" and not comment.startswith(LONG):
                words = [local(w) for w in words]
                if "--epochs" in words:
                    words[words.index("--epochs") + 1] = "1"
                extra = ["--threads", "1", "--no-progress"] if words[1] == "train" else []
                result = runner.invoke(app, [*words[1:], *extra])
                assert result.exit_code == 0, f"{command}\n{result.output}"
                ran.append(words[1])
            elif words[0] == "curl" and not comment.startswith(LONG):
                for server, port, log in servers:
                    wait_until_up(server, port, log)
                url = next(w for w in words if "localhost:" in w)
                old = re.search(r"localhost:(\d+)", url).group(1)
                words = [w.replace(f"localhost:{old}", f"127.0.0.1:{ports[old]}") for w in words]
                done = subprocess.run(["curl", "--fail-with-body", "--max-time", "60", *words[1:]],
                                      capture_output=True, text=True)
                assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
                answer = json.loads(done.stdout)
                endpoint = url.rsplit("/", 1)[1]
                expected = {"events": "appended", "rank": "scores", "retrieve": "items"}[endpoint]
                assert answer[expected], answer
                ran.append(endpoint)
    finally:
        for server, _, _ in servers:
            server.terminate()
        for server, _, _ in servers:
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
    assert {"prepare", "train", "evaluate", "report", "export", "serve", "events", "rank", "retrieve"} <= set(ran)
    assert (tmp_path / "runs" / "tour" / "report" / "index.html").exists()
    assert (ROOT / "examples" / "tour.toml").exists()


def test_the_python_tour_calls_the_api():
    (block,) = fenced("python")
    tree = ast.parse(block)
    called = {node.func.attr for node in ast.walk(tree) if isinstance(node, ast.Call)
              and isinstance(node.func, ast.Attribute)}
    assert {"prepare", "train", "evaluate", "load", "rank"} <= called


def test_the_results_pages_are_what_their_json_gives():
    """docs/results/*.md from benchmarks/results_pages.py (one script; each run with its command, protocol,
    dataset and seed): a hand edit, or a JSON changed without regenerating its page, fails here."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "results_pages.py"), "--check"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_results_row_names_its_command_protocol_dataset_and_seed():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import results_pages
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    for page in results_pages.PAGES:
        rows = json.loads((results_pages.RESULTS / f"{page.name}.json").read_text())
        missing = results_pages.missing_fields(page, rows)
        assert set(missing) <= {"commit"}, f"{page.name}: rows without {missing}"
        text = (results_pages.RESULTS / f"{page.name}.md").read_text()
        assert text.count("\n| ") >= len(rows) and all(row["command"] in text.replace("\\|", "|") for row in rows)
