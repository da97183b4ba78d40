"""Base-image pins: generate records the identity of every image present, a run completes
them when it builds one, and a changed or vanished image is reported, never silently used."""

import json

import pytest

from osgtest_dag.base.errors import UserError
from osgtest_dag.generate import workflow
from osgtest_dag.guest import pins
from osgtest_dag.guest.image import sha256_file
from osgtest_dag.model.inputs import ImagePins, PinnedImage
from osgtest_dag.model.rundir import RunDir
from osgtest_dag.plan import matrix
from osgtest_dag.plan.catalog import Catalog

PARAMS = """\
platforms: [debian_12.x86_64, debian_13.x86_64]
sources: ['stable; main']
package_sets:
  - label: Hello
    packages: [hello]
"""


def _store_image(store, platform, content: bytes, *, sidecar: bool = True):
    """A file in the image store's layout (name and metadata) with the given bytes."""
    path = store / f"{platform}.qcow2"
    path.write_bytes(content)
    if sidecar:
        meta = {
            "schema": "osgtest-dag/image",
            "version": 1,
            "platform": platform,
            "builder": "local",
            "sha256": sha256_file(path),
            "size": len(content),
            "inputs_hash": "x",
            "inputs": {},
            "built": "2026-11-30T10:00:00Z",
        }
        path.with_suffix(".json").write_text(json.dumps(meta))
    return path


@pytest.fixture
def generated(tmp_path):
    store = tmp_path / "images"
    store.mkdir()
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "hello.yaml").write_text(PARAMS)
    img12 = _store_image(store, "debian_12.x86_64", b"twelve")
    cat = Catalog.load(image_dir=str(store))
    m = matrix.build([tmp_path / "p"], cat)
    opts = workflow.WorkflowOptions(tool="/opt/osgtest/bin/osgtest-dag")
    run = workflow.write_run(tmp_path / "run", list(m.cells), cat, opts, param_files=list(m.files))
    return run, store, img12


def test_generate_pins_the_images_present(generated):
    run, store, img12 = generated
    got = ImagePins.read(run)
    assert got.images == (
        PinnedImage("debian_12.x86_64", str(img12), sha256_file(img12), 6, "2026-11-30T10:00:00Z"),
    )
    assert pins.changes(run) == []


def test_an_image_built_later_is_pinned_once_and_the_first_pin_stays(generated):
    run, store, img12 = generated
    img13 = _store_image(store, "debian_13.x86_64", b"thirteen", sidecar=False)
    pairs = [("debian_12.x86_64", str(img12)), ("debian_13.x86_64", str(img13))]
    after = pins.pin(run, pairs)
    assert [p.platform for p in after.images] == ["debian_12.x86_64", "debian_13.x86_64"]
    assert after.get(str(img13)) == PinnedImage("debian_13.x86_64", str(img13), sha256_file(img13), 8)
    img12.write_bytes(b"TWELVE")  # same size, no new metadata: the file is hashed
    img12.with_suffix(".json").unlink()
    assert pins.pin(run, pairs) == after  # the run's first pin stays


def test_a_changed_or_vanished_image_is_reported_and_refused(generated):
    run, store, img12 = generated
    assert pins.changes(run) == []
    _store_image(store, "debian_12.x86_64", b"rebuilt twelve")
    found = pins.changes(run)
    assert len(found) == 1 and found[0].now is not None
    assert "debian_12.x86_64" in found[0].describe() and "is now" in found[0].describe()
    with pytest.raises(UserError) as e:
        pins.refuse_changed(found, run, "reproduce", "--allow-image-change")
    assert "--allow-image-change" in e.value.hint
    img12.unlink()
    assert "is gone" in pins.changes(run)[0].describe()
    assert pins.changes(run, [("debian_13.x86_64", "/elsewhere.qcow2")]) == []


def test_pins_round_trip_and_refuse_a_foreign_document(generated):
    run, _, _ = generated
    path = RunDir(run).image_pins
    doc = json.loads(path.read_text())
    assert ImagePins.from_json(doc, path).to_json() == doc
    path.write_text(json.dumps({"schema": "osgtest-dag/image-pins", "version": 99, "images": []}))
    with pytest.raises(UserError) as e:
        ImagePins.read(run)
    assert str(path) in str(e.value.where)


def test_a_run_without_pins_has_none(tmp_path):
    assert ImagePins.read(tmp_path) == ImagePins()
