"""osg-test and osg-ca-generator from a source's `ACCOUNT:BRANCH`, as the reference's
create-io-image makes them: a bare clone of the account's repository, `git archive` of the
branch with the prefix `<package>-git/`, put on the IO disk as `input/<package>-git.tar.gz`.
osg-ca-generator always comes from opensciencegrid's master, as there. run-job installs them
with `make install` (docs/contracts.md, "EL cells").

The tarballs are made once per run and source (`<run>/test-sources/`), so the cells sharing a
source share one clone. Where the repositories live is the catalog setting `test_source_git`
(`{account}` and `{package}` substituted; GitHub by default), pinned with the run's catalog.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from osgtest_dag.base import command
from osgtest_dag.base.errors import CommandError, UserError
from osgtest_dag.model.documents import read_json
from osgtest_dag.model.rundir import RunDir

GIT_URL_DEFAULT = "https://github.com/{account}/{package}"
CA_GENERATOR_SOURCE = ("opensciencegrid", "master")
TARBALL_DIR = "test-sources"


def git_url_template(pinned_catalog: Path) -> str:
    """The `test_source_git` setting of the run's pinned catalog, else GitHub."""
    if not Path(pinned_catalog).is_file():
        return GIT_URL_DEFAULT
    settings = read_json(pinned_catalog).get("settings") or {}
    return str(settings.get("test_source_git") or GIT_URL_DEFAULT)


def source_tarballs(run_dir: Path, test_source: str, template: str) -> dict[str, Path]:
    """input/ name -> tarball for osg-test of `test_source` (`ACCOUNT:BRANCH`) and
    osg-ca-generator, made unless the run already has them; `template` is the repositories'
    URL (`git_url_template`)."""
    account, sep, branch = test_source.partition(":")
    if not sep or not account or not branch:
        raise UserError(f"test source {test_source!r} is not ACCOUNT:BRANCH")
    cache = RunDir(run_dir).path / TARBALL_DIR
    cache.mkdir(exist_ok=True)
    out = {}
    for package, (acct, br) in (("osg-test", (account, branch)), ("osg-ca-generator", CA_GENERATOR_SOURCE)):
        url = template.format(account=acct, package=package)
        out[f"{package}-git.tar.gz"] = _tarball(cache, package, url, acct, br)
    return out


def _tarball(cache: Path, package: str, url: str, account: str, branch: str) -> Path:
    dest = cache / f"{package}-git.{account}.{branch.replace('/', '_')}.tar.gz"
    if dest.is_file():
        return dest
    with tempfile.TemporaryDirectory(prefix=f".{package}-", dir=cache) as tmp:
        bare = Path(tmp) / f"{package}-git.git"
        part = Path(tmp) / "archive.tar.gz"
        try:
            command.run(["git", "clone", "--quiet", "--bare", url, bare], timeout=600)
            command.run(
                [
                    "git",
                    f"--git-dir={bare}",
                    "archive",
                    f"--prefix={package}-git/",
                    f"--output={part}",
                    branch,
                ],
                timeout=600,
            )
        except CommandError as e:
            raise UserError(
                f"cannot make the {package} tarball of {account}:{branch}: {e}",
                where=url,
                hint="check the account and branch of the source's test source, and the network",
            ) from None
        os.replace(part, dest)  # another cell's node may have made it meanwhile: same content
    return dest


def copy_tarballs(run_dir: Path, test_source: str, template: str, input_dir: Path) -> None:
    """The test source's tarballs into a cell's input/."""
    for name, src in source_tarballs(run_dir, test_source, template).items():
        shutil.copyfile(src, input_dir / name)
