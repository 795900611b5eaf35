"""lungseg.federated: Flower server and site clients as real processes on localhost (TLS, site tokens).

Tiny U-Net, tiny synthetic case files (tests/test_training.py's make_case). Every process runs with a
timeout and is killed at the end; the server listens on a free port it writes to an address file.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training import make_case

from lungseg.federated.arrays import arrays_of, fedavg, state_dict_of
from lungseg.federated.client import SiteClient, initial_state, local_config, proximal_term
from lungseg.federated.security import check_response, load_tokens, read_token, token_response, write_credentials
from lungseg.federated.sites import check_site_id, read_site_table, site_cases
from lungseg.ingest.errors import IngestError
from lungseg.training.checkpoint import load_checkpoint
from lungseg.training.models import build_model
from lungseg.training.train import TrainConfig, train

BASE = TrainConfig(base_channels=4, depth=2, image_size=32, epochs=1, batch_size=4, lr=1e-2, seed=0, threads=1,
                   roi="none", mode="flower", local_epochs=1)
TIMEOUT = 60
# the server, with an audit hook that records every file it opens under the case folder
SERVER_WITH_AUDIT = """
import os, sys
cases, fd = sys.argv.pop(1), int(sys.argv.pop(1))
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        if os.path.abspath(path).startswith(cases) or path.endswith(".h5"):
            os.write(fd, (path + "\\n").encode())
sys.addaudithook(hook)
from lungseg.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


def two_sites(d: Path) -> dict:
    """site_a: 2 training cases + 1 validation case; site_b: 1 + 1 (different n_k); case files and a case sheet
    with a site column (its DICOM paths under /secret/: none may reach a Flower message)."""
    layout = {"a1": (1, "site_a", "train"), "a2": (2, "site_a", "train"), "av": (91, "site_a", "val"),
              "b1": (3, "site_b", "train"), "bv": (92, "site_b", "val")}
    files = {name: make_case(d / f"{name}.h5", seed) for name, (seed, _, _) in layout.items()}
    sheet = d / "cases.tsv"
    sheet.write_text("case_id\tpatient_id\tdicom\tsite\n" + "".join(
        f"{name}\tp{name}\t/secret/dicom/{name}\t{site}\n" for name, (_, site, _) in layout.items()))
    return {"dir": d, "sheet": str(sheet), "files": files,
            "train": [files[n] for n, v in layout.items() if v[2] == "train"],
            "val": [files[n] for n, v in layout.items() if v[2] == "val"]}


@pytest.fixture(scope="module")
def site_data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return two_sites(tmp_path_factory.mktemp("cases"))


class Run:
    """Server + clients as processes in ``root``; everything killed on exit."""

    def __init__(self, root: Path, data: dict, config: TrainConfig, sites: list[str]) -> None:
        self.root, self.data, self.procs = root, data, []
        self.settings = root / "settings.json"
        self.settings.write_text(json.dumps({k: v for k, v in config.as_dict().items() if k not in ("device", "log_every")}))
        self.tls = root / "tls"
        if not (self.tls / "tokens.json").is_file():
            write_credentials(self.tls, sites)
        self.address = root / "server.address"
        self.env = dict(os.environ, OMP_NUM_THREADS="1")

    def log(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def start(self, name: str, argv: list[str], prefix: list[str] | None = None, **kw) -> subprocess.Popen:
        with open(self.log(name), "a") as f:
            proc = subprocess.Popen((prefix or [sys.executable, "-m", "lungseg"]) + argv, stdout=f, stderr=subprocess.STDOUT,
                                    env=self.env, **kw)
        self.procs.append(proc)
        return proc

    def server(self, *extra: str, audit_fd: int | None = None) -> subprocess.Popen:
        self.address.unlink(missing_ok=True)
        argv = ["fl-server", "--config", str(self.settings), "--out-dir", str(self.root / "server"), "--tokens",
                str(self.tls / "tokens.json"), "--certs", str(self.tls), "--address", "127.0.0.1:0",
                "--address-file", str(self.address), "--join-timeout", "40", "--round-timeout", "40", *extra]
        if audit_fd is None:
            return self.start("server", argv)
        prefix = [sys.executable, "-c", SERVER_WITH_AUDIT, str(self.data["dir"]), str(audit_fd)]
        return self.start("server", argv, prefix=prefix, pass_fds=(audit_fd,))

    def client(self, site: str, token: Path | None = None, name: str | None = None) -> subprocess.Popen:
        return self.start(name or site, ["fl-client", "--site", site, "--config", str(self.settings),
                                         "--train", *self.data["train"], "--val", *self.data["val"], "--sites",
                                         self.data["sheet"], "--server-file", str(self.address),
                                 "--ca", str(self.tls / "ca.pem"), "--token", str(token or self.tls / f"{site}.token"),
                                 "--work-dir", str(self.root / "clients"), "--wait", "30"])

    def rounds(self) -> list[dict[str, str]]:
        with open(self.root / "server" / "rounds.csv", newline="") as f:
            return list(csv.DictReader(f))

    def global_state(self) -> dict[str, torch.Tensor]:
        return load_checkpoint(self.root / "server" / "global_model.pt")["state_dict"]

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)


