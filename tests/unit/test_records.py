from qcnode.config import Destination, load_settings
from qcnode.records import Family, Finding, Status, Verdict, worst


def _finding(status: Status) -> Finding:
    return Finding(
        rule="positioning.rotation",
        family=Family.POSITIONING,
        status=status,
        value=1.0,
        unit="deg",
        threshold=5.0,
        message="",
    )


def test_worst_finding_decides_verdict() -> None:
    assert worst([]) is Verdict.PASS
    assert worst([_finding(Status.PASS), _finding(Status.NOT_EVALUABLE)]) is Verdict.PASS
    assert worst([_finding(Status.PASS), _finding(Status.WARN)]) is Verdict.WARN
    assert worst([_finding(Status.FAIL), _finding(Status.WARN)]) is Verdict.FAIL


def test_settings_precedence(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "q.toml"
    cfg.write_text('[node]\nport = 104\nae_title = "FROMTOML"\n')
    s = load_settings(cfg, {"ae_title": "FLAG"}, environ={"QCNODE_PORT": "2000"})
    assert s.port == 2000
    assert s.ae_title == "FLAG"
    assert Destination.parse("PACS@10.0.0.1:4242").port == 4242
