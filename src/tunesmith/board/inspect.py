"""What the Data and Try tabs show: `data preview` as data, and generations streamed token by
token from a finished run's model and from its base model (generate.py does the loading)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tunesmith.config import Config
from tunesmith.errors import UserError


def preview(cfg: Config, n: int = 5) -> dict[str, Any]:
    """The data preview of a config: examples as (trained, text) segments, the length
    histogram, and per split the examples kept, truncated and dropped."""
    from tunesmith.data.loader import build_dataloaders, describe_stats
    from tunesmith.data.preview import histogram_bins, marked_segments
    from tunesmith.models.load import (
        is_encoder_decoder,
        load_config_of,
        load_tokenizer,
        model_context,
    )

    # Loaded exactly as `tunesmith data preview` loads them, so the counts are the run's.
    hf_config = load_config_of(cfg.model)
    tokenizer = load_tokenizer(cfg.model, cfg.data.chat_template)
    encoder_decoder = is_encoder_decoder(cfg.model, hf_config)
    bundle = build_dataloaders(cfg, tokenizer, 0, 1, encoder_decoder, model_context(hf_config))
    examples = [
        e for unit in bundle.train.units for e in (unit if isinstance(unit, list) else [unit])
    ]
    lengths = [len(e.input_ids) for e in examples]
    return {
        "examples": [
            {
                "tokens": len(e.input_ids),
                "segments": marked_segments(tokenizer, e, encoder_decoder),
            }
            for e in examples[:n]
        ],
        "histogram": histogram_bins(lengths),
        "splits": [
            {
                "split": split,
                "examples": s.examples,
                "truncated": s.truncated,
                "dropped": s.dropped,
                "line": describe_stats(split, s),
            }
            for split, s in bundle.stats.items()
        ],
        "test_examples": len(bundle.test_examples),
    }


@dataclass
class Chatter:
    """A finished run's model loaded for the Try tab, with its base for the side-by-side."""

    run: Path
    loaded: Any
    base: Any  # a second model, or None when the base is the adapter model with adapters off
    base_note: str
    lock: threading.Lock

    @classmethod
    def load(cls, run: Path) -> Chatter:
        """Load `run`'s final model; the base is the adapter-less model for an adapter, the
        hub/folder model the run started from for a full fine-tune."""
        from tunesmith.generate import load_base_from_record, load_for_inference

        loaded = load_for_inference(run)
        base, note = None, "the base model (adapters disabled)"
        if not hasattr(loaded.model, "disable_adapter"):
            record = loaded.record.get("base_model") or {}
            if record.get("name"):
                base, _, _ = load_base_from_record(loaded.record, torch.float32)
                note = f"the base model {record['name']}"
            elif record.get("config"):
                base = _fresh_from_config(record["config"], loaded.encoder_decoder)
                note = "an untrained model of the same model.config (random init)"
            else:
                note = "no base model recorded"
            if base is not None:
                base.eval()
        return cls(run, loaded, base, note, threading.Lock())

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The conversation, ending with the user's turn, formatted as `tunesmith chat` does
        (chat.conversation_example: the chat template with the whole history, or the run's input
        template around the last message), then encoded as training does."""
        from tunesmith.chat import conversation_example
        from tunesmith.generate import encode_prompts, entry_from_record, prompt_limits

        example = conversation_example(self.loaded, messages)
        limits = prompt_limits(entry_from_record(self.loaded.record, str(self.run)))
        return encode_prompts(self.loaded.tokenizer, [example], limits)[0]

    def stream(
        self, messages: list[dict[str, str]], which: str, max_new_tokens: int = 64
    ) -> Iterator[str]:
        """Yield the next assistant turn piece by piece, from the tuned model or the base."""
        from transformers import TextIteratorStreamer

        if (
            which == "base"
            and self.base is None
            and not hasattr(self.loaded.model, "disable_adapter")
        ):
            raise UserError(f"no base model to compare with: {self.base_note}")
        tokenizer = self.loaded.tokenizer
        ids = torch.tensor([self.prompt_ids(messages)])
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        model = self.base if which == "base" and self.base is not None else self.loaded.model
        kwargs = {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "max_new_tokens": max_new_tokens,
            "do_sample": False,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "streamer": streamer,
        }
        if self.loaded.encoder_decoder:
            streamer.skip_prompt = False

        failed: list[BaseException] = []

        def run() -> None:
            try:
                with self.lock, torch.no_grad():
                    if which == "base" and self.base is None:
                        with self.loaded.model.disable_adapter():
                            self.loaded.model.generate(**kwargs)
                    else:
                        model.generate(**kwargs)
            except Exception as exc:  # shown in the page instead of hanging the stream
                failed.append(exc)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        yield from streamer
        worker.join()
        if failed:
            yield f"\n[generation failed: {failed[0]}]"


def _fresh_from_config(config: dict, encoder_decoder: bool) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    hf = AutoConfig.for_model(**config)
    auto = AutoModelForSeq2SeqLM if encoder_decoder else AutoModelForCausalLM
    return auto.from_config(hf)
