from core.batches import expand_sweep, parse_jsonl, sweep_size


def test_sweep_is_the_product_with_the_last_key_fastest() -> None:
    template = {"type": "text2img", "model": "tiny-sd", "params": {"prompt": "x", "num_inference_steps": 2}}
    sweep = {"prompt": ["a", "b"], "seed": [1, 2, 3]}
    specs = expand_sweep(template, sweep)
    assert sweep_size(sweep) == len(specs) == 6
    assert [(s["params"]["prompt"], s["params"]["seed"]) for s in specs] == [
        ("a", 1),
        ("a", 2),
        ("a", 3),
        ("b", 1),
        ("b", 2),
        ("b", 3),
    ]
    assert all(s["params"]["num_inference_steps"] == 2 and s["model"] == "tiny-sd" for s in specs)
    assert template["params"] == {"prompt": "x", "num_inference_steps": 2}  # left as it was


def test_jsonl_lines_are_params_or_whole_specs() -> None:
    text = "\n".join(
        [
            '{"prompt": "a"}',
            "",
            '{"type": "img2img", "params": {"prompt": "b"}}',
            '{"model": "other", "params": {}}',
        ]
    )
    lines = parse_jsonl(text, {"type": "text2img", "model": "tiny-sd"})
    assert [line.number for line in lines] == [1, 3, 4]
    assert [line.spec for line in lines] == [
        {"type": "text2img", "model": "tiny-sd", "params": {"prompt": "a"}},
        {"type": "img2img", "model": "tiny-sd", "params": {"prompt": "b"}},
        {"type": "text2img", "model": "other", "params": {}},
    ]


def test_jsonl_bad_lines_say_why() -> None:
    lines = parse_jsonl('{"prompt": "a"\n"just a string"\n', {"type": "text2img", "model": None})
    assert lines[0].spec is None and "not JSON" in (lines[0].error or "")
    assert lines[1].error == "a line must be a JSON object, got str"
    # A default left unset is left out, so that validation says the field is missing.
    assert parse_jsonl('{"prompt": "a"}', {"type": "text2img", "model": None})[0].spec == {
        "type": "text2img",
        "params": {"prompt": "a"},
    }
