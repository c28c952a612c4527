"""`erase push` against a stand-in for the Hub on 127.0.0.1, driven by the real huggingface_hub client.

The stand-in answers the routes huggingface_hub 2.x really calls for create_repo + upload_folder
(read from its source: hf_api.create_repo, _validate_yaml, _commit_api._fetch_upload_modes and
_send_commit via _upload_pipeline): POST /api/repos/create, POST /api/validate-yaml (README.md
metadata check), POST /api/models/{repo}/preupload/{rev} (every file "regular", so the contents
arrive base64-encoded in the commit and no xet storage is involved), POST
/api/models/{repo}/commit/{rev} (NDJSON), POST /api/models/{repo}/branch/{rev}, GET
/api/models/{repo} (repo_info, which create_repo(exist_ok=True) asks after a 401/403).
The push runs in a subprocess with HF_HUB_OFFLINE unset and the token in HF_TOKEN only.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from erase.errors import EraseError
from erase.export import export_run
from erase.export.hub import push_folder

REPO_ROOT = Path(__file__).resolve().parents[1]
PLANTED = "hf_plantedSECRET123"  # the token make_run plants in config.yaml: never pushed


class FakeHub:
    """Records what arrives; `fail_with` makes every request answer that HTTP status."""

    def __init__(self, fail_with: int | None = None):
        self.fail_with = fail_with
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, str]] = []  # (method, path, authorization)
        self.created: list[dict] = []
        self.unexpected: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _reply(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_GET(self):
                hub.requests.append(("GET", self.path, self.headers.get("Authorization", "")))
                if hub.fail_with:
                    return self._reply(hub.fail_with, {"error": "Invalid credentials in Authorization header"})
                hub.unexpected.append(f"GET {self.path}")
                self._reply(404, {"error": "not here"})

            def do_POST(self):
                body = self._body()
                path = self.path.split("?")[0]
                hub.requests.append(("POST", path, self.headers.get("Authorization", "")))
                if hub.fail_with:
                    return self._reply(hub.fail_with, {"error": "Invalid credentials in Authorization header"})
                base = f"http://127.0.0.1:{self.server.server_port}"
                if path == "/api/repos/create":
                    req = json.loads(body)
                    hub.created.append(req)
                    return self._reply(200, {"url": f"{base}/{req['organization'] or 'me'}/{req['name']}"})
                if path == "/api/validate-yaml":
                    return self._reply(200, {"errors": [], "warnings": []})
                if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/([^/]+)", path):
                    files = json.loads(body)["files"]
                    return self._reply(200, {"files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files]})
                if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/([^/]+)", path):
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            assert item["value"]["encoding"] == "base64"
                            hub.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                        elif item["key"] != "header":
                            hub.unexpected.append(f"commit item {item['key']}")
                    return self._reply(200, {"commitUrl": f"{base}/{m[1]}/commit/{'a' * 40}", "commitOid": "a" * 40})
                if re.fullmatch(r"/api/models/([^/]+/[^/]+)/branch/([^/]+)", path):
                    return self._reply(200, {})
                hub.unexpected.append(f"POST {path}")
                self._reply(404, {"error": "not here"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _env(tmp_path: Path, token: str | None = PLANTED, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_ENDPOINT", "HUGGING_FACE_HUB_TOKEN")
           and not k.lower().endswith("_proxy")}
    home = tmp_path / "hf_home"  # an empty HF home: no stored token, no cache from elsewhere
    home.mkdir(exist_ok=True)
    env.update(HF_HOME=str(home), NO_PROXY="127.0.0.1,localhost", HF_HUB_DISABLE_TELEMETRY="1",
               PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1", **extra)
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def _push(folder: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "erase", "push", str(folder), *args],
                          env=env, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, check=False)


def _bare_folder(tmp_path: Path) -> Path:
    """The smallest folder push accepts: a model_index.json and nothing else."""
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    return folder


@pytest.fixture(scope="module")
def export_dir(make_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("run") / "run"
    make_run(root, audit=True, token=PLANTED)
    out = tmp_path_factory.mktemp("export") / "erased-nudity"
    result = export_run(root, out, single_file=True)
    return out, set(result.files)


def test_push_uploads_exactly_the_export_and_never_the_token(export_dir, tmp_path):
    out, intended = export_dir
    folder = tmp_path / "erased-nudity"
    shutil.copytree(out, folder)
    # Leftovers a user might have in the folder: none of it may reach the Hub.
    for junk in ("checkpoints/step_5/optimizer.bin", "cache/forget_0.png", "logs/events.out.tfevents.1",
                 ".cache/huggingface/upload/x.metadata", "unet/.diffusion.tmp", "old.ckpt", "step_3/model.safetensors"):
        (folder / junk).parent.mkdir(parents=True, exist_ok=True)
        (folder / junk).write_bytes(b"junk")
    with FakeHub() as hub:
        proc = _push(folder, _env(tmp_path), "--repo-id", "alice/erased-nudity", "--private", "--endpoint", hub.url)
    assert proc.returncode == 0, proc.stderr
    assert not hub.unexpected, hub.unexpected
    assert set(hub.files) == intended
    for name, data in hub.files.items():
        assert data == (folder / name).read_bytes(), name
    assert hub.created == [{"name": "erased-nudity", "organization": "alice", "visibility": "private", "type": "model"}]
    # the token came from HF_TOKEN and was sent as a bearer token ...
    assert hub.requests and all(auth == f"Bearer {PLANTED}" for _, _, auth in hub.requests)
    # ... and appears nowhere else
    assert PLANTED not in proc.stdout + proc.stderr
    assert not any(PLANTED.encode() in data for data in hub.files.values())
    assert not any(PLANTED.encode() in p.read_bytes() for p in folder.rglob("*") if p.is_file())
    assert "alice/erased-nudity" in proc.stdout


def test_push_to_a_branch(tmp_path):
    folder = _bare_folder(tmp_path)
    with FakeHub() as hub:
        proc = _push(folder, _env(tmp_path, HF_ENDPOINT=hub.url), "--repo-id", "alice/m", "--revision", "dev")
    assert proc.returncode == 0, proc.stderr
    paths = [p for _, p, _ in hub.requests]
    assert "/api/models/alice/m/branch/dev" in paths and "/api/models/alice/m/commit/dev" in paths
    assert set(hub.files) == {"model_index.json"}


@pytest.mark.parametrize("status", [401, 403])
def test_rejected_token_is_one_line(export_dir, tmp_path, status):
    out, _ = export_dir
    with FakeHub(fail_with=status) as hub:
        proc = _push(out, _env(tmp_path, HF_ENDPOINT=hub.url), "--repo-id", "alice/erased")
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and str(status) in err, err
    assert PLANTED not in proc.stdout + proc.stderr
    assert not hub.files


def test_folder_containing_the_token_is_refused(tmp_path):
    folder = _bare_folder(tmp_path)
    (folder / "notes.yaml").write_text(f"token: {PLANTED}\n")
    with FakeHub() as hub:
        proc = _push(folder, _env(tmp_path, HF_ENDPOINT=hub.url), "--repo-id", "alice/m")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"erase push: {folder / 'notes.yaml'}: contains your Hugging Face token; remove it before pushing (nothing was uploaded)"]
    assert PLANTED not in proc.stdout + proc.stderr
    assert not hub.requests


def test_unreachable_hub_is_one_line(tmp_path):
    folder = _bare_folder(tmp_path)
    with FakeHub() as hub:
        url = hub.url  # a port that was just closed: connection refused
    proc = _push(folder, _env(tmp_path), "--repo-id", "alice/m", "--endpoint", url)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "cannot reach" in err and url in err, err


def test_missing_token_is_one_line(export_dir, tmp_path):
    out, _ = export_dir
    with FakeHub() as hub:
        proc = _push(out, _env(tmp_path, token=None, HF_ENDPOINT=hub.url), "--repo-id", "alice/erased")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["erase push: no Hugging Face token found; run `hf auth login` or set HF_TOKEN to a write token"]
    assert not hub.requests


def test_offline_mode_and_bad_repo_id(export_dir, monkeypatch):
    out, _ = export_dir
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EraseError, match="HF_HUB_OFFLINE=1"):
        push_folder(out, "alice/erased")
    for bad in ("alice/bad name", "a/b/c", "alice/--x", ""):
        with pytest.raises(EraseError, match="not a valid repo id"):
            push_folder(out, bad)


def test_push_refuses_a_folder_that_is_not_an_export(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(EraseError, match="not an exported model"):
        push_folder(tmp_path / "run", "alice/x")