@pytest.fixture
def runs(tmp_path: Path):
    made: list[Run] = []

    def make(data: dict, config: TrainConfig, sites: list[str]) -> Run:
        made.append(Run(tmp_path, data, config, sites))
        return made[-1]

    yield make
    for r in made:
        r.close()


def wait_for(predicate, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def finish(run: Run, proc: subprocess.Popen, name: str = "server") -> int:
    try:
        return proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{name} did not finish; log:\n{run.log(name).read_text()[-3000:]}") from None


def local_weights(config: TrainConfig, train_cases: list[str], val_cases: list[str], out: Path) -> dict[str, torch.Tensor]:
    """What one site trains in round 1, computed here with the training core."""
    train(local_config(config, 1), train_cases, val_cases, out, initial_weights=initial_state(config))
    return load_checkpoint(out / "checkpoint.pt")["model"]


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k].double(), b[k].double(), rtol=1e-5, atol=1e-6, msg=k)


# ---------------------------------------------------------------- processes on localhost


def test_two_sites_one_round_is_the_nk_weighted_average_and_the_server_opens_no_case(site_data, runs, tmp_path) -> None:
    run = runs(site_data, BASE, ["site_a", "site_b"])
    audit_r, audit_w = os.pipe()
    server = run.server(audit_fd=audit_w)
    os.close(audit_w)
    clients = [run.client("site_a"), run.client("site_b")]
    assert finish(run, server) == 0, run.log("server").read_text()[-3000:]
    assert [c.wait(timeout=TIMEOUT) for c in clients] == [0, 0]
    opened = os.read(audit_r, 1 << 16).decode()
    os.close(audit_r)
    assert opened == "", f"the server opened case files:\n{opened}"

    files, sheet = site_data["files"], read_site_table(site_data["sheet"])
    assert sheet["a1"] == "site_a"
    w_a = local_weights(BASE, [files["a1"], files["a2"]], [files["av"]], tmp_path / "ref_a")
    w_b = local_weights(BASE, [files["b1"]], [files["bv"]], tmp_path / "ref_b")
    (row,) = run.rounds()
    n_a, n_b = int(row["n_train_site_a"]), int(row["n_train_site_b"])
    assert (n_a, n_b) == (12, 6)  # 2 cases x 6 slices, 1 case x 6 slices
    expected = {k: (w_a[k].double() * n_a + w_b[k].double() * n_b) / (n_a + n_b) if w_a[k].is_floating_point()
                else torch.maximum(w_a[k], w_b[k]) for k in w_a}
    assert_close(run.global_state(), expected)
    # bytes measured on the serialized parameters: the model down twice (fit, evaluate) and up once
    model_bytes = int(row["bytes_received_site_a"])
    assert model_bytes > sum(t.numel() * t.element_size() for t in w_a.values())
    assert int(row["bytes_sent_site_a"]) == 2 * model_bytes and row["sites_ok"] == "site_a;site_b"
    assert row["sites_failed"] == "-" and 0.0 <= float(row["val_dice"]) <= 1.0
    assert (run.root / "server" / "model.pt").is_file() and (run.root / "server" / "metrics.csv").is_file()


