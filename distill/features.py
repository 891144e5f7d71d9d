"""Feature-map maths for feature distillation: adapters, standardisation, per-level losses.

Every function takes feature maps `[B, C, H, W]`; the teacher map is the target and is
never differentiated (callers pass it detached, these functions do not rely on it).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def build_adapters(student_channels, teacher_channels, learnable_when_equal=True):
    """1x1 conv per level mapping student channels to teacher channels -> nn.ModuleList.

    When a level already has matching channels the conv starts as the identity (weights = I,
    bias = 0), so distillation begins on the raw student features and the adapter only
    learns what helps; `learnable_when_equal=False` uses a fixed nn.Identity there instead.
    """
    if len(student_channels) != len(teacher_channels):
        raise ValueError(f'{len(student_channels)} student levels vs {len(teacher_channels)} teacher levels')
    adapters = nn.ModuleList()
    for cs, ct in zip(student_channels, teacher_channels):
        if cs == ct and not learnable_when_equal:
            adapters.append(nn.Identity())
            continue
        conv = nn.Conv2d(cs, ct, kernel_size=1, bias=True)
        if cs == ct:
            _init_identity(conv)
        adapters.append(conv)
    return adapters


def _init_identity(conv):
    """Make a square 1x1 conv the identity map."""
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :, 0, 0].copy_(torch.eye(conv.out_channels))
        conv.bias.zero_()


def standardize_channels(x, eps=1e-6):
    """Normalise each channel to zero mean, unit variance over the batch and all pixels (PKD).

    PKD (Cao et al. 2022) standardises with per-channel statistics over (B, H, W), so that the MSE
    of the standardised maps is a function of the Pearson correlation and the scale gap between a
    big teacher's and a small student's activations no longer dominates it. Statistics over the
    whole batch keep each image's relative strength (a per-image norm would erase it).
    """
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
    return (x - mean) / (std + eps)


def mse_feature_loss(s, t):
    """FitNets hint loss: mean squared difference over all elements."""
    return F.mse_loss(s, t, reduction='mean')


def cosine_feature_loss(s, t, eps=1e-8):
    """Mean over pixels of 1 - cos(student vector, teacher vector) along the channel axis.

    Scale-free: only the direction of each pixel's feature vector is matched.
    """
    return (1.0 - F.cosine_similarity(s, t, dim=1, eps=eps)).mean()


def cwd_feature_loss(s, t, tau=1.0):
    """Channel-wise distillation (Shu et al. 2021).

    Each channel's H*W map becomes a distribution by a spatial softmax at temperature tau;
    loss = tau^2 * mean over (image, channel) of KL(teacher_channel || student_channel).
    tau^2 keeps gradient magnitudes comparable across temperatures (as in Hinton KD).
    """
    b, c = s.shape[:2]
    s_flat = s.reshape(b, c, -1) / tau
    t_flat = t.reshape(b, c, -1) / tau
    log_p_t = F.log_softmax(t_flat, dim=-1)
    log_p_s = F.log_softmax(s_flat, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)  # [B, C]
    return kl.mean() * tau ** 2


FEATURE_LOSSES = {
    'mse': mse_feature_loss,
    'cosine': cosine_feature_loss,
    'cwd': cwd_feature_loss,
}
