"""The one error type of corpus preparation: a wrong input or argument, reported by
`energy-lm-prepare` as one line."""


class PrepareError(RuntimeError):
    pass