def test_one_site_equals_plain_training_and_the_server_resumes_after_a_kill(site_data, runs, tmp_path) -> None:
    config = replace(BASE, epochs=2)  # 2 rounds of 1 epoch
    run = runs(site_data, config, ["site_a"])
    server, client = run.server("--evaluate-every", "2"), run.client("site_a")
    # killed while the site trains round 2: round 1 is saved, round 2 cannot be (the server awaits the site)
    wait_for(lambda: "site site_a round 2: training" in run.log("site_a").read_text(), "site_a's round 2")
    server.send_signal(signal.SIGKILL)
    server.wait(timeout=10)
    client.kill()
    client.wait(timeout=10)
    round1 = run.global_state()
    files = site_data["files"]
    plain = tmp_path / "plain"
    train(replace(BASE, mode="ddp"), [files["a1"], files["a2"]], [files["av"]], plain)
    assert_close(round1, load_checkpoint(plain / "checkpoint.pt")["model"])  # K=1, E=1: plain training

    first = run.rounds()
    server, client = run.server("--evaluate-every", "2"), run.client("site_a")
    assert finish(run, server) == 0, run.log("server").read_text()[-3000:]
    assert client.wait(timeout=TIMEOUT) == 0
    assert "resuming after round 1 of 2" in run.log("server").read_text()
    rows = run.rounds()
    assert [r["round"] for r in rows] == ["1", "2"] and rows[0] == first[0]
    assert rows[0]["val_dice"] == "nan" and 0.0 <= float(rows[1]["val_dice"]) <= 1.0  # evaluated every 2nd round
    with open(run.root / "server" / "metrics.csv", newline="") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2"]


def test_an_unknown_client_is_refused_and_a_client_dying_mid_round_does_not_stop_the_run(site_data, runs) -> None:
    config = replace(BASE, epochs=2)
    run = runs(site_data, config, ["site_a", "site_b"])
    server = run.server("--min-clients", "1")
    wrong = run.root / "forged.token"
    wrong.write_text("0" * 64 + "\n")
    rogue = run.client("site_b", token=wrong, name="rogue")  # joins alongside the real sites
    good_a, doomed_b = run.client("site_a"), run.client("site_b")
    assert finish(run, rogue, "rogue") == 1
    assert "refused a client claiming site 'site_b': unknown site or wrong token" in run.log("server").read_text()
    assert "refused (wrong token" in run.log("rogue").read_text()
    wait_for(lambda: "site site_b round 1: training" in run.log("site_b").read_text(), "site_b's round 1")
    doomed_b.send_signal(signal.SIGKILL)
    assert finish(run, server) == 0, run.log("server").read_text()[-3000:]
    assert good_a.wait(timeout=TIMEOUT) == 0
    r1, r2 = run.rounds()
    assert (r1["sites_ok"], r1["sites_failed"]) == ("site_a", "site_b") and int(r1["failures"]) >= 1
    assert (r2["sites_ok"], r2["sites_failed"]) == ("site_a", "-") and r2["val_dice_site_b"] == ""


# ---------------------------------------------------------------- in-process pieces


def test_client_messages_carry_no_path_case_id_or_sheet_value(site_data, tmp_path) -> None:
    table = read_site_table(site_data["sheet"])
    train_b, val_b = site_cases(site_data["train"], table, "site_b"), site_cases(site_data["val"], table, "site_b")
    assert [Path(p).name for p in train_b + val_b] == ["b1.h5", "bv.h5"]
    client = SiteClient("site_b", "t" * 64, BASE, train_b, val_b, tmp_path / "work")
    params = arrays_of(initial_state(BASE))
    props = client.get_properties({"challenge": "abc"})
    arrays, n, fit_metrics = client.fit(params, {"round": 1, "rounds": 1})
    loss, n_val, eval_metrics = client.evaluate(arrays, {"round": 1})
    assert set(props) == {"site", "response"} and set(fit_metrics) == {"site", "train_loss", "local_val_dice", "train_seconds"}
    assert set(eval_metrics) == {"site", "tp", "p", "g", "fscore_sum"} and (n, n_val) == (6, 6)
    strings = [v for m in (props, fit_metrics, eval_metrics) for v in m.values() if isinstance(v, str)]
    assert strings == ["site_b", token_response("t" * 64, "site_b", "abc"), "site_b", "site_b"]
    assert all(isinstance(a, np.ndarray) for a in arrays)
    forbidden = [str(tmp_path), str(site_data["dir"]), "b1", "bv", "pb1", "/secret"]
    assert not [f for f in forbidden for s in strings if f in s]


