

def test_the_demo_agent_allows_exactly_what_local_runtimes_runs(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from runlab import control, demo

    monkeypatch.setattr(demo, "DEMO_DIR", tmp_path)
    key, pub = control.generate_keys(tmp_path / "keys")
    demo.write_configs(SimpleNamespace(url="mqtt://127.0.0.1:1883"), SimpleNamespace(url="http://127.0.0.1:8086"),
                       pub, key)  # type: ignore[arg-type]
    cfg = load_config(str(tmp_path / "agent.yaml"))
    exp, _ = load_file(demo.EXPERIMENT)
    here = str(demo.HERE)
    assert violations(exp, cfg.policy, here) == []
    need = required(exp, here)
    assert {k: sorted(v) for k, v in need.items()} == {
        "runtimes": sorted(cfg.policy.runtimes), "commands": sorted(cfg.policy.commands),
        "images": sorted(cfg.policy.images)}
