import shutil
from pathlib import Path

from models_store.tiny import TINY_MODELS, make_tiny_models


def test_tiny_models_are_diffusers_folders_with_safetensors_only(tiny_models_dir: Path) -> None:
    for name in TINY_MODELS:
        folder = tiny_models_dir / name
        assert (folder / "model_index.json").is_file()
        weights = sorted(
            p.relative_to(folder).as_posix()
            for p in folder.rglob("*")
            if p.suffix in {".safetensors", ".bin", ".pt", ".pth", ".ckpt"}
        )
        assert weights and all(w.endswith(".safetensors") for w in weights), weights
    assert (tiny_models_dir / "tiny-sd" / "tokenizer" / "vocab.json").is_file()
    assert (tiny_models_dir / "tiny-sd" / "tokenizer" / "merges.txt").is_file()


def test_existing_models_are_kept_unless_overwrite(tiny_models_dir: Path, tmp_path: Path) -> None:
    weights = tiny_models_dir / "tiny-ddpm" / "unet" / "diffusion_pytorch_model.safetensors"
    before = weights.stat().st_mtime_ns
    assert make_tiny_models(tiny_models_dir) == [tiny_models_dir / name for name in TINY_MODELS]
    assert weights.stat().st_mtime_ns == before

    # Overwriting replaces the whole folder, and rebuilds the same weights: the builds are seeded.
    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir, models)
    (models / "tiny-ddpm" / "stale.txt").write_text("left over")
    (models / "tiny-sd" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"corrupt")
    make_tiny_models(models, overwrite=True)
    assert not (models / "tiny-ddpm" / "stale.txt").exists()
    for name in TINY_MODELS:
        for original in sorted((tiny_models_dir / name).rglob("*.safetensors")):
            rebuilt = models / original.relative_to(tiny_models_dir)
            assert rebuilt.read_bytes() == original.read_bytes(), rebuilt
    assert not [p for p in models.iterdir() if p.name.startswith(".")], "staging folders left behind"


def test_clip_tokenizer_pads_to_77_with_endoftext(tiny_models_dir: Path) -> None:
    from transformers import CLIPTextConfig, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_models_dir / "tiny-sd" / "tokenizer")
    ids = tokenizer(
        "a squirrel in Picasso style", padding="max_length", max_length=tokenizer.model_max_length
    ).input_ids
    assert tokenizer.model_max_length == 77 and len(ids) == 77
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
    assert ids[0] == tokenizer.bos_token_id
    assert ids[-1] == tokenizer.pad_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a squirrel in picasso style"
    assert tokenizer.unk_token_id not in ids[1 : ids.index(tokenizer.eos_token_id)]

    config = CLIPTextConfig.from_pretrained(tiny_models_dir / "tiny-sd" / "text_encoder")
    assert config.vocab_size == len(tokenizer)
    assert config.eos_token_id == tokenizer.eos_token_id