def test_fedavg_weights_by_nk_and_takes_the_max_of_integer_buffers() -> None:
    a = [np.array([1.0, 2.0], np.float32), np.array(3, np.int64)]
    b = [np.array([4.0, 8.0], np.float32), np.array(5, np.int64)]
    out = fedavg([(a, 1), (b, 2)])
    np.testing.assert_allclose(out[0], [3.0, 6.0])
    assert out[0].dtype == np.float32 and int(out[1]) == 5
    template = initial_state(BASE)
    with pytest.raises(ValueError, match="different architecture"):
        state_dict_of(template, arrays_of(template)[:-1])


def test_credentials_tokens_and_site_ids(tmp_path: Path) -> None:
    paths = write_credentials(tmp_path, ["site_a", "site_b"])
    assert paths["ca.pem"].read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert oct(paths["server.key"].stat().st_mode & 0o777) == "0o600"
    tokens = load_tokens(paths["tokens.json"])
    assert read_token(paths["site_a.token"]) == tokens["site_a"]
    good = token_response(tokens["site_a"], "site_a", "nonce")
    assert check_response(tokens, "site_a", "nonce", good)
    assert not check_response(tokens, "site_b", "nonce", good)  # another site's token
    assert not check_response(tokens, "site_a", "other nonce", good)  # a replayed answer
    assert not check_response(tokens, "site_z", "nonce", good)
    for bad in ("/data/hospital", "", "a" * 40, "1site"):
        with pytest.raises(ValueError, match="pseudonym"):
            check_site_id(bad)
    sheet = tmp_path / "s.tsv"
    sheet.write_text("case_id\tsite\nc1\t../x\n")
    with pytest.raises(IngestError, match="line 2"):
        read_site_table(sheet)


def test_demo_cohort_has_three_hospitals_of_different_sizes() -> None:
    from lungseg.demo.cohort import demo_case_ids, demo_site

    sites = [demo_site(c) for c in demo_case_ids(12)]
    assert [sites.count(s) for s in ("site_a", "site_b", "site_c")] == [6, 4, 2]
    assert all(check_site_id(s) == s for s in sites)


def test_fedprox_term_and_its_pull_towards_the_global_model(site_data, tmp_path) -> None:
    model = torch.nn.Linear(2, 1)
    anchor = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    expected = 0.5 * 3.0 * sum(float((p.detach() ** 2).sum()) for p in model.parameters())
    assert float(proximal_term(anchor, 3.0)(model).detach()) == pytest.approx(expected)

    table = read_site_table(site_data["sheet"])
    cases = site_cases(site_data["train"], table, "site_a"), site_cases(site_data["val"], table, "site_a")
    client = SiteClient("site_a", "t" * 64, replace(BASE, lr=1e-3), *cases, tmp_path / "work")
    state = initial_state(BASE)
    start = arrays_of(state)
    params = {name for name, _ in build_model(BASE.arch, **BASE.model_kwargs()).named_parameters()}
    trained = [i for i, name in enumerate(state) if name in params]  # not BatchNorm's running statistics

    def distance(mu: float) -> float:
        arrays, _, _ = client.fit(start, {"round": 1, "rounds": 1, "proximal_mu": mu})
        return sum(float(((arrays[i].astype(np.float64) - start[i]) ** 2).sum()) for i in trained)

    near, free = distance(1000.0), distance(0.0)
    assert near < 0.5 * free
