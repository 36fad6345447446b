"""gptlab runs inside lm-evaluation-harness: an `LM` for any run (every position scheme, quantized, with adapters).

    gptlab eval --run RUN --tasks hellaswag,lambada_openai [--include-path DIR] [--limit N]

Log-likelihoods are computed in batches of requests grouped by length (longest first, padded on the right: a
causal model never sees the padding), from the same forward pass lm-eval's transformers backend uses, so a
model `gptlab export hf` can write scores the same there and here. Sequences longer than the model's context
keep their last `max_length` tokens. Generation uses gptlab's KV-cache decoder, one request at a time, and stops
at the first stop string.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from gptlab.errors import ConfigError
from gptlab.generate import generate
from gptlab.model import GPT
from gptlab.tokenizers import EOT, Tokenizer

DEFAULT_MAX_GEN_TOKS = 256


class GptlabLM(TemplateLM):
    def __init__(self, model: GPT, tokenizer: Tokenizer, batch_size: int = 8, max_length: int | None = None):
        super().__init__()
        self.model, self.tok = model.eval(), tokenizer
        self.batch_size_per_gpu = batch_size
        self._max_length = max_length or model.cfg.block_size
        self._device = model.wte.weight.device

    # -- what lm-eval asks of a model --------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        """The document separator; a tokenizer without one (a char vocabulary built without it) uses newline, the
        nearest thing to a document start in its text."""
        if self.tok.eot_id is not None:
            return self.tok.eot_id
        try:
            return self.tok.encode("\n")[0]
        except Exception:
            return 0

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tok.encode(string)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tok.decode(tokens)

    # -- scoring -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), whether greedy decoding gives the continuation) per request."""
        rows = []  # (request, its last max_length + 1 tokens, how many of them are the continuation)
        for i, (_, context, continuation) in enumerate(requests):
            if not continuation:
                raise ConfigError("lm-eval asked for the log-likelihood of an empty continuation")
            whole = (list(context) + list(continuation))[-(self.max_length + 1):]
            rows.append((i, whole, min(len(continuation), len(whole) - 1)))
        order = sorted(range(len(rows)), key=lambda k: -len(rows[k][1]))  # similar lengths share a batch
        results: list[tuple[float, bool] | None] = [None] * len(rows)
        for start in tqdm(range(0, len(order), self.batch_size_per_gpu), desc="log-likelihoods",
                          disable=disable_tqdm):
            batch = [rows[k] for k in order[start:start + self.batch_size_per_gpu]]
            x = torch.zeros(len(batch), max(len(whole) - 1 for _, whole, _ in batch), dtype=torch.long)
            for r, (_, whole, _) in enumerate(batch):
                x[r, :len(whole) - 1] = torch.tensor(whole[:-1])
            logprobs = F.log_softmax(self.model(x.to(self._device)).float(), dim=-1)
            for r, (i, whole, n) in enumerate(batch):
                end = len(whole) - 1  # the prediction at position p is for token p + 1
                scores = logprobs[r, end - n:end]
                targets = torch.tensor(whole[end - n + 1:], device=self._device)
                picked = scores.gather(1, targets[:, None])[:, 0]
                results[i] = (float(picked.sum()), bool((scores.argmax(-1) == targets).all()))
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts (perplexity tasks), in disjoint windows of the model's context."""
        windows, owner = [], []
        for i, (text,) in enumerate(req.args for req in requests):
            for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
                    self.tok_encode(text), self.prefix_token_id, self.max_length, context_len=1)):
                windows.append(((None, None), context, continuation))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)):
            totals[i] += logprob
        return totals

    # -- generation --------------------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in tqdm(requests, desc="generating", disable=disable_tqdm):
            context, options = req.args
            out.append(self.continue_text(context, dict(options)))
        return out

    def continue_text(self, context: str, options: dict[str, Any]) -> str:
        until = options.pop("until", None) or [EOT]
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(options.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
        temperature = float(options.pop("temperature", 0.0))
        if not options.pop("do_sample", temperature > 0):
            temperature = 0.0
        prompt = self.tok_encode(context)[-(self.max_length - 1):] or [self.prefix_token_id]
        text, ids = "", []
        for token in generate(self.model, prompt, max_new, temperature=temperature, seed=1234):
            if token == self.tok.eot_id:
                break
            ids.append(token)
            text = self.tok_decode(ids)
            if any(stop in text for stop in until):
                break
        for stop in until:
            text = text.split(stop)[0]
        return text


def run_tasks(model: GPT, tokenizer: Tokenizer, tasks: list[str], include_path: str | None = None,
              limit: int | None = None, batch_size: int = 8, num_fewshot: int | None = None) -> dict[str, Any]:
    """lm-eval's `simple_evaluate` on a gptlab model; the results dict lm-eval returns."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ConfigError(f"unknown lm-eval task(s) {', '.join(unknown)}; see `lm-eval ls tasks`, or give "
                          "--include-path DIR for tasks of your own")
    return simple_evaluate(model=GptlabLM(model, tokenizer, batch_size), tasks=tasks, task_manager=manager,
                           limit=limit, num_fewshot=num_fewshot, log_samples=False)
