"""The proxy's answers other than 200: a status and a message, sent in OpenAI's error
envelope."""

from __future__ import annotations


class HttpError(Exception):
    """An answer other than 200, with OpenAI's error envelope; ``param`` names the request
    field at fault, where one is."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
