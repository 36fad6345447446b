"""User-facing errors: the CLI prints these as one line, without a traceback, and exits non-zero."""


class GptlabError(Exception):
    """A problem with the user's input or files; the message names the problem and the fix."""


class ConfigError(GptlabError):
    """An unknown config key, a wrong value type or an out-of-range value."""


class DataError(GptlabError):
    """A missing, empty, undecodable or too-short corpus or token file."""


class CheckpointError(GptlabError):
    """A missing, corrupt or incompatible checkpoint."""


class TokenizerError(GptlabError):
    """Text the tokenizer cannot encode, or a tokenizer that cannot be loaded."""
