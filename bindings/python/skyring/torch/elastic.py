"""horovod.torch.elastic is not provided: skyring has no elastic mode (no driver that adds
and removes hosts while a job runs). The names are here so that an elastic program stops
with this message rather than an AttributeError; a job whose rank dies fails every
survivor with HorovodInternalError naming it, and is restarted from a checkpoint."""

_MESSAGE = ("skyring.torch has no elastic mode (hvd.elastic): run the job with a fixed set "
            "of ranks and restart it from a checkpoint when a rank fails")


def run(func):
    """Horovod's elastic decorator: refused."""
    raise NotImplementedError(_MESSAGE)


class State:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError(_MESSAGE)


class ObjectState(State):
    pass


class TorchState(ObjectState):
    pass
