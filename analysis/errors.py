"""The one exception type analysis/ raises for input a user can fix."""


class AnalysisError(ValueError):
    """Bad or insufficient input for a fit: the message says what is wrong and what is needed."""
