"""The Responses API's ``mcp`` tool type (work in progress)."""


def register() -> None:
    return None
