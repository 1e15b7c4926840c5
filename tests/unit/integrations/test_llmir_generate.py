"""`llmir-generate`: runs out of the box on random models, agrees with
transformers, prints and lowers its IR, and turns bad input into exit 2 with
one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llmir.integrations.transformers import random_model
from llmir.tools.generate import main


def test_random_model_agrees_with_transformers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(
        [
            "--random-model",
            "qwen2-tiny",
            "--num-prompts",
            "3",
            "--max-new-tokens",
            "6",
            "--compare-hf",
            "--ignore-eos",
            "--kv-dtype",
            "f32",
            "--block-size",
            "8",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "greedy tokens agree: 3/3 requests" in out
    assert "tok/s" in out and "time to first token" in out
    assert "KV memory (peak): llmir paged" in out


def test_prompts_as_ids_and_via_ir(capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "--random-model",
        "gemma2-tiny",
        "--prompt",
        "5 6 7 8",
        "--prompt",
        "9 10",
        "--max-new-tokens",
        "5",
        "--ignore-eos",
    ]
    assert main(args) == 0
    direct = capsys.readouterr().out.splitlines()[:2]
    assert main([*args, "--via-ir"]) == 0
    via_ir = capsys.readouterr().out.splitlines()[:2]
    assert direct == via_ir
    assert direct[0].startswith("[0] prompt 4 tokens -> ")


def test_emit_ir_parses_and_lowers(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert (
        main(["--random-model", "mistral-tiny", "--emit-ir", "--kv-dtype", "f16"]) == 0
    )
    text = capsys.readouterr().out
    assert "!llm.paged_kv_cache<f16, 4, 2, 16, 16, 2048>" in text
    assert "sliding_window = 24 : i32" in text
    source = tmp_path / "step.mlir"
    source.write_text(text)
    xdsl_opt = Path(sys.executable).with_name("xdsl-opt")
    lowered = subprocess.run(
        [str(xdsl_opt), str(source), "-p", "convert-llm-to-func"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert lowered.returncode == 0, lowered.stderr
    assert (
        "func.call @" in lowered.stdout and "llm.paged_attention" not in lowered.stdout
    )


def test_local_checkpoint_without_tokenizer(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    random_model("llama-tiny", seed=3).save_pretrained(tmp_path)
    shared = " ".join(str(i) for i in range(1, 21))
    code = main(
        ["--model", str(tmp_path), "--prompt", shared, "--prompt", shared + " 21",
         "--max-new-tokens", "4", "--compare-hf", "--ignore-eos",
         "--prefix-caching", "--block-size", "8", "--batch", "1"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "[0] prompt 20 tokens, 0 from the prefix cache" in out
    # The second prompt finds the first's two whole blocks.
    assert "[1] prompt 21 tokens, 16 from the prefix cache" in out


def test_plot(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "kv.png"
    assert (
        main(
            [
                "--random-model",
                "llama-tiny",
                "--max-new-tokens",
                "3",
                "--plot",
                str(png),
            ]
        )
        == 0
    )
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--random-model", "gpt-99"], "unknown random model 'gpt-99'"),
        (["--random-model", "llama-tiny", "--prompt", "hello"], "token ids"),
        (
            ["--random-model", "llama-tiny", "--prompt", "1 99999"],
            "outside the vocabulary",
        ),
        (["--random-model", "llama-tiny", "--prompt-lens", "9:3"], "MIN <= MAX"),
        (["--random-model", "llama-tiny", "--prompt-lens", "x"], "MIN:MAX"),
        (["--random-model", "llama-tiny", "--device", "cuda"], "--device cuda"),
        (["--random-model", "llama-tiny", "--max-new-tokens", "0"], "--max-new-tokens"),
        (["--random-model", "llama-tiny", "--kv-memory", "lots"], "byte count"),
        (
            ["--random-model", "llama-tiny", "--num-blocks", "1"],
            "blocks, the pool has 1",
        ),
        (["--model", "/nonexistent/dir"], "not a directory"),
        (
            ["--random-model", "llama-tiny", "--prompts", "/nonexistent.txt"],
            "nonexistent",
        ),
        (["--random-model", "llama-tiny", "--via-ir", "--prefix-caching"], "--via-ir"),
        (["--random-model", "llama-tiny", "--max-new-tokens", "abc"], "invalid int"),
        (["--random-model", "llama-tiny", "--num-blocks", "1", "--kv-memory", "1"],
         "not allowed with"),
        (["--random-model", "llama-tiny", "--seed", "-1"], "--seed: must be >= 0"),
        (["--random-model", "llama-tiny", "--compare-hf", "--temperature", "0.5"],
         "drop --temperature"),
        (["--random-model", "llama-tiny", "--plot", "/nonexistent/dir/x.png"],
         "no directory"),
        (["--random-model", "llama-tiny", "--prompts", "EMPTY"], "no prompt"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    args = [str(empty) if a == "EMPTY" else a for a in args]
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing ran
    err = captured.err
    assert err.count("\n") == 1 and err.startswith("llmir-generate: error: "), err
    assert message in err
