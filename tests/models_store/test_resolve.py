import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import BadModel
from models_store.resolve import check_safetensors_only, model_exists, resolve_model

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def models_dir(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir of its own (tiny models, a nested one, a pickle-only one), so that none leak elsewhere."""
    root = tmp_path_factory.mktemp("resolve") / "models"
    shutil.copytree(tiny_models_dir, root)
    shutil.copytree(root / "tiny-ddpm", root / "team" / "foo")
    _make_pickle_only(root / "tiny-ddpm", root / "pickled")
    (root / "junk").mkdir()
    (root / "junk" / "README.txt").write_text("not a model")
    (root / "afile").write_text("not a folder")
    return root


def _make_pickle_only(source: Path, folder: Path) -> None:
    """A copy of `source` whose unet is saved as a pickle, `diffusion_pytorch_model.bin`, not safetensors."""
    from diffusers import UNet2DModel

    shutil.copytree(source, folder)
    unet = UNet2DModel.from_pretrained(folder / "unet")
    shutil.rmtree(folder / "unet")
    unet.save_pretrained(folder / "unet", safe_serialization=False)
    assert (folder / "unet" / "diffusion_pytorch_model.bin").is_file()


@pytest.mark.parametrize(
    ("ref", "expected"), [("tiny-sd", "tiny-sd"), ("./tiny-ddpm/", "tiny-ddpm"), ("team/foo", "team/foo")]
)
def test_local_models_resolve_inside_the_models_dir(models_dir: Path, ref: str, expected: str) -> None:
    assert resolve_model(ref, models_dir) == (models_dir / expected).resolve()
    assert model_exists(ref, models_dir)


def test_symlink_inside_the_models_dir_is_followed(models_dir: Path) -> None:
    link = models_dir / "alias"
    link.symlink_to(models_dir / "tiny-sd", target_is_directory=True)
    assert resolve_model("alias", models_dir) == (models_dir / "tiny-sd").resolve()


@pytest.mark.parametrize("ref", ["../x", "tiny-sd/../../x", "team/../../tiny-sd", ".."])
def test_paths_out_of_the_models_dir_are_refused(models_dir: Path, ref: str) -> None:
    with pytest.raises(BadModel, match=f"model reference '{ref}' escapes the models dir"):
        resolve_model(ref, models_dir)
    assert not model_exists(ref, models_dir)


def test_absolute_paths_are_refused(models_dir: Path) -> None:
    for ref in ["/etc", str(models_dir / "tiny-sd")]:
        with pytest.raises(BadModel, match="is an absolute path"):
            resolve_model(ref, models_dir)
        assert not model_exists(ref, models_dir)


def test_symlink_out_of_the_models_dir_is_refused(models_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(models_dir / "tiny-ddpm", elsewhere)  # a valid model: refused for where it is, not what
    (models_dir / "outside").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(BadModel, match="'outside' escapes the models dir"):
        resolve_model("outside", models_dir)
    assert not model_exists("outside", models_dir)


def test_unknown_name_is_bad_model(models_dir: Path) -> None:
    with pytest.raises(BadModel, match=f"model 'no-such-model' not found in {models_dir}") as info:
        resolve_model("no-such-model", models_dir)
    assert info.value.code == "bad_model"
    assert not model_exists("no-such-model", models_dir)
    with pytest.raises(BadModel, match="model reference is empty"):
        resolve_model("", models_dir)
    for ref, reason in [("a\x00b", "embedded null byte"), ("x" * 5000, "File name too long")]:
        with pytest.raises(BadModel, match=f"is not a valid path: {reason}$"):
            resolve_model(ref, models_dir)
        assert not model_exists(ref, models_dir)


def test_folder_not_in_diffusers_format_is_bad_model(models_dir: Path) -> None:
    with pytest.raises(BadModel, match="'junk' at .* is not in diffusers format"):
        resolve_model("junk", models_dir)
    assert not model_exists("junk", models_dir)
    with pytest.raises(BadModel, match="'afile' is a file, not a folder"):
        resolve_model("afile", models_dir)
    assert not model_exists("afile", models_dir)


def test_pickle_only_weights_are_refused(models_dir: Path) -> None:
    message = r"model 'pickled' has only pickle weights in unet/ \(diffusion_pytorch_model.bin\); convert it"
    with pytest.raises(BadModel, match=message):
        resolve_model("pickled", models_dir)
    with pytest.raises(BadModel, match=message):
        check_safetensors_only(models_dir / "pickled")


def test_pickles_next_to_safetensors_or_outside_components_are_accepted(
    models_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "mixed"
    shutil.copytree(models_dir / "tiny-ddpm", folder)
    shutil.copy(models_dir / "pickled" / "unet" / "diffusion_pytorch_model.bin", folder / "unet")
    (folder / "v1-pruned.ckpt").write_bytes(b"a single-file checkpoint, never loaded")
    check_safetensors_only(folder)

    single = tmp_path / "single"  # one model, no model_index.json: its own folder is judged
    shutil.copytree(models_dir / "pickled" / "unet", single)
    with pytest.raises(
        BadModel, match=r"only pickle weights in the model folder \(diffusion_pytorch_model.bin\)"
    ):
        check_safetensors_only(single)


# Hub ids run in a child process: huggingface_hub reads HF_HUB_OFFLINE and HF_ENDPOINT once, at import.
_RESOLVE_SCRIPT = """
import json, sys
from pathlib import Path
from core.errors import BadModel
from models_store.resolve import resolve_model
results = {}
for ref in sys.argv[2:]:
    try:
        results[ref] = str(resolve_model(ref, Path(sys.argv[1])))
    except BadModel as error:
        results[ref] = "BadModel: " + error.message
print(json.dumps(results))
"""


def _resolve_in_child(models_dir: Path, refs: list[str], env: dict[str, str]) -> dict[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", _RESOLVE_SCRIPT, str(models_dir), *refs],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _cache_repo(hub_cache: Path, repo_id: str, source: Path) -> Path:
    """Lay `source` out in the Hub cache as the snapshot of `repo_id`'s main branch, as a download would."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(source, repo / "snapshots" / commit)
    return repo / "snapshots" / commit


def test_hub_ids_offline(models_dir: Path, tmp_path: Path) -> None:
    hub_cache = tmp_path / "hub"
    cached = _cache_repo(hub_cache, "someorg/tiny-ddpm", models_dir / "tiny-ddpm")
    _cache_repo(hub_cache, "someorg/pickled", models_dir / "pickled")
    no_weights = _cache_repo(hub_cache, "someorg/no-weights", models_dir / "tiny-ddpm")
    (no_weights / "unet" / "diffusion_pytorch_model.safetensors").unlink()

    refs = ["someorg/tiny-ddpm", "someorg/pickled", "someorg/no-weights", "someorg/missing"]
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache)}
    results = _resolve_in_child(models_dir, refs, env)

    assert results["someorg/tiny-ddpm"] == str(cached)
    assert results["someorg/pickled"].startswith(
        "BadModel: model 'someorg/pickled' has only pickle weights in unet/"
    )
    assert results["someorg/no-weights"].startswith(
        "BadModel: model 'someorg/no-weights' has no safetensors weights in unet/ on the Hub"
    )
    assert results["someorg/missing"].startswith(
        "BadModel: model 'someorg/missing' is not in the local Hub cache and the Hub cannot be reached"
    )


