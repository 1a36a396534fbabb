"""Errors that end a job, each with a machine code and a message a user can act on."""


class JobError(Exception):
    """A failure that is recorded on the job as `error.code` and `error.message`."""

    code = "internal"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class BadModel(JobError):
    code = "bad_model"


class BadInput(JobError):
    code = "bad_input"


class NumericalError(JobError):
    """The latents or the decoded image went NaN or infinite: the job fails rather than store a blank."""

    code = "numerical_error"


def first_line(error: BaseException) -> str:
    """The first line of `error`'s message, for a one-line `error.message` (libraries' messages can run
    to many lines); its class name when it has no message."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
