from gptlab.model.cache import KVCache
from gptlab.model.gpt import GPT
from gptlab.model.flops import count_parameters, flops_per_token

__all__ = ["GPT", "KVCache", "count_parameters", "flops_per_token"]
