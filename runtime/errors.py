"""The exceptions hipcad raises. Every message is written for the person at the console."""


class HipcadError(Exception):
    """Base class of every error hipcad reports to a user."""


class BadInputError(HipcadError):
    """An input file cannot be read as a radiograph (corrupt, truncated, not an image...)."""


class InputTooLargeError(BadInputError):
    """An input declares a size beyond the configured limits (decompression-bomb guard)."""


class CodecUnavailableError(BadInputError):
    """The file uses a compression for which no decoder is installed."""


class DecoderUnavailableError(HipcadError):
    """No decoding process could run the file (none could be started, or the program is stopping):
    not the file's fault -- it is kept and read again, never quarantined."""


class DecoderStoppedError(DecoderUnavailableError):
    """The decoding processes were stopped (the program is stopping) while the file was decoded."""


class BundleError(HipcadError):
    """A model bundle is missing, incomplete, or does not match its manifest."""


class BackendUnavailableError(HipcadError):
    """An inference backend cannot run here (library not installed, no GPU...)."""


class EngineBuildError(HipcadError):
    """Building a TensorRT engine failed."""


class SelfTestError(HipcadError):
    """A backend's outputs on the bundle's reference inputs deviate beyond tolerance."""
