"""The Hugging Face Hub: upload an export, and download one by repo id."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrofit.errors import ExportNotFoundError
from retrofit.export.layout import BACKBONE_FILE, CONFIG_FILE, MODEL_FILE, README_FILE
from retrofit.export.staging import recover_interrupted_save
from retrofit.export.write import save

if TYPE_CHECKING:
    from retrofit.model.interpretable import InterpretableModel


def push_to_hub(
    imodel: InterpretableModel,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    include_backbone: bool = False,
    base_model: str | None = None,
    commit_message: str | None = None,
) -> Any:
    """Save to a temporary folder and upload it to the Hugging Face Hub (returns the commit info).

    The repository is created (with `private`) only when the first upload finds none.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save(imodel, Path(tmp) / "export", include_backbone, base_model)
        upload = {
            "repo_id": repo_id,
            "folder_path": str(folder),
            "repo_type": "model",
            "commit_message": commit_message or "Upload interpretable model (retrofit)",
        }
        try:
            return api.upload_folder(**upload)
        except RepositoryNotFoundError:
            api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
            return api.upload_folder(**upload)


# the only files a Hub download fetches: the export's data, never code or pickles
HUB_DOWNLOAD_FILES = (CONFIG_FILE, MODEL_FILE, BACKBONE_FILE, README_FILE)
# "org/name" as the Hub spells a repo id; a local folder of that name wins
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}")


def resolve_export(
    path: str | os.PathLike, revision: str | None = None, token: str | None = None
) -> Path:
    """The local folder of an export: `path` itself, or a Hub repo id downloaded to the Hub cache.

    The download fetches only export files (no code) and honours HF_HUB_OFFLINE, in which case
    a repo already in the local Hub cache is used and nothing else is reached.
    """
    folder = Path(path).expanduser()
    if folder.is_dir() or recover_interrupted_save(Path(os.path.abspath(folder))) is not None:
        return folder
    name = os.fspath(path)
    if not _REPO_ID.fullmatch(name) or name.startswith((".", "~")):
        return folder  # read_config names the missing folder
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        folder = Path(
            snapshot_download(
                name,
                revision=revision,
                token=token,
                repo_type="model",
                allow_patterns=list(HUB_DOWNLOAD_FILES),
            )
        )
    except (RepositoryNotFoundError, RevisionNotFoundError) as error:
        raise ExportNotFoundError(
            f"No export folder at {name!r}, and no Hub repository {name!r}"
            + (f" at revision {revision!r}" if revision else "")
            + f" ({type(error).__name__}). Check the path or repo id (and token for a private repo)."
        ) from error
    except LocalEntryNotFoundError as error:
        raise ExportNotFoundError(
            f"No export folder at {name!r}, and the Hub repository {name!r} is not in the local "
            "Hub cache while offline (HF_HUB_OFFLINE) or the Hub cannot be reached. Download it "
            "once online, or pass the folder of a saved export."
        ) from error
    except HfHubHTTPError as error:
        raise ExportNotFoundError(f"Could not download {name!r} from the Hub: {error}") from error
    if not (folder / CONFIG_FILE).is_file():
        raise ExportNotFoundError(
            f"The Hub repository {name!r} holds no retrofit export ({CONFIG_FILE} is missing). "
            "To convert a model from the Hub, load it with its own library (e.g. transformers' "
            "AutoModelForImageClassification) and pass it to retrofit.convert."
        )
    return folder
