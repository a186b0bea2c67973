"""Models on the Hugging Face Hub: a ``--model`` that is not a local folder but a repo id
(``user/name``) is downloaded with ``huggingface_hub`` into its usual cache (``HF_HUB_CACHE``,
``HF_HOME``), which it reads without the network under ``HF_HUB_OFFLINE=1``; ``push`` uploads an
exported folder. The token comes from where ``huggingface_hub`` looks for it (``HF_TOKEN``,
``hf auth login``); nothing here ever prompts for one."""

from __future__ import annotations

import re
from pathlib import Path

from trainer.errors import UserError
from trainer.network import bound_hub_requests, hub_unreachable_reason

# user/name: what the Hub accepts as a model repo id (letters, digits, '-', '_', '.'; no '--' or '..').
REPO_ID = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
# What an exported folder holds (eager or ONNX); nothing else of a repository is downloaded.
MODEL_FILES = ["*.json", "*.safetensors", "*.onnx", "*.onnx.data", "README.md"]


def is_repo_id(reference: str | Path) -> bool:
    return bool(REPO_ID.match(str(reference)))


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _unreachable_reason(exc: BaseException | None = None) -> str:
    """Which host did not answer, and how (``trainer.network``); else the endpoint and ``exc``."""
    from huggingface_hub import constants

    if why := hub_unreachable_reason():
        return why
    detail = str(exc).strip().splitlines()[0][:160] if exc is not None and str(exc).strip() else ""
    return f"{constants.ENDPOINT}" + (f": {detail}" if detail else "")


def _unreachable(exc: BaseException) -> bool:
    """A failure to connect at all (refused, DNS, timeout), from whichever HTTP client huggingface_hub uses."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return isinstance(exc, OSError) or bool(names & {"TransportError", "ConnectionError", "TimeoutException"})


def resolve_model_dir(reference: str | Path, revision: str | None = None) -> Path:
    """A local model folder for ``reference``: the folder itself when it exists, else the Hub
    repo of that id (at ``revision``: a branch, tag or commit), downloaded or found in the cache.

    A reference that is neither is returned as it is, for the caller's "does not exist" error.
    """
    local = Path(reference)
    if local.exists():
        if revision:
            raise UserError(f"--revision={revision} is for a Hub repo id, but {reference} is a local folder; drop it")
        return local
    if not is_repo_id(reference):
        return local
    import huggingface_hub
    from huggingface_hub import errors

    bound_hub_requests()
    repo = f"{reference}" + (f" (revision {revision})" if revision else "")
    try:
        path = huggingface_hub.snapshot_download(str(reference), revision=revision, allow_patterns=MODEL_FILES)
    except errors.RevisionNotFoundError as exc:
        raise UserError(
            f"the Hub repo {reference} has no revision {revision}; give one of its branches, tags or commits"
        ) from exc
    except (errors.RepositoryNotFoundError, errors.GatedRepoError) as exc:
        raise UserError(
            f"{reference} is not a local folder, nor a Hub model you can read: check the name, or log in for a "
            "private one (HF_TOKEN or `hf auth login`)"
        ) from exc
    except errors.LocalEntryNotFoundError as exc:
        from huggingface_hub import constants

        if _offline():
            raise UserError(
                f"{repo} is not a local folder, and not in the Hugging Face cache ({constants.HF_HUB_CACHE}) while "
                "HF_HUB_OFFLINE is set: download it once with the network on, or give a local folder"
            ) from exc
        raise UserError(
            f"{repo} is not a local folder, and the Hugging Face Hub could not be reached to download it "
            f"({_unreachable_reason()}): check the network (or HF_ENDPOINT), or set HF_HUB_OFFLINE=1 to use the cache"
        ) from exc
    except errors.HfHubHTTPError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise UserError(f"downloading {repo} from the Hugging Face Hub failed ({first}); try again") from exc
    return Path(path)


def push(model_dir: Path, repo_id: str, private: bool = False, revision: str | None = None, message: str = "") -> str:
    """Upload a complete exported folder to the Hub repo ``repo_id`` (created if missing); its URL.

    The folder is checked first (``check_complete``): nothing half-exported is ever uploaded.
    """
    import huggingface_hub
    from huggingface_hub import errors

    if not is_repo_id(repo_id):
        raise UserError(f"--repo={repo_id} is not a Hub repo id; give one as user/name (or org/name)")
    if _offline():
        raise UserError("pushing needs the network, but HF_HUB_OFFLINE is set; unset it to push")
    token = huggingface_hub.get_token()
    if token is None:
        raise UserError("no Hugging Face token found: set HF_TOKEN, or log in once with `hf auth login`")
    bound_hub_requests()
    api = huggingface_hub.HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            folder_path=str(model_dir),
            repo_id=repo_id,
            revision=revision,
            commit_message=message or f"Upload {model_dir.name} (sentiment-trainer)",
            allow_patterns=MODEL_FILES,
        )
    except errors.HfHubHTTPError as exc:
        first = str(exc).strip().splitlines()[0][:200]
        raise UserError(f"pushing to {repo_id} failed ({first}); check the token's write access and the name") from exc
    except Exception as exc:
        if not _unreachable(exc):
            raise
        raise UserError(
            f"pushing to {repo_id} failed: the Hugging Face Hub could not be reached ({_unreachable_reason(exc)}); "
            f"check the network (or HF_ENDPOINT) and push again ({model_dir} is left as it is)"
        ) from exc
    return str(getattr(info, "commit_url", None) or f"{api.endpoint}/{repo_id}")
