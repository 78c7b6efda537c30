"""One base class for the errors a user's input causes: a configuration, data, a model, privacy settings, a
replay's key, a sweep, a stored run asked for by a wrong name. Every surface (the CLI, the app, a worker rank)
shows them as a message naming the problem and what to do, never a traceback; anything else is a bug and keeps
its traceback. The lowest layer: it imports nothing, so catching it loads nothing."""


class UserError(Exception):
    """Caused by what the user gave; ``str(err)`` says what is wrong and what to do."""
