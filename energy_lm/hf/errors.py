"""The one error type of the Hugging Face bridge: an input or option it cannot
represent, reported by `energy-lm-from-hf` / `energy-lm-to-hf` as one line."""


class BridgeError(ValueError):
    pass
