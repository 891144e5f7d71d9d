"""YOLOv5 building blocks: Conv, Bottleneck, C3, SPPF, SPP, Concat, Proto.

Class and attribute names follow YOLOv5 on purpose: state-dict keys such as
``model.2.cv1.bn.running_mean`` are derived from them, and official checkpoints
must map onto this code key for key.
"""
import math

import torch
from torch import nn

# YOLOv5 v7.0 gives every Conv the same SiLU instance. Sharing it is harmless (SiLU has no
# state) and makes `len(list(model.modules()))` agree with the layer count YOLOv5 prints.
_DEFAULT_ACT = nn.SiLU()

BN_EPS = 1e-3       # YOLOv5 sets these on every BatchNorm2d after building the model
BN_MOMENTUM = 0.03


def autopad(k, p=None, d=1):
    """Return the padding that keeps the spatial size ('same') for kernel k and dilation d."""
    if d > 1:
        k = d * (k - 1) + 1 if isinstance(k, int) else [d * (x - 1) + 1 for x in k]
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


def make_divisible(x, divisor=8):
    """Round a channel count up to a multiple of divisor (YOLOv5 width scaling)."""
    return math.ceil(x / divisor) * divisor


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + SiLU; after `fuse_bn()` the BN is folded into the conv."""

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, d=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=BN_EPS, momentum=BN_MOMENTUM)
        if act is True:
            self.act = _DEFAULT_ACT
        elif isinstance(act, nn.Module):
            self.act = act
        else:
            self.act = nn.Identity()

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:  # None once fused; a structural check, so tracing is unaffected
            x = self.bn(x)
        return self.act(x)

    def fuse_bn(self):
        """Fold the BatchNorm into the convolution (inference only) and drop it."""
        if self.bn is not None:
            self.conv = fuse_conv_and_bn(self.conv, self.bn)
            self.bn = None  # a None submodule is skipped by modules() and state_dict()
        return self


@torch.no_grad()
def fuse_conv_and_bn(conv, bn):
    """Return a Conv2d with bias computing bn(conv(x)) with BN's running statistics."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, conv.dilation, conv.groups, bias=True,
                      padding_mode=conv.padding_mode).to(conv.weight.device, conv.weight.dtype)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_(bn.bias + (conv_bias - bn.running_mean) * scale)
    fused.weight.requires_grad_(False)
    fused.bias.requires_grad_(False)
    return fused


class Bottleneck(nn.Module):
    """1x1 conv then 3x3 conv, with a residual connection when shapes allow it."""

    def __init__(self, c1, c2, shortcut=True, g=1, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP bottleneck with three convs: cv3(cat(m(cv1(x)), cv2(x)))."""

    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained k x k max-pools (same result as SPP(5, 9, 13))."""

    def __init__(self, c1, c2, k=5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class SPP(nn.Module):
    """Spatial pyramid pooling with parallel max-pools (YOLOv3-SPP / yolov5-spp configs)."""

    def __init__(self, c1, c2, k=(5, 9, 13)):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * (len(k) + 1), c2, 1, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=x, stride=1, padding=x // 2) for x in k)

    def forward(self, x):
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [m(x) for m in self.m], 1))


class Concat(nn.Module):
    """Concatenate a list of tensors along a dimension (channels by default)."""

    def __init__(self, dimension=1):
        super().__init__()
        self.d = dimension

    def forward(self, x):
        return torch.cat(x, self.d)


class Proto(nn.Module):
    """Mask prototypes of the segmentation head (YOLOv5 v7.0): 3x3 conv, 2x nearest upsample,
    3x3 conv, 1x1 conv to c2 prototype maps at twice the input resolution (1/4 of the image)."""

    def __init__(self, c1, c_=256, c2=32):
        super().__init__()
        self.cv1 = Conv(c1, c_, k=3)
        self.upsample = nn.Upsample(scale_factor=2, mode='nearest')
        self.cv2 = Conv(c_, c_, k=3)
        self.cv3 = Conv(c_, c2)

    def forward(self, x):
        return self.cv3(self.cv2(self.upsample(self.cv1(x))))
