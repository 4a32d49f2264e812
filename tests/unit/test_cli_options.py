"""`qcnode synth`, `train`, `eval`, `bench` and `outbox` get one frozen options object built
by qcnode.cli from their flags (DESIGN §8), and the command line stays DESIGN §9's: same
flags, same defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from qcnode import bench, evaluate, send
from qcnode.cli import _options, _parser, main
from qcnode.config import Settings
from qcnode.model import train as trainmod
from qcnode.model.infer import WeightsMeta
from qcnode.model.registry import sha256_file
from qcnode.synth import cli as synthcli


def test_synth_defaults_are_the_command_lines() -> None:
    options = _options(synthcli.SynthOptions, _parser().parse_args(["synth", "--out", "set"]))
    assert options == synthcli.SynthOptions(
        out=Path("set"),
        count=100,
        view="both",
        seed=0,
        split="train",
        workers=1,
        variants_per_pose=8,
        threads=0,
        pitch_mm=1.4,
        no_ready=False,
        minutes=None,
        visible_lungs=False,
        scapulae_in_body=False,
        realism=False,
        realism_plain=0.0,
        clavicles_down=0.0,
        opacities=0.0,
        opacity_texture=0.0,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.count = 5  # type: ignore[misc]


def test_synth_gets_every_flag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[synthcli.SynthOptions] = []
    monkeypatch.setattr(synthcli, "synth_command", lambda o: seen.append(o) or 0)
    argv = ["synth", "--out", str(tmp_path), "--count", "7", "--view", "lateral"]
    argv += ["--seed", "3", "--split", "eval", "--workers", "2", "--variants-per-pose", "4"]
    argv += ["--threads", "5", "--pitch-mm", "2.5", "--no-ready", "--minutes", "1.5"]
    argv += ["--visible-lungs", "--scapulae-in-body", "--realism", "--realism-plain", "0.25"]
    argv += ["--clavicles-down", "0.5", "--opacities", "0.6"]
    argv += ["--opacity-texture", "0.5"]
    assert main(argv) == 0
    assert seen == [
        synthcli.SynthOptions(
            out=tmp_path,
            count=7,
            view="lateral",
            seed=3,
            split="eval",
            workers=2,
            variants_per_pose=4,
            threads=5,
            pitch_mm=2.5,
            no_ready=True,
            minutes=1.5,
            visible_lungs=True,
            scapulae_in_body=True,
            realism=True,
            realism_plain=0.25,
            clavicles_down=0.5,
            opacities=0.6,
            opacity_texture=0.5,
        )
    ]


def test_train_defaults_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[trainmod.TrainOptions] = []
    monkeypatch.setattr(trainmod, "train_command", lambda o: seen.append(o) or 0)
    assert main(["train"]) == 0
    options = seen.pop()
    assert options == trainmod.TrainOptions(
        variant="qcnet_d15_w3",
        data=(),
        device="cpu",
        recipe="cpu",
        out=None,
        resume=False,
        seed=0,
        steps=None,
        limit=None,
        init=None,
        ship=False,
        name=None,
        default=False,
    )
    argv = ["train", "--variant", "qcnet_d10_w3", "--data", "a", "--data", "b"]
    argv += ["--device", "cuda", "--recipe", "tiny", "--out", "o", "--resume", "--seed", "2"]
    argv += ["--steps", "9", "--limit", "4", "--init", "w.pt", "--ship", "--name", "n"]
    argv += ["--default"]
    assert main(argv) == 0
    flagged = seen.pop()
    assert flagged == trainmod.TrainOptions(
        variant="qcnet_d10_w3",
        data=(Path("a"), Path("b")),
        device="cuda",
        recipe="tiny",
        out=Path("o"),
        resume=True,
        seed=2,
        steps=9,
        limit=4,
        init=Path("w.pt"),
        ship=True,
        name="n",
        default=True,
    )


@pytest.fixture
def fake_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """``train`` and ``ship`` stand-ins: what train_command passed them."""
    calls: dict[str, Any] = {}
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights")

    def train(**kwargs: Any) -> trainmod.TrainResult:
        calls["train"] = kwargs
        meta = WeightsMeta(
            variant=kwargs["variant"], input_size=256, spacing_mm=1.75, reference_lung_width_mm={}
        )
        return trainmod.TrainResult(
            weights=weights,
            meta=meta,
            data_version="d",
            seconds=1.0,
            final_loss=0.5,
            val={},
            code_version="c",
        )

    class Entry:
        name = "?"
        sha256 = "?"

    def ship(_result: trainmod.TrainResult, **kwargs: Any) -> Entry:
        calls["ship"] = kwargs
        return Entry()

    monkeypatch.setattr(trainmod, "train", train)
    monkeypatch.setattr(trainmod, "ship", ship)
    calls["sha8"] = sha256_file(weights)[:8]
    return calls


def test_train_passes_its_options_down(fake_training: dict[str, Any]) -> None:
    assert main(["train", "--recipe", "tiny", "--steps", "3", "--limit", "2", "--seed", "4"]) == 0
    called = fake_training["train"]
    assert called["variant"] == "qcnet_d15_w3" and called["device"] == "cpu"
    assert called["data_dirs"] == [Path("data/synth/train-v1")]
    assert called["out"] == Path("runs") / "qcnet_d15_w3-tiny"
    assert called["recipe"] == dataclasses.replace(trainmod.RECIPES["tiny"], steps=3)
    assert (called["seed"], called["limit"]) == (4, 2)
    assert called["init"] is None and called["resume"] is False
    assert "ship" not in fake_training


def test_ship_names_the_weights_variant_sha8_unless_named(fake_training: dict[str, Any]) -> None:
    assert main(["train", "--recipe", "tiny", "--variant", "qcnet_d10_w3", "--ship"]) == 0
    assert fake_training["ship"]["name"] == f"qcnet_d10_w3_{fake_training['sha8']}"
    assert fake_training["ship"]["make_default"] is False
    assert main(["train", "--recipe", "tiny", "--ship", "--name", "mine", "--default"]) == 0
    assert fake_training["ship"]["name"] == "mine"
    assert fake_training["ship"]["make_default"] is True


@pytest.mark.parametrize(
    ("module", "command", "argv", "expected"),
    [
        (
            evaluate,
            "eval_command",
            ["eval"],
            evaluate.EvalOptions(eval_set=None, real=None, limit=None, json=False),
        ),
        (
            evaluate,
            "eval_command",
            ["eval", "--set", "s", "--real", "r", "--limit", "3", "--json", "--model", "m"],
            evaluate.EvalOptions(eval_set=Path("s"), real=Path("r"), limit=3, json=True),
        ),
        (
            bench,
            "bench_command",
            ["bench"],
            bench.BenchOptions(what="all", variants=None, threads="1,2", repeats=30, json=False),
        ),
        (
            bench,
            "bench_command",
            [
                "bench",
                "--what",
                "qc",
                "--variants",
                "a,b",
                "--threads",
                "4",
                "--repeats",
                "2",
                "--json",
            ],
            bench.BenchOptions(what="qc", variants="a,b", threads="4", repeats=2, json=True),
        ),
        (send, "outbox_command", ["outbox"], send.OutboxOptions(retry_dead=False, json=False)),
        (
            send,
            "outbox_command",
            ["outbox", "--retry-dead", "--json"],
            send.OutboxOptions(retry_dead=True, json=True),
        ),
    ],
)
def test_eval_bench_outbox_get_every_flag(
    monkeypatch: pytest.MonkeyPatch, module: Any, command: str, argv: list[str], expected: Any
) -> None:
    """Each flag lands in the command's options; ``--model`` stays a setting."""
    monkeypatch.delenv("QCNODE_MODEL", raising=False)
    seen: list[tuple[Settings, Any]] = []
    monkeypatch.setattr(module, command, lambda s, o: seen.append((s, o)) or 0)
    assert main(argv) == 0
    ((settings, options),) = seen
    assert options == expected
    if "--model" in argv:
        assert settings.model == "m"
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.json = not options.json
