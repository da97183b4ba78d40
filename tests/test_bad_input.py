"""Bad input: exit 2, `file:line` in the message, no traceback, no run directory."""

from __future__ import annotations

import re

import pytest

GOOD_PS = "package_sets:\n  - label: A\n    packages: [x]\n"
GOOD = "platforms:\n  - rocky_9.x86_64\nsources:\n  - '24; osg'\n" + GOOD_PS

# name -> ({file: text}, the file:line the message must name, words the message must contain)
CASES = {
    "yaml-syntax": (
        {"p.yaml": "platforms:\n  - rocky_9.x86_64\n sources: [\n"},
        "p.yaml:3",
        "YAML syntax error",
    ),
    "unknown-key": ({"p.yaml": GOOD + "platfroms: []\n"}, "p.yaml:8", "did you mean 'platforms'"),
    "missing-key": (
        {"p.yaml": "platforms: [rocky_9.x86_64]\n" + GOOD_PS},
        "p.yaml:1",
        "missing required key 'sources'",
    ),
    "platforms-scalar": (
        {"p.yaml": GOOD.replace("platforms:\n  - rocky_9.x86_64", "platforms: rocky_9.x86_64")},
        "p.yaml:1",
        "'platforms' must be a non-empty list",
    ),
    "platforms-empty": (
        {"p.yaml": GOOD.replace("platforms:\n  - rocky_9.x86_64", "platforms: []")},
        "p.yaml:1",
        "'platforms' must be a non-empty list",
    ),
    "unknown-platform": (
        {"p.yaml": GOOD.replace("rocky_9.x86_64", "rocky_9.x86-64")},
        "p.yaml:2:5",
        "did you mean 'rocky_9.x86_64'",
    ),
    "platform-not-string": (
        {"p.yaml": GOOD.replace("rocky_9.x86_64", "9")},
        "p.yaml:2:5",
        "platform must be a string",
    ),
    "source-no-semicolon": ({"p.yaml": GOOD.replace("24; osg", "24 osg")}, "p.yaml:4:6", "missing ';'"),
    "source-two-updates": (
        {"p.yaml": GOOD.replace("24; osg", "24; osg > osg-testing > osg")},
        "p.yaml:4:28",
        "more than one '>'",
    ),
    "source-empty-repo": (
        {"p.yaml": GOOD.replace("24; osg", "24; osg,, osg-testing")},
        "p.yaml:4:14",
        "empty repository name",
    ),
    # an EL name the catalog does not know passes through to dnf (a warning); Debian's must map
    # to apt lines
    "source-unknown-debian-repo": (
        {"p.yaml": GOOD.replace("rocky_9.x86_64", "debian_12.x86_64").replace("24; osg", "stable; mian")},
        "p.yaml:4:14",
        "did you mean 'main'",
    ),
    "package-set-priority-not-a-number": (
        {"p.yaml": GOOD + "    priority: high\n"},
        "p.yaml:8",
        "'priority' must be a whole number",
    ),
    "platform-entry-unknown-key": (
        {"p.yaml": GOOD.replace("- rocky_9.x86_64", "- {platform: rocky_9.x86_64, priorty: 3}")},
        "p.yaml:2",
        "did you mean 'priority'",
    ),
    "platform-entry-priority-bool": (
        {"p.yaml": GOOD.replace("- rocky_9.x86_64", "- {platform: rocky_9.x86_64, priority: yes}")},
        "p.yaml:2",
        "'priority' must be a whole number",
    ),
    "source-bad-test-source": (
        {"p.yaml": GOOD.replace("24; osg", "master; 24; osg")},
        "p.yaml:4:6",
        "must be ACCOUNT:BRANCH",
    ),
    "source-empty-update": (
        {"p.yaml": GOOD.replace("24; osg", "24; osg >")},
        "p.yaml:4:14",
        "nothing after '>'",
    ),
    "source-not-string": ({"p.yaml": GOOD.replace("'24; osg'", "24")}, "p.yaml:4:5", "expected a string"),
    "package-set-no-label": (
        {"p.yaml": GOOD.replace("label: A", "label: ''")},
        "p.yaml:6:13",
        "non-empty 'label'",
    ),
    "package-set-empty-packages": ({"p.yaml": GOOD.replace("[x]", "[]")}, "p.yaml:7:15", "non-empty list"),
    "package-set-unknown-key": (
        {"p.yaml": GOOD + "    packges: [y]\n"},
        "p.yaml:8:5",
        "did you mean 'packages'",
    ),
    "selinux-not-bool": (
        {"p.yaml": GOOD + "    selinux: maybe\n"},
        "p.yaml:8:14",
        "'selinux' must be true or false",
    ),
    "package-name-with-space": (
        {"p.yaml": GOOD.replace("[x]", "['x y']")},
        "p.yaml:7:17",
        "bad package name",
    ),
    "label-two-package-lists": (
        {"b.yaml": GOOD, "a.yaml": GOOD.replace("[x]", "[y]")},
        "a.yaml:6",
        "names different packages here and at",
    ),
    "packages-two-labels": (
        {"b.yaml": GOOD, "a.yaml": GOOD.replace("label: A", "label: B")},
        "a.yaml:6",
        "the same packages are labelled 'B' here and 'A'",
    ),
    "duplicate-key": ({"p.yaml": GOOD + "sources: ['24; osg']\n"}, "p.yaml:8:1", "duplicate key 'sources'"),
    "empty-file": ({"p.yaml": "# nothing\n"}, "p.yaml:1", "empty parameter file"),
    "not-utf8": ({"p.yaml": b"platforms:\n  - rocky_9\xff\n"}, "p.yaml:2", "not valid UTF-8"),
    "two-documents": ({"p.yaml": GOOD + "---\n" + GOOD}, "p.yaml:9", "more than one YAML document"),
    "vm-bad-memory": ({"p.yaml": GOOD + "vm: {memory: lots}\n"}, "p.yaml:8:14", "bad memory size"),
    "vm-unknown-key": ({"p.yaml": GOOD + "vm: {memroy: 2048}\n"}, "p.yaml:8:6", "did you mean 'memory'"),
    "exclude-unknown-key": (
        {"p.yaml": GOOD + "exclude: [{platfrom: 'x*'}]\n"},
        "p.yaml:8:12",
        "did you mean 'platform'",
    ),
    "test-timeout-negative": (
        {"p.yaml": GOOD + "test_timeout: -5\n"},
        "p.yaml:8:15",
        "positive number of seconds",
    ),
    "top-level-list": ({"p.yaml": "- a\n- b\n"}, "p.yaml:1", "must be a mapping"),
}


