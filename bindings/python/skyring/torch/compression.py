"""Gradient compression: Horovod's compressors plus skyring's wire codecs.

Two kinds of object share the compress/decompress interface:

- Horovod's framework compressors (`Compression.none`, `Compression.fp16`) change the tensor
  before it is submitted, so every hop carries the cast tensor.
- skyring's wire codecs (`bf16`, `int8`, `topk`, `powersgd`, `sign`, and `default`) leave the
  tensor alone and name a codec spec that the engine applies where the topology says: by
  default only on the cross-cloud hop, for float32 sum/average; other hops, and tensors the
  codec does not fit, travel exact. `compress` is the identity for them; the spec travels as
  the core's `compression` argument.

`wire_spec(compression, gradient)` gives the core argument for any of them: a wire codec's
spec; for a framework compressor "" (exact) on a plain allreduce and "default" (the job's
SKYRING_COMPRESSION) for gradients in DistributedOptimizer, so a Horovod program gains the
job's cross-cloud codec unchanged.
"""

import torch


class Compressor(object):
    """Interface for compressing and decompressing a given tensor."""

    @staticmethod
    def compress(tensor):
        """Compresses a tensor and returns it with the context needed to decompress it."""
        pass

    @staticmethod
    def decompress(tensor, ctx):
        """Decompress the tensor with the given context."""
        pass


class NoneCompressor(Compressor):
    """Default no-op compression."""

    @staticmethod
    def compress(tensor):
        return tensor, None

    @staticmethod
    def decompress(tensor, ctx):
        return tensor


class FP16Compressor(Compressor):
    """Casts floating-point tensors to float16 before they are sent (every hop)."""

    @staticmethod
    def compress(tensor):
        tensor_compressed = tensor
        if tensor.dtype.is_floating_point:
            tensor_compressed = tensor.type(torch.float16)
        return tensor_compressed, tensor.dtype

    @staticmethod
    def decompress(tensor, ctx):
        dtype = ctx
        if dtype.is_floating_point:
            return tensor.type(dtype)
        return tensor


class WireCodec(Compressor):
    """A skyring codec applied by the engine on the hops SKYRING_COMPRESSION_LEVELS names
    (the cross-cloud hop by default). Call it to set its arguments:
    `Compression.topk(0.001)`, `Compression.powersgd(8)`, `Compression.int8(block=256)`."""

    def __init__(self, codec, spec=None):
        self.codec = codec
        self.spec = spec if spec is not None else codec

    def __call__(self, *args, **kwargs):
        parts = [str(a).lower() if isinstance(a, bool) else str(a) for a in args]
        for key, value in kwargs.items():
            if value is True:
                parts.append(key)
            elif value is not False and value is not None:
                parts.append(f"{key}={value}")
        return WireCodec(self.codec, self.codec + (":" + ",".join(parts) if parts else ""))

    @staticmethod
    def compress(tensor):
        return tensor, None

    @staticmethod
    def decompress(tensor, ctx):
        return tensor

    def __repr__(self):
        return f"Compression({self.spec!r})"


class Compression(object):
    """Optional gradient compression algorithm used during allreduce."""

    # Do not compress the gradients (Horovod's default).
    none = NoneCompressor
    # Cast floating-point gradients to 16 bits on every hop.
    fp16 = FP16Compressor
    # The job's codec (SKYRING_COMPRESSION), on the cross-cloud hop.
    default = WireCodec("default")
    # skyring's codecs, on the cross-cloud hop (docs/compression.md has the specs).
    bf16 = WireCodec("bf16")
    int8 = WireCodec("int8")
    topk = WireCodec("topk", "topk:0.01")
    powersgd = WireCodec("powersgd", "powersgd:4")
    sign = WireCodec("sign")


def wire_spec(compression, gradient=False) -> str:
    """The core's `compression` argument for a compressor (see the module comment)."""
    if isinstance(compression, WireCodec):
        return compression.spec
    if isinstance(compression, str):
        return compression
    return "default" if gradient else ""
