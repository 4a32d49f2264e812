"""Model names: a bare architecture name (``qcnet_d10_w3``) is not a registered model.

It once named the session-4 weights, so ``--model qcnet_d10_w3`` silently loaded old weights
while the default was newer. Entries are named by their weights now (``qcnet_d10_w3_s4``),
and every command that takes a model name refuses the bare variant with one error line that
lists that variant's registered weights and the default.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from qcnode import bench, cli, evaluate, node
from qcnode.config import Settings
from qcnode.errors import ModelError, UnknownModel
from qcnode.model import load_predictor
from qcnode.model import registry as registry_module
from qcnode.model.registry import Registry, load_registry, sha256_file
from tests.conftest import radiograph, write

VARIANT = "qcnet_d10_w3"
OLD = "qcnet_d10_w3_s4"


@pytest.fixture(scope="module")
def shipped() -> Registry:
    registry = load_registry()
    if OLD not in registry.entries:
        pytest.skip(f"the shipped registry no longer has {OLD}")
    return registry


def _weights_of(registry: Registry, variant: str) -> list[str]:
    return [n for n, e in registry.entries.items() if e.variant == variant]


def test_the_shipped_registry_names_no_bare_variant(shipped: Registry) -> None:
    """No entry or ensemble is named like an architecture: such a name would pick one of
    several weights files of that variant without saying which."""
    variants = {e.variant for e in shipped.entries.values()}
    assert not variants & set(shipped.names())
    assert {OLD, "qcnet_d15_w3_s4"} <= set(shipped.entries)
    for ensemble in shipped.ensembles.values():
        shipped.members(ensemble)  # every member resolves under its new name


def test_a_bare_variant_is_an_unknown_model_naming_its_weights(shipped: Registry) -> None:
    with pytest.raises(UnknownModel) as caught:
        shipped.get(VARIANT)
    message = str(caught.value)
    assert isinstance(caught.value, ModelError)  # the node's start-up check still applies
    assert "architecture (variant) name" in message
    weights = _weights_of(shipped, VARIANT)
    assert len(weights) >= 2 and OLD in weights
    for name in weights:
        assert name in message
    assert f"default: {shipped.default}" in message
    assert "qcnet_d15_w3_s4" not in message  # another variant's weights are not offered
    with pytest.raises(UnknownModel, match="architecture"):
        load_predictor(VARIANT, device="cpu")
    with pytest.raises(UnknownModel, match="architecture"):
        shipped.resolve(VARIANT)
    assert shipped.resolve(OLD) == OLD and shipped.resolve() == shipped.default


def test_unknown_name_messages(tmp_path: Path, shipped: Registry) -> None:
    entry = shipped.entries[OLD]
    entries = {
        f"{VARIANT}_s{k}": dataclasses.replace(entry, name=f"{VARIANT}_s{k}") for k in (10, 4, 9)
    }
    registry = Registry(default=f"{VARIANT}_s10", entries=entries, weights_dir=tmp_path)
    # listed in natural order, the default named
    with pytest.raises(
        UnknownModel,
        match=(
            r"'qcnet_d10_w3': that is an architecture \(variant\) name, not registered weights; "
            r"registered weights of qcnet_d10_w3: qcnet_d10_w3_s4, qcnet_d10_w3_s9, "
            r"qcnet_d10_w3_s10; default: qcnet_d10_w3_s10$"
        ),
    ):
        registry.get(VARIANT)
    # a variant of the grid without registered weights
    with pytest.raises(UnknownModel, match=r"'qcnet_d20_w1': .*variant\) name with no registered"):
        registry.get("qcnet_d20_w1")
    # a typo: the plain message
    with pytest.raises(UnknownModel, match=r"unknown model 'nope'; registered models: .*_s10; def"):
        registry.ensemble("nope")
    with pytest.raises(UnknownModel, match=r"unknown model ''; registered models: none$"):
        Registry(default="", entries={}, weights_dir=tmp_path).get()


def test_the_session4_weights_load_under_their_new_name_with_the_checksum(
    tmp_path: Path, shipped: Registry
) -> None:
    entry = shipped.entries[OLD]
    assert entry.file == "qcnet_d10_w3_s4.pt" and entry.variant == VARIANT
    predictor = load_predictor(OLD, device="cpu")
    assert (predictor.info.name, predictor.info.sha256) == (OLD, entry.sha256)
    assert sha256_file(shipped.verified_path(entry)) == entry.sha256
    # the check is live: a copy with one byte changed is refused under the same entry
    copy = tmp_path / entry.file
    shutil.copyfile(shipped.verified_path(entry), copy)
    Registry(default=OLD, entries={OLD: entry}, weights_dir=tmp_path).save(
        tmp_path / "registry.toml"
    )
    assert load_predictor(registry_path=tmp_path / "registry.toml").info.sha256 == entry.sha256
    data = bytearray(copy.read_bytes())
    data[-1] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match the registry"):
        load_predictor(OLD, registry_path=tmp_path / "registry.toml")


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("qcnode: error:")]
    return line


@pytest.mark.usefixtures("shipped")
def test_check_and_eval_refuse_a_bare_variant_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("QCNODE_MODEL", raising=False)
    dcm = write(radiograph(rows=64, columns=64, seed=1), tmp_path / "a.dcm")
    assert cli.main(["check", "--model", VARIANT, str(dcm)]) == 2
    line = _error_line(capsys)
    assert "architecture" in line and OLD in line and "qcnet_d10_w3_s10" in line
    # eval: refused before the exact-mask pass, not a "model pass skipped" note
    (tmp_path / "set").mkdir()
    assert cli.main(["eval", "--model", VARIANT, "--set", str(tmp_path / "set")]) == 2
    assert "architecture" in _error_line(capsys)


def test_eval_still_skips_the_model_pass_without_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No registry at all (no trained weights): the default is unknown, and eval reports
    the exact-mask pass with the model pass skipped, as before. Only a named model fails."""
    monkeypatch.setattr(registry_module, "REGISTRY_FILE", tmp_path / "none" / "registry.toml")
    predictors, why = evaluate._load_predictors(Settings())
    assert predictors == [] and "unknown model ''" in why
    with pytest.raises(UnknownModel):
        evaluate._load_predictors(Settings(model="typo"))