def _write(tmp_path, files):
    d = tmp_path / "params"
    d.mkdir()
    for name, text in files.items():
        (d / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return d


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_a_clear_error(case, tmp_path, cli):
    files, where, words = CASES[case]
    d = _write(tmp_path, files)
    r = cli("generate", d, "-o", tmp_path / "run")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert re.search(
        re.escape(str(d / where.split(":")[0])) + re.escape(where[len(where.split(":")[0]) :]) + r"\b",
        r.stderr,
    ), r.stderr
    assert words in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.")]
    # lint says the same
    r2 = cli("lint", d)
    assert r2.returncode == 2 and words in r2.stderr


def test_at_least_twenty_kinds():
    assert len(CASES) >= 20


def test_existing_run_dir_needs_force(tmp_path, cli):
    d = _write(tmp_path, {"p.yaml": GOOD})
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep").write_text("mine")
    r = cli("generate", d, "-o", tmp_path / "run")
    assert r.returncode == 2 and "--force" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "run" / "keep").read_text() == "mine"
    r = cli("generate", d, "-o", tmp_path / "run", "--force")
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "run" / "keep").exists() and (tmp_path / "run" / "matrix.dag").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params", "run"]


def test_missing_params_path(tmp_path, cli):
    r = cli("plan", tmp_path / "nope")
    assert (
        r.returncode == 2 and "no such file or directory" in r.stderr and str(tmp_path / "nope") in r.stderr
    )


def test_bad_only_key(tmp_path, cli):
    d = _write(tmp_path, {"p.yaml": GOOD})
    r = cli("plan", d, "--only", "platfrom=x")
    assert r.returncode == 2 and "did you mean 'platform'" in r.stderr and "Traceback" not in r.stderr


def test_only_matching_nothing_is_an_error(tmp_path, cli):
    d = _write(tmp_path, {"p.yaml": GOOD})
    for command in (("plan", d), ("generate", d, "-o", tmp_path / "run")):
        r = cli(*command, "--only", "platform=rocky_8*", "--only", "label=A")
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert "--only platform=rocky_8* --only label=A matches none of the 1 cells" in r.stderr
        assert "no cell has a platform matching it; platforms here: rocky_9.x86_64" in r.stderr
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


def test_bad_template_override_leaves_nothing(tmp_path, cli):
    d = _write(tmp_path, {"p.yaml": GOOD})
    t = tmp_path / "tmpl"
    t.mkdir()
    (t / "test-run.sub.j2").write_text("universe = vm\n{{ no_such_variable }}\nqueue\n")
    r = cli("generate", d, "-o", tmp_path / "run", "--template-dir", t)
    assert r.returncode == 2 and "test-run.sub.j2" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


def test_debug_shows_traceback(tmp_path, cli):
    d = _write(tmp_path, {"p.yaml": GOOD.replace("rocky_9.x86_64", "nope_1.x86_64")})
    r = cli("--debug", "lint", d)
    assert r.returncode != 0 and "Traceback" in r.stderr
