"""Federated training (lungvlm.federated): phantom sites, config checks, DP strategy, and a
2-site x 2-round Flower simulation of a tiny stage 2 whose global loss falls."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from data_modules.phantom.draw import draw_spec
from data_modules.phantom.generator import PhantomConfig
from data_modules.phantom.scanner import VENDORS, PhantomSite, draw_profile
from lungvlm.federated.config import PrivacyConfig, load_config

REPO = Path(__file__).resolve().parents[1]
SCREENING = {
    "vendors": ["SIEMENS", "GE MEDICAL SYSTEMS"],
    "sharp_kernel_prob": 0.1,
    "exposure_mas": [20.0, 40.0],
    "slice_thickness_mm": [2.0, 3.0],
    "malignancy_beta": [1.3, 6.0],
}
REFERRAL = {
    "vendors": ["Philips"],
    "sharp_kernel_prob": 0.9,
    "exposure_mas": [150.0, 200.0],
    "slice_thickness_mm": [0.6, 1.0],
    "malignancy_beta": [3.0, 1.3],
}


# ------------------------------------------------------------------ phantom sites
def test_default_site_draws_what_the_generator_always_drew():
    # Values of seed 5 before sites existed (numpy's PCG64 stream is stable across versions).
    profile = draw_profile(np.random.default_rng([5, 1]))
    assert (profile.manufacturer, profile.kernel, profile.kvp) == ("SIEMENS", "soft", 140.0)
    assert (profile.exposure_mas, profile.slice_thickness_mm, profile.slice_spacing_mm) == (
        99.3,
        1.89,
        1.43,
    )
    # A default configuration's repr (the phantom cache key) does not mention the site.
    assert "site" not in repr(PhantomConfig())
    assert "site=PhantomSite(" in repr(PhantomConfig(site=PhantomSite(**SCREENING)))


def test_site_profiles_stay_in_the_site_ranges():
    screening, referral = PhantomSite(**SCREENING), PhantomSite(**REFERRAL)
    drawn = {"screening": [], "referral": []}
    for seed in range(200):
        for name, site in (("screening", screening), ("referral", referral)):
            drawn[name].append(draw_profile(np.random.default_rng([seed, 1]), site=site))
    for name, site in (("screening", screening), ("referral", referral)):
        profiles = drawn[name]
        assert {p.manufacturer for p in profiles} == set(site.vendors)
        assert all(
            site.exposure_mas[0] <= p.exposure_mas <= site.exposure_mas[1] + 0.05 for p in profiles
        )
        assert all(
            site.slice_thickness_mm[0] <= p.slice_thickness_mm <= site.slice_thickness_mm[1]
            for p in profiles
        )
    sharp = {k: np.mean([p.kernel == "sharp" for p in v]) for k, v in drawn.items()}
    assert sharp["screening"] < 0.2 and sharp["referral"] > 0.8

    # The nodule mix: screening-like nodules are smaller and rarely malignant.
    def mix(beta):
        specs = [
            draw_spec(np.random.default_rng(s), kind="solid", score_beta=beta) for s in range(200)
        ]
        return np.median([s.requested_diameter_mm for s in specs]), np.mean(
            [s.malignant for s in specs]
        )

    (d_scr, m_scr), (d_ref, m_ref) = mix(screening.malignancy_beta), mix(referral.malignancy_beta)
    assert d_scr < 7.0 < 10.0 < d_ref
    assert m_scr < 0.05 and m_ref > 0.6


def test_phantom_datamodule_site_reaches_its_crops(tmp_path):
    from data_modules.phantom_datamodule import PhantomDataModule

    dm = PhantomDataModule(n_train=3, n_val=1, n_test=1, crop_size_vox=16, augment=False,
                           seed=7, site=PhantomSite(**REFERRAL))  # fmt: skip
    dm.setup("fit")
    scanners = [dm.datasets["train"][i].meta["scanner"] for i in range(3)]
    assert all(s["manufacturer"] == "Philips" and s["exposure_mas"] >= 150.0 for s in scanners)
    assert all(s["slice_thickness_mm"] <= 1.0 for s in scanners)


@pytest.mark.parametrize(
    "site, message",
    [
        ({"vendors": ["ACME"]}, "vendors"),
        ({"exposure_mas": [10.0, 50.0]}, "exposure_mas"),
        ({"slice_thickness_mm": [1.0, 5.0]}, "slice_thickness_mm"),
        ({"sharp_kernel_prob": 1.5}, "sharp_kernel_prob"),
        ({"malignancy_beta": [0.0, 1.0]}, "malignancy_beta"),
    ],
)
def test_site_refuses_what_the_generator_cannot_draw(site, message):
    with pytest.raises(ValueError, match=message):
        PhantomSite(**site)
    assert set(VENDORS) == set(PhantomSite().vendors)


# ------------------------------------------------------------------ config
def _tiny_config(tmp_path: Path, **changes) -> Path:
    data = {
        "stage_configs": [str(REPO / f"experiments/{n}.yaml") for n in ("base", "stage2", "debug")],
        "stage_overrides": {
            "trainer": {"limit_train_batches": 6, "limit_val_batches": 2},
            "model": {
                "init_from": None,
                "lr_scheduler": None,
                "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.003}},
            },
            "data": {"init_args": {"n_train": 12, "n_val": 4, "n_test": 2, "batch_size": 2,
                                   "crop_size_vox": 24, "positive_fraction": 1.0}},
        },
        "rounds": 2,
        "local_epochs": 1,
        "out_dir": str(tmp_path / "fed"),
        "strategy": {"name": "fedavgm", "server_learning_rate": 1.0, "server_momentum": 0.3},
        "sites": [
            {"name": "screening", "config": {"data": {"init_args": {"seed": 21, "site": SCREENING}}}},
            {"name": "referral", "config": {"data": {"init_args": {"seed": 22, "site": REFERRAL}}}},
        ],
    }  # fmt: skip
    data.update(changes)
    path = tmp_path / "federated.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_config_loads():
    config = load_config(REPO / "experiments/federated.yaml")
    assert len(config.sites) >= 2 and config.strategy.name == "fedavgm"
    assert len({s.config["data"]["init_args"]["seed"] for s in config.sites}) == len(config.sites)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"sites": [{"name": "only"}]}, "at least 2"),
        ({"rounds": 0}, "rounds"),
        ({"strategy": {"name": "fedavg", "server_momentum": 0.9}}, "fedavg takes no"),
        ({"strategy": {"name": "fedprox"}}, "strategy.name"),
        ({"privacy": {"noise_multiplier": 0.0}}, "noise_multiplier"),
        ({"privacy": {"sigma": 1.0}}, "unknown keys"),
        ({"stage_configs": ["experiments/nope.yaml"]}, "does not exist"),
        ({"roundz": 3}, "unknown keys"),
    ],
)
def test_config_errors_name_the_file_and_field(tmp_path, changes, message):
    path = _tiny_config(tmp_path, **changes)
    with pytest.raises(ValueError, match=message) as err:
        load_config(path)
    assert str(path) in str(err.value)


# ------------------------------------------------------------------ strategy and privacy
@pytest.fixture
def flower_task():
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def _reply(values: np.ndarray, weight: float = 1.0):
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

    content = RecordDict({
        "arrays": ArrayRecord({"w": torch.as_tensor(values, dtype=torch.float32)}),
        "metrics": MetricRecord({"site-weight": 1, "num-examples": weight}),
    })  # fmt: skip
    return Message(content=content, dst_node_id=1, message_type="train")


def test_fedavgm_momentum_without_privacy(flower_task):
    from flwr.app import ArrayRecord

    from lungvlm.federated.strategy import PrivateFedAvgM

    strategy = PrivateFedAvgM(min_train_nodes=2, min_available_nodes=2, server_momentum=0.5)
    strategy.current_arrays = ArrayRecord({"w": torch.zeros(4)})
    # Sample-weighted mean: (1 * 1 + 3 * 3) / 4 = 2.5; first round: momentum = pseudo-gradient.
    arrays, _ = strategy.aggregate_train(1, [_reply(np.ones(4), 1), _reply(np.full(4, 3.0), 3)])
    np.testing.assert_allclose(arrays.to_numpy_ndarrays()[0], 2.5)
    # Second round: the sites agree on 3.5 (pseudo-gradient -1); momentum 0.5 * -2.5 - 1 = -2.25.
    arrays, _ = strategy.aggregate_train(
        2, [_reply(np.full(4, 3.5), 1), _reply(np.full(4, 3.5), 3)]
    )
    np.testing.assert_allclose(arrays.to_numpy_ndarrays()[0], 2.5 + 2.25)


def test_privacy_noise_goes_before_momentum_and_is_accounted(flower_task):
    from flwr.app import ArrayRecord

    from lungvlm.federated.strategy import PrivacyLedger, PrivateFedAvgM

    strategy = PrivateFedAvgM(min_train_nodes=2, min_available_nodes=2, server_momentum=0.5,
                              weighted_by_key="site-weight")  # fmt: skip
    strategy.enable_privacy(PrivacyConfig(noise_multiplier=1.0, clipping_norm=2.0), n_sites=2)
    strategy.current_arrays = ArrayRecord({"w": torch.zeros(40_000)})
    arrays, _ = strategy.aggregate_train(1, [_reply(np.ones(40_000)), _reply(np.full(40_000, 3.0))])
    released = arrays.to_numpy_ndarrays()[0]
    # Equal weights: mean 2; noise sd = sigma * C / n_sites = 1.0.
    assert abs(released.mean() - 2.0) < 0.03 and abs(released.std() - 1.0) < 0.03
    # The momentum buffer holds the noised mean (old - released), never the clean one.
    np.testing.assert_allclose(strategy.momentum_vector[0], -released, rtol=1e-6)
    # One Gaussian mechanism at sigma 1: RDP gives epsilon ~4.7 at delta 1e-5.
    eps1 = strategy.ledger.epsilon
    assert 4.0 < eps1 < 5.4
    assert (
        PrivacyLedger(1.0, 1e-5, rounds_done=4).epsilon > eps1 > PrivacyLedger(2.0, 1e-5, 1).epsilon
    )
    # A missing site is refused, not silently under-noised.
    with pytest.raises(RuntimeError, match="1 of 2 sites replied"):
        strategy.aggregate_train(2, [_reply(np.ones(40_000))])


def test_clipping_mod_bounds_the_update(flower_task):
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

    from lungvlm.federated.client import clip_when_asked

    start = torch.zeros(100)
    msg = Message(
        content=RecordDict({"arrays": ArrayRecord({"w": start}),
                            "config": ConfigRecord({"clipping_norm": 0.5})}),
        dst_node_id=1, message_type="train",
    )  # fmt: skip

    def local_fit(message, context):
        reply = RecordDict({"arrays": ArrayRecord({"w": torch.full((100,), 0.3)}),
                            "metrics": MetricRecord({"num-examples": 1})})  # fmt: skip
        return Message(content=reply, reply_to=message)

    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    out = clip_when_asked(msg, context, local_fit)
    update = out.content["arrays"].to_numpy_ndarrays()[0]
    assert math.isclose(float(np.linalg.norm(update)), 0.5, rel_tol=1e-5)  # was 3.0
    # Without a clipping norm in the config the update passes unchanged.
    plain = Message(content=RecordDict({"arrays": ArrayRecord({"w": start}), "config": ConfigRecord({})}),
                    dst_node_id=1, message_type="train")  # fmt: skip
    out = clip_when_asked(plain, context, local_fit)
    assert math.isclose(
        float(np.linalg.norm(out.content["arrays"].to_numpy_ndarrays()[0])), 3.0, rel_tol=1e-5
    )


# ------------------------------------------------------------------ end to end
def test_two_sites_two_rounds_global_loss_falls_and_checkpoint_loads(tmp_path):
    from lungvlm.federated.server import read_rounds, read_state
    from lungvlm.federated.simulation import simulate, train_centralised
    from lungvlm.lightning.checkpoint import load_model, read_checkpoint

    config = load_config(_tiny_config(tmp_path))
    result = simulate(config)
    assert result["rounds_done"] == 2
    rounds = read_rounds(config.out_dir)
    assert [r["round"] for r in rounds] == [0, 1, 2]
    losses = [r["global"]["val/loss"] for r in rounds]
    assert losses[2] < losses[0], losses
    # Per-site validation and training metrics, per round.
    for record in rounds[1:]:
        for site in ("screening", "referral"):
            assert {"val/loss", "val/seg/dice", "train/loss", "train/update_norm"} <= set(
                record["sites"][site]
            )
    # Equal site sizes: the global value is the mean of the sites'.
    sites = rounds[2]["sites"]
    assert math.isclose(
        losses[2], (sites["screening"]["val/loss"] + sites["referral"]["val/loss"]) / 2
    )
    events = list((Path(config.out_dir) / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    # The global model is a normal checkpoint that inference loads.
    ckpt = Path(result["checkpoint"])
    model = load_model(ckpt)
    assert model.stage == "segment"
    stored = read_checkpoint(ckpt)
    assert stored["federated"]["round"] == 2 and stored["federated"]["sites"] == [
        "screening",
        "referral",
    ]
    assert (Path(config.out_dir) / "global" / "round_001.ckpt").is_file()
    # The loaded model holds round 2's weights, which moved away from round 1's.
    round1 = read_checkpoint(Path(config.out_dir) / "global" / "round_001.ckpt")["state_dict"]
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k].cpu(), v) for k, v in stored["state_dict"].items())
    assert any(not torch.equal(round1[k], v) for k, v in stored["state_dict"].items())
    # Started again with one more round, it resumes after round 2 with FedAvgM's momentum,
    # from the files state.json names (a last.ckpt cut short by a crash is not read).
    (Path(config.out_dir) / "global" / "last.ckpt").write_bytes(b"cut short")
    more = config.with_changes(rounds=3)
    assert simulate(more)["rounds_done"] == 3
    assert read_checkpoint(Path(config.out_dir) / "global" / "last.ckpt")["federated"]["round"] == 3
    momentum = sorted(p.name for p in (Path(config.out_dir) / "global").glob("momentum_*.npz"))
    assert momentum == ["momentum_003.npz"]
    assert [r["round"] for r in read_rounds(config.out_dir)] == [0, 1, 2, 3]
    assert read_state(config.out_dir)["local_steps"] == 3 * 2 * 6
    # A changed configuration is refused in the same folder.
    with pytest.raises(ValueError, match="another configuration"):
        simulate(more.with_changes(local_epochs=2, rounds=4))
    # The centralised baseline trains the same stage on the pooled sites.
    from data_modules.pooled import PooledDataModule

    pooled = train_centralised(config, tmp_path / "pooled", PooledDataModule)
    assert load_model(pooled).stage == "segment"
    metrics = (tmp_path / "pooled" / "csv" / "metrics.csv").read_text()
    assert "train/loss" in metrics


def test_stage3_sites_share_the_servers_tokenizer(tmp_path):
    from lungvlm.federated.simulation import simulate
    from lungvlm.lightning.checkpoint import checkpoint_stage, read_checkpoint

    path = _tiny_config(tmp_path, rounds=1)
    data = yaml.safe_load(path.read_text())
    data["stage_configs"][1] = str(REPO / "experiments/stage3.yaml")
    data["stage_overrides"]["model"]["vl"] = {"language_init": None, "language_pretrain_steps": 2}
    data["stage_overrides"]["trainer"]["limit_train_batches"] = 2
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    ckpt_path = simulate(config)["checkpoint"]
    ckpt = read_checkpoint(ckpt_path)
    assert checkpoint_stage(ckpt) == "vision_language"
    assert ckpt["lungvlm"]["tokenizer_json"]  # the report decoder's vocabulary travels with it
    # The sites validated the global model with the report metrics of stage 3.
    from lungvlm.federated.server import read_rounds

    record = read_rounds(config.out_dir)[-1]
    assert "val/report/concept_f1" in record["sites"]["screening"]
    # `lungvlm report`'s model loads it and writes a report (of a 48 mm cube of lung: a whole
    # chest at 1 mm is minutes of sliding window on a CPU).
    from data_modules.io import write_nifti
    from data_modules.phantom.patch import make_nodule_sample
    from lungvlm import LungVLM

    crop = make_nodule_sample(3, PhantomConfig.tiny(patch_shape_vox=(48, 48, 48)), positive=True)
    scan = tmp_path / "lung_cube.nii.gz"
    write_nifti(crop["image_hu"], scan, spacing_mm=crop["spacing_mm"], origin=(0.0, 0.0, 0.0))
    report = LungVLM.from_checkpoint(ckpt_path, device="cpu").report(scan)
    assert "IMPRESSION" in report.narrative and "Lung-RADS" in report.narrative


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_deployment_superlink_supernodes_and_flwr_run(tmp_path):
    """The same apps under Flower's deployment engine: a SuperLink, one SuperNode per site
    (separate processes talking HTTP, as on separate hosts) and `flwr run deploy/flower`."""
    import os
    import subprocess
    import sys
    import time

    from lungvlm.federated.server import read_rounds, read_state

    config_path = _tiny_config(tmp_path, rounds=1)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "FLWR_HOME": str(tmp_path / "flwr_home"), "FLWR_TELEMETRY_ENABLED": "0",
           "FLWR_DISABLE_UPDATE_CHECK": "1", "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip
    link = _free_port()
    (tmp_path / "flwr_home").mkdir()
    (tmp_path / "flwr_home" / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{link}"\n'
        "insecure = true\n"
    )
    logs = []

    def start(*args: str) -> subprocess.Popen:
        log = open(tmp_path / f"proc{len(logs)}.log", "w")
        logs.append(log)
        return subprocess.Popen([str(bin_dir / args[0]), *args[1:]], env=env, cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip

    procs = [start("flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link),
                   "--database", str(tmp_path / "link.db"))]  # fmt: skip

    def wait_for(ready, what: str, timeout_s: float = 90.0) -> None:
        deadline = time.time() + timeout_s
        while not ready():
            assert time.time() < deadline, (
                f"{what} did not start: {(tmp_path / 'proc0.log').read_text()[-2000:]}"
            )
            time.sleep(0.5)

    def link_log() -> str:
        logs[0].flush()
        return (tmp_path / "proc0.log").read_text(errors="replace")

    def port_open() -> bool:
        import socket

        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", link)) == 0

    try:
        wait_for(port_open, "the SuperLink")
        for name in ("screening", "referral"):
            procs.append(start("flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link}",
                               "--port", str(_free_port()), "--node-config", f'site="{name}"'))  # fmt: skip
        wait_for(lambda: link_log().count("Activated node_id") >= 2, "the two SuperNodes")
        out = tmp_path / "deployed"
        run = subprocess.run(
            [str(bin_dir / "flwr"), "run", "deploy/flower", "test", "--stream",
             "--run-config", f"config='{config_path}' out-dir='{out}'"],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=400,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        deadline = time.time() + 120
        while (read_state(out) or {}).get("rounds_done", 0) < 1 and time.time() < deadline:
            time.sleep(2)
        assert read_state(out)["rounds_done"] == 1
        record = read_rounds(out)[-1]
        assert set(record["sites"]) == {"screening", "referral"}
        assert all("val/loss" in site for site in record["sites"].values())
    finally:
        import signal

        for proc in procs:  # each in its own session: its SuperExec children go with it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        for log in logs:
            log.close()


def test_command_line_overrides(tmp_path):
    import argparse

    from lungvlm.commands.federate import apply_overrides, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    config = load_config(
        _tiny_config(tmp_path, privacy={"noise_multiplier": 2.0, "clipping_norm": 3.0})
    )

    def parse(*args: str):
        return apply_overrides(config, parser.parse_args(["federate", "--config", "x", *args]))

    plain = parse(
        "--strategy", "fedavg", "--no-privacy", "--rounds", "5", "--out", str(tmp_path / "o")
    )
    assert (plain.strategy.name, plain.strategy.server_momentum, plain.privacy) == (
        "fedavg",
        0.0,
        None,
    )
    assert plain.rounds == 5 and plain.out_dir == str(tmp_path / "o")
    noisier = parse("--noise-multiplier", "4.0")
    assert (noisier.privacy.noise_multiplier, noisier.privacy.clipping_norm) == (4.0, 3.0)
    assert parse().strategy.server_momentum == 0.3  # the YAML's
    with pytest.raises(ValueError, match="server_momentum"):
        parse("--server-momentum", "1.5")
