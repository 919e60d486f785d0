"""The conversational benchmark end to end on a tiny model (seconds), through `sam.bench.chat.main(argv)`:
edits made inside conversations, asked in others, scored by free generation; a later answer to the
same question replaces the earlier one, and "latest" scores only the facts whose edit is still active."""

from __future__ import annotations

import json

from sam.bench.chat import main


def test_chat_benchmark_scores_every_record_and_the_latest(tmp_path, tiny_llama_dir, zsre, one_thread):
    a, b = zsre[0], zsre[1]
    again = {**a, "alt": a["alt"] + " Junior"}  # the same question, another answer: replaces the first edit
    data = tmp_path / "zsre.json"
    data.write_text(json.dumps([a, b, again]))
    out = tmp_path / "out"
    argv = ["--data", str(data), "--model", str(tiny_llama_dir), "--sizes", "3", "--out", str(out), "--tag", "tiny",
            "--layer", "1", "--top-k", "16", "--max-steps", "3", "--learning-rate", "1"]
    assert main(argv) == 0
    result = json.loads((out / "tiny.json").read_text())
    [cp] = result["checkpoints"]
    assert cp["T"] == 3 and cp["n_eval"] == 3 and cp["n_latest"] == 2  # the first answer was replaced
    for key in ("rel", "gen", "rel_latest", "gen_latest", "loc_unchanged", "repeats", "ends_within_32", "rel_fired"):
        assert 0.0 <= cp[key] <= 1.0, key
    assert cp["rel_fired"] == 1.0  # every edited question, asked in another conversation, finds an edit
    assert result["format"] == "chat" and len(cp["examples"]) == 3
