"""SyncBatchNorm: batch normalization whose statistics are those of the whole batch across
processes (horovod.torch.SyncBatchNorm).

Horovod's calls CUDA-only torch kernels (batch_norm_stats, ...); skyring.torch carries host
tensors, so this one computes the same thing with plain tensor math, on CPU. Forward gathers
every rank's (count, mean, M2) per channel in one allgather and combines them (Chan's
parallel variance, stable where sum-of-squares is not); backward allreduces the two sums the
input gradient needs. Gradients of weight and bias stay local, as in Horovod: the optimizer
averages them with the other gradients.
"""

import torch
import torch.nn.functional as F
from torch.autograd.function import Function
from torch.nn.modules.batchnorm import _BatchNorm

from skyring.torch._basics import Sum, size
from skyring.torch.mpi_ops import allgather, allreduce

_FP32_MATH = (torch.float16, torch.bfloat16)


class SyncBatchNorm(_BatchNorm):
    """Applies synchronous version of N-dimensional BatchNorm (see torch.nn.BatchNorm2d):
    in training, the mean and variance are those of the batch over all processes."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError("expected at least 2D input (got {}D input)".format(input.dim()))

    def _run_bn(self, input):
        return F.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                            self.training or not self.track_running_stats, self.momentum,
                            self.eps)

    def forward(self, input):
        if input.device.type != "cpu":
            raise ValueError("skyring's SyncBatchNorm runs on host (CPU) tensors for now")
        self._check_input_dim(input)
        if self.training and self.track_running_stats:
            self.num_batches_tracked = self.num_batches_tracked + 1
        if not self.training and self.track_running_stats:
            return self._run_bn(input)
        if size() == 1:
            return self._run_bn(input)
        if self.momentum is None:
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            factor = self.momentum
        update = self.training and self.track_running_stats
        return _SyncBatchNorm.apply(input, self.weight, self.bias,
                                    self.running_mean if update else None,
                                    self.running_var if update else None, self.eps, factor)


def _channel_view(t, input):
    return t.view([1, -1] + [1] * (input.dim() - 2))


class _SyncBatchNorm(Function):
    @staticmethod
    def forward(ctx, input, weight, bias, running_mean, running_var, eps, momentum):
        x = input.contiguous()
        x = x.float() if x.dtype in _FP32_MATH else x
        channels = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        count = x.numel() // channels
        mean = x.mean(dims) if count else x.new_zeros(channels)
        m2 = ((x - _channel_view(mean, x)) ** 2).sum(dims)
        local = torch.cat([x.new_full((1,), float(count)), mean, m2]).unsqueeze(0)
        stats = allgather(local, name=f"sync_batch_norm.{channels}.stats")
        counts, means, m2s = stats[:, :1], stats[:, 1:1 + channels], stats[:, 1 + channels:]
        total = counts.sum()
        if total.item() == 0:
            raise ValueError("SyncBatchNorm: the batch is empty on every process")
        g_mean = (counts * means).sum(0) / total
        g_m2 = (m2s + counts * (means - g_mean) ** 2).sum(0)
        var = g_m2 / total
        invstd = torch.rsqrt(var + eps)

        if running_mean is not None:
            unbiased = g_m2 / max(total.item() - 1, 1)
            running_mean.mul_(1 - momentum).add_(g_mean.to(running_mean.dtype), alpha=momentum)
            running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)

        xhat = (x - _channel_view(g_mean, x)) * _channel_view(invstd, x)
        out = xhat
        if weight is not None:
            out = out * _channel_view(weight.to(x.dtype), x) + _channel_view(bias.to(x.dtype), x)
        ctx.save_for_backward(x, weight, g_mean, invstd)
        ctx.total = total.item()
        ctx.input_dtype = input.dtype
        return out.to(input.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        x, weight, mean, invstd = ctx.saved_tensors
        dy = grad_output.contiguous().to(x.dtype)
        dims = [0] + list(range(2, x.dim()))
        xmu = x - _channel_view(mean, x)
        sum_dy = dy.sum(dims)
        sum_dy_xmu = (dy * xmu).sum(dims)
        need_input, need_weight, need_bias = ctx.needs_input_grad[0:3]

        grad_input = grad_weight = grad_bias = None
        if weight is not None and need_weight:
            grad_weight = (sum_dy_xmu * invstd).to(weight.dtype)
        if weight is not None and need_bias:
            grad_bias = sum_dy.to(weight.dtype)
        if need_input:
            channels = x.shape[1]
            sums = allreduce(torch.cat([sum_dy, sum_dy_xmu]), op=Sum,
                             name=f"sync_batch_norm.{channels}.sums")
            g_sum_dy, g_sum_dy_xmu = sums[:channels], sums[channels:]
            scale = invstd if weight is None else invstd * weight.to(x.dtype)
            grad = dy - _channel_view(g_sum_dy / ctx.total, x) - \
                xmu * _channel_view(invstd * invstd * g_sum_dy_xmu / ctx.total, x)
            grad_input = (grad * _channel_view(scale, x)).to(ctx.input_dtype)
        return grad_input, grad_weight, grad_bias, None, None, None, None
