"""Domain errors: one clear line that names the sample and the field."""

from __future__ import annotations


class C2LError(Exception):
    """A problem with the user's input or data (exit 1, one line, no traceback)."""

    def __init__(self, message: str, sample: str | None = None, field: str | None = None):
        self.sample = sample
        self.field = field
        self.message = message
        super().__init__(self.format())

    def format(self) -> str:
        where = []
        if self.sample is not None:
            where.append(f"sample '{self.sample}'")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        prefix = ", ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message