@pytest.mark.usefixtures("shipped")
def test_bench_and_worker_refuse_a_configured_bare_variant(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QCNODE_MODEL", VARIANT)
    # before any timing: the report bench alone would otherwise fall back to example masks
    assert cli.main(["bench", "--what", "report", "--repeats", "1"]) == 2
    assert "architecture" in _error_line(capsys)
    options = bench.BenchOptions(what="report", variants=None, threads="1,2", repeats=1, json=False)
    with pytest.raises(UnknownModel, match="architecture"):
        bench.bench_command(Settings(model=VARIANT), options)
    with pytest.raises(UnknownModel, match="architecture"):
        node.load_predictor(Settings(model=VARIANT))  # serve / worker start-up


def test_the_command_line_prints_an_error_once(tmp_path: Path) -> None:
    """A real `qcnode` process: the user sees one error line, not a log line and a copy."""
    import subprocess
    import sys

    dcm = write(radiograph(rows=64, columns=64, seed=1), tmp_path / "a.dcm")
    proc = subprocess.run(
        [sys.executable, "-m", "qcnode.cli", "check", "--model", "no_such_model", str(dcm)],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "QCNODE_MODEL"},
    )
    assert proc.returncode == 2
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("qcnode: error: unknown model"), lines


def test_bench_times_a_registered_model_with_its_own_network() -> None:
    """`qcnode bench --what model --variants NAME`: a registered name is its weights file's
    network (a refiner included, which the bare variant does not have); a typo is refused."""
    from qcnode.model.infer import read_weights

    registry = load_registry()
    entry = registry.get(registry.default)
    _, state = read_weights(registry.verified_path(entry))
    net = bench._network(registry.default)
    assert set(net.state_dict()) == set(state)  # every tensor of the file, no more
    assert {k: v.shape for k, v in net.state_dict().items()} == {
        k: v.shape for k, v in state.items()
    }
    with pytest.raises(UnknownModel):
        bench._network("qcnet_d10_w3_typo")
