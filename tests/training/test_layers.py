"""The sequence models' own dropout draws its mask differently from `nn.Dropout`, not a different function."""

from __future__ import annotations

import torch

from training.models.layers import Dropout


def test_dropout_zeroes_a_share_p_and_keeps_the_expected_value_and_is_the_identity_in_eval() -> None:
    torch.manual_seed(0)
    x = torch.full((200_000,), 2.0, requires_grad=True)
    drop = Dropout(0.2)
    y = drop(x)
    dropped = float((y == 0).float().mean())
    assert abs(dropped - 0.2) < 0.005  # ~0.0009 is one standard deviation here
    assert abs(float(y.mean()) - 2.0) < 0.01
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 2.5))  # survivors scaled by 1 / (1 − p)
    y.sum().backward()  # the gradient passes where the value did, with the same scale
    torch.testing.assert_close(x.grad, (y != 0).float() * 1.25)
    drop.eval()
    assert drop(x) is x
    assert Dropout(0.0).train()(x) is x
