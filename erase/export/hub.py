"""`erase push`: upload an exported folder to the Hugging Face Hub (create_repo + upload_folder).

The token is whatever huggingface_hub finds in the usual places (HF_TOKEN, the token stored by
`hf auth login`); this module only asks whether one exists and never prints, logs or writes it.
Every failure a user can fix becomes one line: offline mode, no token, 401/403, a bad repo id.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from erase.errors import EraseError

# Never uploaded, even if someone copied a run directory's training leftovers into the folder.
IGNORE_PATTERNS = [
    "checkpoints/**", "checkpoint-*/**", "**/checkpoints/**", "step_*/**", "epoch_*/**",
    "cache/**", "**/cache/**", ".cache/**", "**/__pycache__/**", "__pycache__/**",
    "logs/**", "**/logs/**", "runs/**", "*.log", "**/*.tmp", ".*", "**/.*",
    "*.ckpt", "*.pt", "*.pth", "*.bin", "*.pkl", "*.pickle",  # pickles: we publish safetensors only
]


def hub_offline() -> bool:
    # Same rule as erase.models.loading.hub_offline, without importing torch/diffusers for a push.
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


_TEXT_SUFFIXES = {".md", ".json", ".yaml", ".yml", ".txt", ".html", ".cfg", ".toml", ".py", ".csv"}


def _check_no_token_inside(folder: Path, token: str) -> None:
    """Refuse to publish a text file that contains the user's own token (e.g. pasted into a config)."""
    from huggingface_hub.utils import filter_repo_objects

    files = [p for p in folder.rglob("*") if p.is_file()]
    rel = filter_repo_objects([p.relative_to(folder).as_posix() for p in files], ignore_patterns=IGNORE_PATTERNS)
    needle = token.encode()
    for name in rel:
        path = folder / name
        if path.suffix.lower() in _TEXT_SUFFIXES and path.stat().st_size < 50 * 2**20 and needle in path.read_bytes():
            raise EraseError(f"{path}: contains your Hugging Face token; remove it before pushing (nothing was uploaded)")


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    url: str
    commit_url: str


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise EraseError(f"{folder}: no such directory (run `erase export RUN --to {folder}` first)")
    if not (folder / "model_index.json").is_file() and not (folder / "pytorch_lora_weights.safetensors").is_file():
        raise EraseError(f"{folder}: not an exported model (no model_index.json); run `erase export RUN --to DIR` and push DIR")


def _http_error(err: Exception, repo_id: str, endpoint: str) -> EraseError:
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    if status == 401:
        return EraseError(f"{repo_id}: the Hub at {endpoint} rejected the token (401 Unauthorized); create a write token and run `hf auth login` or set HF_TOKEN")
    if status == 403:
        return EraseError(f"{repo_id}: the token may not write to this namespace (403 Forbidden); use a write token or a repo id under your own name")
    if status == 404:
        return EraseError(f"{repo_id}: repository or revision not found on {endpoint} (404)")
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return EraseError(f"{repo_id}: upload to {endpoint} failed ({status or 'no response'}: {reason})")


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    endpoint: str | None = None,
    commit_message: str = "Upload erased model with erase",
) -> PushResult:
    """Create `repo_id` (if needed) and upload `folder` to it, skipping IGNORE_PATTERNS."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    from huggingface_hub.utils import validate_repo_id

    folder = Path(folder).expanduser()
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise EraseError(f"--repo-id {repo_id!r}: not a valid repo id (expected NAME or OWNER/NAME: letters, digits, '-', '_', '.', at most 96 characters)") from None
    _check_folder(folder)
    if hub_offline():
        raise EraseError("HF_HUB_OFFLINE=1 is set, so nothing can be uploaded; unset it (`env -u HF_HUB_OFFLINE erase push ...`)")
    token = get_token()
    if token is None:
        raise EraseError("no Hugging Face token found; run `hf auth login` or set HF_TOKEN to a write token")
    _check_no_token_inside(folder, token)
    del token  # HfApi finds it again itself; keep it out of any frame a traceback could show
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    api = HfApi(endpoint=endpoint)
    try:
        url = api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
        repo_id = url.repo_id
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id, folder_path=folder, repo_type="model", revision=revision,
            ignore_patterns=list(IGNORE_PATTERNS), commit_message=commit_message,
        )
    except HfHubHTTPError as err:
        raise _http_error(err, repo_id, endpoint) from None
    except ValueError as err:  # e.g. README.md metadata the Hub rejects
        raise EraseError(f"{folder}: {str(err).strip().splitlines()[0]}") from None
    except Exception as err:
        # Connection refused, DNS, TLS, timeouts: raised by the HTTP client huggingface_hub uses
        # (httpx or its fork httpx2 in hub 2.x), not wrapped in a hub error type.
        if isinstance(err, OSError) or type(err).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "requests", "urllib3"):
            raise EraseError(f"{repo_id}: cannot reach {endpoint} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
        raise
    return PushResult(repo_id=repo_id, url=str(url), commit_url=str(getattr(info, "commit_url", info)))
