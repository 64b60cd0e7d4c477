"""The one push path to the Hugging Face Hub, and downloads of whole repos.

Every ``push_to_hub`` and ``save_pretrained(..., push_to_hub=True)`` of this package (pipeline, VQ-VAE, prior,
corpus) ends in `push_folder`: the repo is created (or found) with ``create_repo`` and the files go to the repo
id it answers, which carries the namespace (``"zoo"`` -> ``"user/zoo"``), in one commit. The folder is uploaded
as it is, card included: the card is the project's own (`igpg_hf.cards`), never a generic one from
transformers or diffusers.
"""

from __future__ import annotations

import fnmatch
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

logger = logging.getLogger(__name__)

__all__ = ["push_folder", "push_pipeline_folder", "snapshot", "is_local_path"]

# files a save may leave behind that never belong in a repo (interrupted atomic writes, OS litter)
IGNORE_PATTERNS = (
    ".*.tmp",
    "*/.*.tmp",
    ".*.old",
    "*/.*.old",
    ".DS_Store",
    "*/.DS_Store",
    ".git/*",
    ".cache/*",
)


def _ignored(path: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(path, p) for p in patterns)


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    repo_type: str = "model",
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    commit_description: str | None = None,
    allow_patterns: list[str] | None = None,
    delete_patterns: list[str] | None = None,
) -> CommitInfo:
    """Upload the files of ``folder`` (all, or those matching ``allow_patterns``) to ``repo_id`` in one commit;
    returns the commit (a str: its URL).

    ``repo_id`` without a namespace lands in the token owner's namespace. ``revision`` names a branch (created
    from main if missing). Files of the repo matching ``delete_patterns`` that the folder does not hold are
    deleted in the same commit (a corpus re-pushed with fewer shards must not keep the old ones).
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder to upload at {folder}")
    api = HfApi(token=token)
    repo = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True).repo_id
    if revision not in (None, "main"):
        api.create_branch(repo, branch=revision, repo_type=repo_type, exist_ok=True)
    files = {
        p.relative_to(folder).as_posix(): p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not _ignored(p.relative_to(folder).as_posix(), IGNORE_PATTERNS)
    }
    if allow_patterns is not None:
        files = {name: p for name, p in files.items() if _ignored(name, tuple(allow_patterns))}
    if not files:
        raise ValueError(f"{folder} holds no files to upload")
    ops: list = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(p)) for name, p in files.items()]
    if delete_patterns:
        remote = api.list_repo_files(repo, repo_type=repo_type, revision=revision)
        stale = [f for f in remote if f not in files and any(fnmatch.fnmatch(f, p) for p in delete_patterns)]
        ops += [CommitOperationDelete(path_in_repo=f) for f in stale]
    info = api.create_commit(
        repo,
        ops,
        repo_type=repo_type,
        revision=revision,
        create_pr=create_pr,
        commit_message=commit_message or f"Upload {folder.name} with igpg_hf",
        commit_description=commit_description,
    )
    logger.info("pushed %s to %s (%d files)", folder, repo, len(files))
    return info


def push_pipeline_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str = "Upload IGPG pipeline",
) -> CommitInfo:
    """Upload a saved pipeline folder as it is (``igpg-hf push``): it must load first, and it is never rewritten.

    Raises FileNotFoundError/ValueError if the folder is not a complete pipeline (no model_index.json, a missing
    or damaged component), before anything is uploaded.
    """
    from .pipeline_igpg import IGPGPipeline

    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"{folder} is not a saved pipeline (no model_index.json)")
    IGPGPipeline.from_pretrained(folder)  # validates every component; the folder is only read
    if not (folder / "README.md").is_file():
        logger.warning("%s has no README.md: the repo gets no model card", folder)
    return push_folder(
        folder,
        repo_id,
        private=private,
        token=token,
        revision=revision,
        create_pr=create_pr,
        commit_message=commit_message,
    )


def is_local_path(name: str | os.PathLike) -> bool:
    """True if ``name`` is (or looks like) a local path rather than a Hub repo id (``user/repo``)."""
    s = str(name)
    return (
        os.path.isdir(s)
        or os.path.exists(s)
        or os.path.isabs(s)
        or s.startswith((".", "~"))
        or s.count("/") > 1
    )


def snapshot(
    repo_id: str,
    *,
    repo_type: str = "model",
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
) -> str:
    """A local copy of a whole Hub repo (``snapshot_download``); FileNotFoundError if there is no such repo."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return snapshot_download(
            repo_id,
            repo_type=repo_type,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            force_download=force_download,
            local_files_only=local_files_only,
        )
    except (RepositoryNotFoundError, RevisionNotFoundError, LocalEntryNotFoundError) as e:
        where = f" at revision {revision!r}" if revision else ""
        raise FileNotFoundError(
            f"{repo_id!r} is neither a local folder nor a Hub {repo_type} repo{where} that can be reached "
            f"({type(e).__name__}); give a folder path or an existing repo id"
        ) from e


class HubMixin:
    """``save_pretrained`` writes the project's card; ``push_to_hub`` and ``save_pretrained(push_to_hub=True)``
    both upload through `push_folder` (the namespaced repo, that card, never transformers' generic one).

    Mixed into the IGPG models before their transformers base; subclasses give their card in ``_hub_card``.
    """

    def _hub_card(self):  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        is_main_process: bool = True,
        state_dict: dict | None = None,
        push_to_hub: bool = False,
        max_shard_size: int | str = "50GB",
        variant: str | None = None,
        *,
        repo_id: str | None = None,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        create_pr: bool = False,
        revision: str | None = None,
        **kwargs,
    ):
        """transformers' save plus the model card (README.md); ``push_to_hub=True`` then uploads the folder to
        ``repo_id`` (default: the folder's name, in your namespace) and returns the commit."""
        from .cards import component_cards_enabled, write_card

        # max_shard_size and variant are named here (not left in **kwargs) because diffusers passes a component's
        # save options only when its signature names them (a pipeline saved with variant="fp16" names its files so)
        super().save_pretrained(
            save_directory,
            is_main_process=is_main_process,
            state_dict=state_dict,
            max_shard_size=max_shard_size,
            variant=variant,
            **kwargs,
        )
        if not is_main_process:
            return None
        if component_cards_enabled():
            write_card(self._hub_card(), save_directory)
        if push_to_hub:
            return push_folder(
                save_directory,
                repo_id or Path(save_directory).resolve().name,
                private=private,
                token=token,
                revision=revision,
                create_pr=create_pr,
                commit_message=commit_message or f"Upload {type(self).__name__}",
            )
        return None

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        max_shard_size: int | str | None = "50GB",
    ):
        """Save to a temporary folder (weights, config, the project's card) and upload it to ``repo_id``.

        ``repo_id`` without a namespace goes to yours; returns the commit (a str: its URL;
        ``.repo_url.repo_id`` is the namespaced id).
        """
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, max_shard_size=max_shard_size)
            return push_folder(
                tmp,
                repo_id,
                private=private,
                token=token,
                revision=revision,
                create_pr=create_pr,
                commit_message=commit_message or f"Upload {type(self).__name__}",
                commit_description=commit_description,
            )
