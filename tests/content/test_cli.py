"""`ringfence content ...` as an operator runs it: each failure is one line on stderr and exit 1."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ringfence.cli import main

RINGFENCE = [sys.executable, "-m", "ringfence.cli"]


def write_package(path, version):
    path.mkdir(parents=True)
    (path / "manifest.toml").write_text(
        f'name = "linux"\nengine = "ringfence.sigma"\nversion = "{version}"\n'
    )
    (path / "rule.yml").write_text(f"title: rule {version}\n")
    return str(path)


def test_keys_publish_serve_update_from_the_command_line(tmp_path, capsys):
    keys, repo, state = str(tmp_path / "keys"), str(tmp_path / "repo"), str(tmp_path / "state")
    assert main(["content", "keys", "init", keys]) == 0
    assert "take" in capsys.readouterr().out
    assert (
        main(["content", "publish", write_package(tmp_path / "p1", "1.0"), "--repo", repo, "--keys", keys])
        == 0
    )
    assert "published content/ringfence.sigma/linux-1.0.tar" in capsys.readouterr().out

    server = subprocess.Popen(
        [*RINGFENCE, "content", "serve", repo, "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True
    )
    try:
        line = server.stdout.readline()  # printed once listening: "serving REPO on http://HOST:PORT/ ..."
        url = line.split(" on ", 1)[1].split("/ ", 1)[0]
        args = ["content", "update", "--url", url, "--state-dir", state]
        assert main([*args, "--root", os.path.join(keys, "root.json")]) == 0
        assert "staged ringfence.sigma linux 1.0" in capsys.readouterr().out
        assert main(args) == 0
        assert "up to date: ringfence.sigma 1.0" in capsys.readouterr().out
    finally:
        server.terminate()
        server.wait(timeout=30)
        server.stdout.close()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot connect" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["content", "keys", "init", "{keys}"], "not empty; refusing to overwrite keys"),
        (["content", "publish", "{tmp}/none", "--repo", "{repo}", "--keys", "{keys}"], "cannot read"),
        (["content", "publish", "{pkg}", "--repo", "{repo}", "--keys", "{keys}"], "versions only go up"),
        (
            ["content", "publish", "{pkg}", "--repo", "{repo}", "--keys", "{keys}", "--expire", "x"],
            "--expire 'x'",
        ),
        (["content", "update", "--url", "http://127.0.0.1:1", "--state-dir", "{tmp}/s"], "no trusted root"),
        (
            ["content", "update", "--url", "x", "--state-dir", "{tmp}/s", "--root", "{pkg}/rule.yml"],
            "not a signed",
        ),
        (["content", "serve", "{tmp}"], "not a content repository"),
        (["content", "publish", "{pkg}", "--repo", "/dev/null/repo", "--keys", "{keys}"], "Not a directory"),
        (["content", "keys", "init", "/dev/null/keys"], "Not a directory"),
        (["content", "serve", "{repo}", "--listen", "nowhere"], "expected HOST:PORT"),
    ],
)
def test_operator_mistakes_are_one_line(tmp_path, capsys, argv, why):
    keys, repo = str(tmp_path / "keys"), str(tmp_path / "repo")
    pkg = write_package(tmp_path / "pkg", "1.0")
    assert main(["content", "keys", "init", keys]) == 0
    assert main(["content", "publish", pkg, "--repo", repo, "--keys", keys]) == 0
    capsys.readouterr()
    values = {"keys": keys, "repo": repo, "pkg": pkg, "tmp": str(tmp_path)}
    assert main([a.format(**values) for a in argv]) == 1
    err = capsys.readouterr().err
    assert why in err and err.count("\n") == 1 and err.startswith("ringfence: "), err


def test_sign_and_rotate_from_the_command_line(tmp_path, capsys):
    keys, repo = str(tmp_path / "keys"), str(tmp_path / "repo")
    assert main(["content", "keys", "init", keys]) == 0
    assert (
        main(["content", "publish", write_package(tmp_path / "p", "1"), "--repo", repo, "--keys", keys]) == 0
    )
    assert main(["content", "sign", "--repo", repo, "--keys", keys]) == 0
    assert "timestamp version 3" in capsys.readouterr().out
    assert main(["content", "keys", "rotate", "snapshot", "--repo", repo, "--keys", keys]) == 0
    assert "root version 2" in capsys.readouterr().out
    assert os.listdir(os.path.join(keys, "online", "retired"))[0].startswith("snapshot-")


@pytest.mark.parametrize(
    "argv",
    [["content"], ["content", "keys"], ["content", "keys", "init"], ["content", "keys", "rotate", "bogus"]],
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2


def test_help_names_what_each_command_needs(capsys):
    for argv, words in [
        (["content", "keys", "init", "--help"], ["offline", "root.json", "Refuses a non-empty DIR"]),
        (["content", "publish", "--help"], ["manifest.toml", "above every published version", "offline"]),
        (["content", "update", "--help"], ["content-updates/ENGINE/VERSION", "Never touches the active"]),
        (["content", "serve", "--help"], ["127.0.0.1:8470", "CDN"]),
    ]:
        with pytest.raises(SystemExit):
            main(argv)
        out = " ".join(capsys.readouterr().out.split())
        for w in words:
            assert w in out, (argv, w)


def test_update_uses_the_agents_default_state_dir():
    from ringfence.agent._config import DEFAULT_STATE_DIR
    from ringfence.content._cli import DEFAULT_STATE_DIR as CONTENT_DEFAULT

    assert CONTENT_DEFAULT == DEFAULT_STATE_DIR