def test_hub_id_with_the_hub_unreachable(models_dir: Path, tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port that nothing listens on: connections are refused at once
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        "HF_HUB_OFFLINE": "0",
        "HF_ENDPOINT": f"http://127.0.0.1:{port}",
        "HF_HUB_CACHE": str(tmp_path / "hub"),
    }
    results = _resolve_in_child(models_dir, ["someorg/missing"], env)
    assert results["someorg/missing"].startswith(
        "BadModel: model 'someorg/missing' is not in the local Hub cache"
    )
    assert not model_exists("someorg/missing", models_dir)


@pytest.mark.parametrize(
    "ref", [".registry/glyphs/1234", ".registry", "team/.hidden", ".registry/glyphs", "cached-alias"]
)
def test_hidden_folders_of_the_models_dir_are_refused(models_dir: Path, ref: str) -> None:
    """The registry's cache (`.registry/<name>/<job id>`) and other dot folders are diffq's own: a
    registered model is named by its name, whose owner is checked, never by its cache path, nor by a
    symlink that leads into it."""
    cached = models_dir / ".registry" / "glyphs" / "1234"
    if not cached.exists():
        shutil.copytree(models_dir / "tiny-ddpm", cached)
        shutil.copytree(models_dir / "tiny-ddpm", models_dir / "team" / ".hidden")
        (models_dir / "cached-alias").symlink_to(cached, target_is_directory=True)
    with pytest.raises(BadModel, match="names a hidden folder of the models dir"):
        resolve_model(ref, models_dir)
    assert not model_exists(ref, models_dir)
